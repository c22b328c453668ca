//go:build linux

package dataplane

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
)

// A worker's part of the kernel tier (docs/design.md "The kernel tier").
// With the tier on, a worker owns one socket: its queue of punt1. Punted
// frames name in their Ethernet destination where they arrived (a port's
// host veth, or the uplink); the worker runs them through the processor
// like any frame from there, writes where each result goes into its
// Ethernet source and sends it back out of the same socket, to tc_punt.
// Each TCP/UDP decision the kernel can repeat becomes a slot
// (tierSlotFor), published pending once the round's frames are out, and
// opened (tierRound) once the worker has sent every packet the kernel
// punted to it while pending.

// tierPend is a slot this worker published and has not opened yet.
type tierPend struct {
	slot     uint32
	gen      uint32
	handled  uint32 // counted punts of the flow this worker processed
	since    int64  // published (fastpath.Monotonic)
	progress int64  // last counted punt processed
}

// tierCand is a decision to publish at the end of the round.
type tierCand struct {
	key  bpfprog.TierKey
	peer netip.Addr // tunnel ingress: the peer it came from
	slot bpfprog.TierSlot
}

// processPunt handles a batch from the worker's punt socket.
func (w *worker) processPunt(ws *wsock, n int) {
	s := ws.s
	e := w.e
	t := e.tables.Load()
	w.next = 0
	for i := range n {
		d := w.descs[i]
		base := s.FrameStart(d.Addr)
		buf := s.Frame(base)
		off := int(d.Addr - base)
		pkt := buf[off : off+int(d.Len)]
		w.frames[i] = fastpath.Frame{Buf: buf, Off: off, Len: int(d.Len)}
		if len(pkt) < fastpath.EthernetLen || pkt[0] != tierMeta {
			w.cnt[cPuntBad]++
			s.FreeFrame(base)
			w.next = i + 1
			continue
		}
		flags, from := pkt[1], int(binary.BigEndian.Uint32(pkt[2:6]))
		var c tierCapture
		port := int32(fromUplink)
		if from == e.uplinkIdx {
			c = captureIngress(pkt, from, &w.tp, &w.tq)
			e.proc.Ingress(w.wctx, w.frames[i:i+1], w.verd[i:i+1])
		} else if id, ok := e.portByIfindex(from); ok {
			port = int32(id)
			c = captureEgress(pkt, from, &w.tp)
			e.proc.Egress(w.wctx, id, w.frames[i:i+1], w.verd[i:i+1])
		} else {
			w.cnt[cPuntBad]++
			s.FreeFrame(base)
			w.next = i + 1
			continue
		}
		if flags&tierPuntCounted != 0 && c.ok {
			if p := w.tpend[c.key]; p != nil {
				p.handled++
				p.progress = w.wctx.Now
			}
		}
		v := &w.verd[i]
		if h := e.procHook.Load(); h != nil {
			(*h)(from == e.uplinkIdx, w.frames[i:i+1], w.verd[i:i+1])
		}
		switch v.Action {
		case fastpath.ActTxPort, fastpath.ActTxUplink:
			if !verdictOK(v, len(buf)) || (v.Action == fastpath.ActTxPort && v.Port >= fastpath.MaxPorts) {
				w.cnt[cBadVerdict]++
				s.FreeFrame(base)
				break
			}
			to := e.outIfindex(v)
			if to <= 0 {
				w.cnt[cCrossNoSocket]++
				s.FreeFrame(base)
				break
			}
			out := buf[v.Off : v.Off+v.Len]
			if c.ok && t != nil && len(w.cands) < cap(w.cands) {
				if slot, ok := e.tierSlotFor(&c, v, out, to, t, &w.tq); ok {
					w.cands = append(w.cands, tierCand{key: c.key, peer: c.peer, slot: slot})
				}
			}
			// Where tc_punt sends it: 02:00:<ifindex> in the source MAC.
			out[6], out[7] = tierMeta, 0
			binary.BigEndian.PutUint32(out[8:12], uint32(to))
			if len(ws.pend) == cap(ws.pend) {
				w.transmit(ws)
			}
			ws.pend = append(ws.pend, xsk.Desc{Addr: base + uint64(v.Off), Len: uint32(v.Len)})
		case fastpath.ActSlowPath:
			if verdictOK(v, len(buf)) {
				w.toSlow(buf[v.Off:v.Off+v.Len], v.Reason, port)
			} else {
				w.cnt[cBadVerdict]++
			}
			s.FreeFrame(base)
		case fastpath.ActPass:
			w.cnt[cPassDropped]++
			s.FreeFrame(base)
		default:
			w.cnt[cDropped]++
			s.FreeFrame(base)
		}
		w.next = i + 1
	}
}

// tierRound runs after the round's frames went out: it publishes the
// round's decisions and opens the gates it may.
func (w *worker) tierRound(m *tierMgr, ws *wsock) {
	now := fastpath.Monotonic()
	for i := range w.cands {
		c := &w.cands[i]
		if _, dup := w.tpend[c.key]; dup {
			continue
		}
		slot, ok := m.alloc(&c.key, &c.slot, c.peer)
		if !ok {
			continue
		}
		sl := m.t.Slot(slot)
		gen := sl.Gen + 1
		c.slot.Gen = gen
		*sl = c.slot // unpublished and cooled: nobody else reads it
		if err := m.t.Publish(&c.key, slot); err != nil {
			m.unalloc(slot)
			continue
		}
		m.installed.Add(1)
		w.tpend[c.key] = &tierPend{slot: slot, gen: gen, since: now, progress: now}
	}
	w.cands = w.cands[:0]
	if len(w.tpend) == 0 || ws == nil || ws.s.TxOutstanding() > 0 {
		return // frames of pending flows may still be in our TX ring
	}
	for k, p := range w.tpend {
		sl := m.t.Slot(p.slot)
		g := atomic.LoadUint64(&sl.Gate)
		if g&tierGateDead != 0 || atomic.LoadUint32(&sl.Gen) != p.gen {
			delete(w.tpend, k) // withdrawn by the sweeper
			continue
		}
		counted := uint32(g)
		switch {
		case counted == p.handled && (counted > 0 || now-p.since >= int64(tierQuiet)):
		case now-p.progress >= int64(tierStuck):
			w.cnt[cTierForced]++ // counted punts were lost on the way
		default:
			continue
		}
		if atomic.CompareAndSwapUint64(&sl.Gate, g, bpfprog.TierGateActive) {
			delete(w.tpend, k)
			w.cnt[cTierOpened]++
		}
	}
}
