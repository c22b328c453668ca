//go:build linux

package dataplane

import (
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/oakwire/oakwire/internal/ethtool"
)

// The uplink's RX queues: a socket per active queue, following changes.

// activeRxQueues is how many RX queues of the uplink an AF_XDP socket can
// bind to: the active ones (ethtool channels), not the allocated ones
// netlink reports (a plain veth on a 2-CPU machine allocates 2 and
// activates 1; binding to queue 1 fails). Drivers that report no channels
// have every allocated queue active.
func activeRxQueues(ul netlink.Link) (int, error) {
	n, ok, err := ethtool.ActiveRxQueues(ul.Attrs().Name)
	if err != nil {
		return 0, err
	}
	if !ok {
		n = ul.Attrs().NumRxQueues
	}
	return max(1, n), nil
}

// setUplinkQueues makes the uplink have a socket on each of its first n
// RX queues (at most MaxUplinkQueues; the rest pass to the kernel, counted
// as the uplink program's redirect_failed, and are logged). Queue q's
// socket goes to worker q % workers, so ingress spreads over the workers;
// queue 0 (worker 0) also transmits for all and is never removed. A queue
// leaves the XSKMAP before its socket closes. e.mu held, or New.
func (e *Engine) setUplinkQueues(n int) error {
	if n > MaxUplinkQueues {
		e.log.Warn("dataplane: the uplink has more active RX queues than get an AF_XDP socket; tunnel traffic on the others is lost: reduce them",
			"uplink", e.cfg.Uplink, "rx_queues", n, "sockets", MaxUplinkQueues,
			"fix", fmt.Sprintf("ethtool -L %s combined %d", e.cfg.Uplink, MaxUplinkQueues))
		n = MaxUplinkQueues
	}
	n = max(1, n)
	for q := len(e.uplinkSocks) - 1; q >= n; q-- {
		err := errors.Join(e.upObjs.UnregisterXSK(q), e.closeSocket(q%len(e.workers), e.uplinkSocks[q]))
		e.uplinkSocks = e.uplinkSocks[:q]
		if err != nil {
			return fmt.Errorf("uplink socket, queue %d: close: %w", q, err)
		}
	}
	for q := len(e.uplinkSocks); q < n; q++ {
		us, err := e.openSocket(q%len(e.workers), uplinkID+int32(q), e.uplinkIdx, q)
		if err != nil {
			return fmt.Errorf("uplink socket, queue %d: %w", q, err)
		}
		e.uplinkSocks = append(e.uplinkSocks, us)
		if err := e.upObjs.RegisterXSK(q, us.Fd()); err != nil {
			return fmt.Errorf("uplink xskmap, queue %d: %w", q, err)
		}
	}
	return nil
}

// queueLoop follows the uplink's active RX queue count (ethtool -L on a
// NIC, or on a veth): once a second, which is as fast as an operator
// changes channels. A change the sockets cannot follow is logged and
// retried on the next tick; queues that have no socket meanwhile pass to
// the kernel.
func (e *Engine) queueLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		ul, err := netlink.LinkByIndex(e.uplinkIdx)
		var n int
		if err == nil {
			n, err = activeRxQueues(ul)
		}
		e.mu.Lock()
		if err == nil && !e.closed && min(n, MaxUplinkQueues) != len(e.uplinkSocks) {
			old := len(e.uplinkSocks)
			err = e.setUplinkQueues(n)
			if err == nil && e.upLink != nil {
				// A native-mode veth runs no program on queues activated
				// after the program was set (bpfprog.RefreshUplink).
				err = e.upObjs.RefreshUplink(e.upLink)
			}
			if err == nil {
				e.log.Info("dataplane: uplink RX queues changed", "uplink", e.cfg.Uplink, "from", old, "to", len(e.uplinkSocks))
			}
		}
		e.mu.Unlock()
		if err != nil && err.Error() != lastErr {
			e.log.Warn("dataplane: uplink RX queues", "uplink", e.cfg.Uplink, "err", err)
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
	}
}

func (e *Engine) uplinkQueuesNow() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.uplinkSocks)
}
