//go:build linux

package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oakwire/oakwire/fastpath"
)

// slowBatch carries up to one batch of copied packets from a worker to the
// slow path. Batches are preallocated and recycled: the queue is bounded
// by their number and a worker that finds none free drops and counts.
type slowBatch struct {
	n      int
	reason [batch]fastpath.DropReason
	from   [batch]int32 // the PortID it came in on; fromUplink: the uplink
	lens   [batch]int
	buf    [batch][slotSize]byte
}

// fromUplink marks a slow-path packet that came in on the uplink.
const fromUplink = -1

// slowPath handles what workers cannot: sending to a next hop whose MAC is
// unknown (through a kernel UDP socket, which resolves it) and asking the
// Resolver about unknown service IPs and sources (asynchronously,
// negatively cached). The packets that asked are held until the answer
// changes the table, then processed and sent (held.go), so a connection's
// first packet is not lost to the lookup.
type slowPath struct {
	e         *Engine
	free, q   chan *slowBatch
	neighKick chan struct{}
	conn      *net.UDPConn
	resolveQ  chan netip.Addr
	done      chan struct{}
	wg        sync.WaitGroup

	// Owned by run: the held packets and what replays them.
	held      heldSet
	tableKick chan struct{}

	// mu guards neg.
	mu  sync.Mutex
	neg map[netip.Addr]time.Time // address → no new Resolve before then

	kernelSent, kernelErrors, resolveCalls, resolveErrors, resolveSuppressed, resolveQueueFull, malformed atomic.Uint64
}

func newSlowPath(e *Engine) (*slowPath, error) {
	network := "udp4"
	if e.cfg.NodeIP.Is6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.cfg.NodeIP, 0)))
	if err != nil {
		return nil, fmt.Errorf("slow path socket: %w", err)
	}
	s := &slowPath{
		e:         e,
		free:      make(chan *slowBatch, e.cfg.SlowBatches),
		q:         make(chan *slowBatch, e.cfg.SlowBatches),
		neighKick: make(chan struct{}, 1),
		conn:      conn,
		resolveQ:  make(chan netip.Addr, 64),
		done:      make(chan struct{}),
		neg:       map[netip.Addr]time.Time{},
		tableKick: make(chan struct{}, 1),
	}
	if err := s.held.open(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	for range e.cfg.SlowBatches {
		s.free <- new(slowBatch)
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.run() }()
	go func() { defer s.wg.Done(); s.resolveLoop() }()
	return s, nil
}

// toSlow copies pkt, which came in on port from (fromUplink: the uplink),
// into the worker's current slow batch; never blocks.
func (w *worker) toSlow(pkt []byte, r fastpath.DropReason, from int32) {
	if w.sb == nil {
		select {
		case w.sb = <-w.e.slow.free:
			w.sb.n = 0
		default:
			w.cnt[cSlowFull]++
			return
		}
	}
	b := w.sb
	if len(pkt) > slotSize {
		w.cnt[cSlowFull]++
		return
	}
	b.lens[b.n] = copy(b.buf[b.n][:], pkt)
	b.reason[b.n] = r
	b.from[b.n] = from
	b.n++
	w.cnt[cSlowQueued]++
	if b.n == batch {
		w.e.slow.submit(w, b)
		w.sb = nil
	}
}

// submit queues a batch; the queue holds every batch there is, so this
// never blocks, but it is a select with default all the same.
func (s *slowPath) submit(w *worker, b *slowBatch) {
	select {
	case s.q <- b:
	default:
		w.cnt[cSlowFull] += uint64(b.n)
		s.free <- b
	}
}

func (s *slowPath) run() {
	expire := time.NewTicker(heldTick)
	defer expire.Stop()
	defer s.held.close()
	for {
		select {
		case <-s.done:
			return
		case b := <-s.q:
			for i := range b.n {
				s.handle(b.buf[i][:b.lens[i]], b.reason[i], b.from[i])
			}
			b.n = 0
			s.free <- b
		case <-s.tableKick:
			s.replay(time.Now())
		case now := <-expire.C:
			s.replay(now)
		}
	}
}

// tableChanged tells the slow path a new table is in: held packets may
// now be known. Never blocks.
func (s *slowPath) tableChanged() {
	select {
	case s.tableKick <- struct{}{}:
	default:
	}
}

// errNotTunnel: a frame to send through the tunnel socket that is not an
// encapsulated datagram.
var errNotTunnel = errors.New("not a tunnel frame")

// sendTunnel sends an encapsulated frame's payload through the kernel's
// UDP stack, which resolves the next hop the worker had no MAC for.
func (s *slowPath) sendTunnel(frame []byte) error {
	dst, payload, ok := tunnelPayload(frame)
	if !ok {
		return errNotTunnel
	}
	_, err := s.conn.WriteToUDPAddrPort(payload, dst)
	return err
}

func (s *slowPath) handle(pkt []byte, r fastpath.DropReason, from int32) {
	switch r {
	case fastpath.ReasonNoNeighbor:
		switch err := s.sendTunnel(pkt); {
		case errors.Is(err, errNotTunnel):
			s.malformed.Add(1)
			return
		case err != nil:
			s.kernelErrors.Add(1)
		default:
			s.kernelSent.Add(1)
		}
		select {
		case s.neighKick <- struct{}{}:
		default:
		}
	case fastpath.ReasonUnknownService:
		dst, ok := frameDst(pkt)
		if !ok {
			s.malformed.Add(1)
			return
		}
		if s.resolve(dst) {
			s.hold(pkt, dst, from)
		}
	case fastpath.ReasonUnknownSource:
		var outer, inner fastpath.Parsed
		if !fastpath.TunnelInner(pkt, &outer, &inner) {
			s.malformed.Add(1)
			return
		}
		if s.resolve(inner.Src) {
			s.hold(pkt, inner.Src, from)
		}
	}
}

// resolve asks the Resolver about dst unless it was asked recently. It
// reports whether there is a Resolver (whose answer, a new table, may
// still come).
func (s *slowPath) resolve(dst netip.Addr) bool {
	if s.e.cfg.Resolver == nil {
		s.resolveSuppressed.Add(1)
		return false
	}
	now := time.Now()
	s.mu.Lock()
	if until, ok := s.neg[dst]; ok && now.Before(until) {
		s.mu.Unlock()
		s.resolveSuppressed.Add(1)
		return true
	}
	if len(s.neg) > 4096 {
		for a, until := range s.neg {
			if now.After(until) {
				delete(s.neg, a)
			}
		}
	}
	s.neg[dst] = now.Add(s.e.cfg.NegativeTTL) // also dedupes while in flight
	s.mu.Unlock()
	select {
	case s.resolveQ <- dst:
	default:
		s.resolveQueueFull.Add(1)
	}
	return true
}

func (s *slowPath) resolveLoop() {
	for {
		select {
		case <-s.done:
			return
		case dst := <-s.resolveQ:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.resolveCalls.Add(1)
			err := s.e.cfg.Resolver.Resolve(ctx, dst)
			cancel()
			if err != nil {
				s.resolveErrors.Add(1)
				continue // stays negatively cached
			}
			s.mu.Lock()
			delete(s.neg, dst)
			s.mu.Unlock()
		}
	}
}

func (s *slowPath) counters() map[string]uint64 {
	return map[string]uint64{
		"slow_kernel_sent":   s.kernelSent.Load(),
		"slow_kernel_errors": s.kernelErrors.Load(),
		"slow_malformed":     s.malformed.Load(),
		"resolve_calls":      s.resolveCalls.Load(),
		"resolve_errors":     s.resolveErrors.Load(),
		"resolve_suppressed": s.resolveSuppressed.Load(),
		"resolve_queue_full": s.resolveQueueFull.Load(),
		"slow_held":          s.held.held.Load(),
		"slow_held_full":     s.held.full.Load(),
		"slow_held_expired":  s.held.expired.Load(),
		"slow_replayed":      s.held.replayed.Load(),
		"slow_replay_failed": s.held.failed.Load(),
	}
}

func (s *slowPath) close() error {
	close(s.done)
	err := s.conn.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("slow path socket: %w", err)
	}
	return nil
}

// tunnelPayload parses an encapsulated frame (fastpath's header views:
// Ethernet, outer IPv4 or IPv6, UDP) and returns the outer destination and
// the UDP payload.
func tunnelPayload(b []byte) (netip.AddrPort, []byte, bool) {
	var p fastpath.Parsed
	if p.Decode(b) != fastpath.ReasonNone || p.Proto != fastpath.ProtoUDP || !p.HasPorts || p.End-p.L4Off < fastpath.UDPLen {
		return netip.AddrPort{}, nil, false
	}
	udp := b[p.L4Off:p.End]
	l := int(binary.BigEndian.Uint16(udp[4:]))
	if l < fastpath.UDPLen || l > len(udp) {
		return netip.AddrPort{}, nil, false
	}
	return netip.AddrPortFrom(p.Dst, p.DstPort), udp[fastpath.UDPLen:l], true
}

// frameDst returns the IP destination of an Ethernet frame.
func frameDst(b []byte) (netip.Addr, bool) {
	var p fastpath.Parsed
	if p.Decode(b) != fastpath.ReasonNone {
		return netip.Addr{}, false
	}
	return p.Dst, true
}
