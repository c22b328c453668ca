//go:build linux

package dataplane

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/fastpath"
)

// Held packets. A packet to a service IP the table does not know (egress),
// or from a source it cannot place (tunnel ingress), waits in the slow path
// while the Resolver asks the cluster, instead of being dropped: dropping
// it costs a TCP connection its SYN and a second of retransmission timer,
// and a request/response client that waits for its first answer waits
// forever. Every new table (the answer arrives as one) and every heldTick
// the slow path runs the held packets through the processor again: the
// ones now known are sent, the rest wait until heldTTL and are then
// dropped and counted. Bounded per address and in all.
const (
	heldTTL     = 3 * time.Second
	heldTick    = 250 * time.Millisecond
	heldMax     = 256 // packets held in all
	heldPerAddr = 8   // packets held per unknown address
	// heldHead is the room in front of a held packet: the processor
	// prepends the tunnel headers in place, as in a UMEM frame.
	heldHead  = 256
	heldFrame = 4096
)

// heldPkt is one packet waiting for its address.
type heldPkt struct {
	addr  netip.Addr
	from  int32 // PortID it came in on; fromUplink: the uplink
	until time.Time
	n     int
	pkt   [slotSize]byte
}

// heldSet is the slow path's held packets; only its goroutine touches it
// (the counters excepted).
type heldSet struct {
	pkts    []*heldPkt
	free    []*heldPkt
	perAddr map[netip.Addr]int
	ctx     *fastpath.WorkerCtx
	scratch []byte
	// packet is an AF_PACKET socket that sends a replayed frame out a
	// port's host veth, into its container.
	packet int

	held, full, expired, replayed, failed atomic.Uint64
}

func (h *heldSet) open() error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: sends only
	if err != nil {
		return fmt.Errorf("slow path: packet socket: %w", err)
	}
	h.packet = fd
	h.perAddr = map[netip.Addr]int{}
	h.ctx = fastpath.NewWorkerCtx()
	h.scratch = make([]byte, heldFrame)
	return nil
}

func (h *heldSet) close() { _ = unix.Close(h.packet) }

// hold keeps a copy of pkt until addr is known.
func (s *slowPath) hold(pkt []byte, addr netip.Addr, from int32) {
	h := &s.held
	if len(h.pkts) >= heldMax || h.perAddr[addr] >= heldPerAddr || len(pkt) > slotSize {
		h.full.Add(1)
		return
	}
	var p *heldPkt
	if n := len(h.free); n > 0 {
		p, h.free = h.free[n-1], h.free[:n-1]
	} else {
		p = new(heldPkt)
	}
	p.addr, p.from, p.until, p.n = addr, from, time.Now().Add(heldTTL), copy(p.pkt[:], pkt)
	h.pkts = append(h.pkts, p)
	h.perAddr[addr]++
	h.held.Add(1)
}

// replay runs every held packet through the processor again, in the
// order they came: it sends the ones the table now knows, keeps the rest
// until they expire.
func (s *slowPath) replay(now time.Time) {
	h := &s.held
	if len(h.pkts) == 0 {
		return
	}
	h.ctx.Now = fastpath.Monotonic()
	keep := h.pkts[:0]
	for _, p := range h.pkts {
		switch s.replayOne(p) {
		case replayWait:
			if now.Before(p.until) {
				keep = append(keep, p)
				continue
			}
			h.expired.Add(1)
		case replaySent:
			h.replayed.Add(1)
		case replayFailed:
			h.failed.Add(1)
		}
		if h.perAddr[p.addr]--; h.perAddr[p.addr] <= 0 {
			delete(h.perAddr, p.addr)
		}
		h.free = append(h.free, p)
	}
	clear(h.pkts[len(keep):])
	h.pkts = keep
}

type replayResult uint8

const (
	replayWait replayResult = iota
	replaySent
	replayFailed
)

// replayOne processes a copy of p (the processor rewrites in place) and
// sends the result the way a worker would, through the kernel: tunnel
// frames through the slow path's UDP socket, frames for a container out
// its port's host veth.
func (s *slowPath) replayOne(p *heldPkt) replayResult {
	h := &s.held
	n := copy(h.scratch[heldHead:], p.pkt[:p.n])
	f := [1]fastpath.Frame{{Buf: h.scratch, Off: heldHead, Len: n}}
	var v [1]fastpath.Verdict
	if p.from == fromUplink {
		s.e.proc.Ingress(h.ctx, f[:], v[:])
	} else {
		s.e.proc.Egress(h.ctx, fastpath.PortID(p.from), f[:], v[:])
	}
	vd := &v[0]
	if (vd.Action == fastpath.ActSlowPath || vd.Action == fastpath.ActDrop) &&
		(vd.Reason == fastpath.ReasonUnknownService || vd.Reason == fastpath.ReasonUnknownSource) {
		return replayWait
	}
	buf := f[0].Buf
	if vd.Action != fastpath.ActTxPort && vd.Action != fastpath.ActTxUplink && vd.Action != fastpath.ActSlowPath ||
		!verdictOK(vd, len(buf)) {
		return replayFailed
	}
	out := buf[vd.Off : vd.Off+vd.Len]
	switch {
	case vd.Action == fastpath.ActTxUplink || vd.Action == fastpath.ActSlowPath && vd.Reason == fastpath.ReasonNoNeighbor:
		if s.sendTunnel(out) != nil {
			return replayFailed
		}
	case vd.Action == fastpath.ActTxPort:
		ifx := s.e.outIfindex(vd)
		if ifx <= 0 || len(out) < fastpath.EthernetLen {
			return replayFailed
		}
		sa := &unix.SockaddrLinklayer{Ifindex: ifx, Halen: 6}
		copy(sa.Addr[:], out[:6])
		if err := unix.Sendto(h.packet, out, 0, sa); err != nil {
			return replayFailed
		}
	default:
		return replayFailed
	}
	return replaySent
}
