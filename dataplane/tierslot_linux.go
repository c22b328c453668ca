//go:build linux

package dataplane

import (
	"encoding/binary"
	"net/netip"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
)

// Kernel-tier slots: what a worker's decision becomes in tier_slots, and
// what the processor would decide now (for revalidation).

// tierCapture is what a worker notes of a punted frame before the
// processor rewrites it: the flow's key when the kernel tier could
// execute it, and for tunnel frames the peer it came from.
type tierCapture struct {
	ok   bool
	key  bpfprog.TierKey
	peer netip.Addr
}

// captureEgress notes a frame from port ifindex: IPv4 without options or
// IPv6 without extension headers, untagged, TCP or UDP, not a fragment.
func captureEgress(pkt []byte, ifindex int, p *fastpath.Parsed) tierCapture {
	if p.Decode(pkt) != fastpath.ReasonNone || !plainL4(p, fastpath.EthernetLen) {
		return tierCapture{}
	}
	return tierCapture{ok: true, key: bpfprog.NewTierKey(ifindex, p.Proto,
		netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))}
}

// captureIngress notes a tunnel frame from the uplink: the outer header as
// tc_uplink strips it (no options or extension headers, untagged), the
// inner as captureEgress wants it.
func captureIngress(pkt []byte, uplink int, outer, inner *fastpath.Parsed) tierCapture {
	if !fastpath.TunnelInner(pkt, outer, inner) || outer.L3Off != fastpath.EthernetLen ||
		outer.L4Off-outer.L3Off != ipLen(outer.Version) || !plainL4(inner, outer.L4Off+fastpath.UDPLen) {
		return tierCapture{}
	}
	return tierCapture{ok: true, peer: outer.Src, key: bpfprog.NewTierKey(uplink, inner.Proto,
		netip.AddrPortFrom(inner.Src, inner.SrcPort), netip.AddrPortFrom(inner.Dst, inner.DstPort))}
}

func ipLen(version uint8) int {
	if version == 4 {
		return fastpath.IPv4MinLen
	}
	return fastpath.IPv6Len
}

// plainL4: a TCP or UDP packet at l3 without options, extension headers or
// fragmentation.
func plainL4(p *fastpath.Parsed, l3 int) bool {
	return p.L3Off == l3 && p.L4Off-p.L3Off == ipLen(p.Version) && p.Frag == fastpath.FragNone &&
		p.HasPorts && (p.Proto == fastpath.ProtoTCP || p.Proto == fastpath.ProtoUDP)
}

// tierSlotFor turns what the processor did to a captured frame into the
// slot that does the same in the kernel: out is the frame it produced
// (verdict v, still with the MACs the processor wrote), outIfindex where it
// goes. ok is false when the kernel tier cannot do it (an IPv6 underlay,
// a changed protocol or port: an ICMP error, say).
func (e *Engine) tierSlotFor(c *tierCapture, v *fastpath.Verdict, out []byte, outIfindex int, t *fastpath.Table, q *fastpath.Parsed) (s bpfprog.TierSlot, ok bool) {
	src, dst := bpfprog.TierKeyAddrs(&c.key)
	l3 := fastpath.EthernetLen
	switch v.Action {
	case fastpath.ActTxUplink:
		if c.peer.IsValid() || len(out) < l3+bpfprog.TierOuterLen || out[l3] != 0x45 {
			return s, false // only egress encapsulates, and only over IPv4
		}
		o := out[l3:]
		tmpl, sum := bpfprog.OuterTemplate(netip.AddrFrom4([4]byte(o[12:16])), netip.AddrFrom4([4]byte(o[16:20])),
			binary.BigEndian.Uint16(o[20:]), binary.BigEndian.Uint16(o[22:]))
		s.Flags, s.Outer, s.OuterSum = bpfprog.TierEncap, tmpl, sum
		s.OuterLen, s.MaxLen = uint32(bpfprog.TierOuterLen), uint32(t.MaxInner())
		l3 += bpfprog.TierOuterLen
	case fastpath.ActTxPort:
		s.Flags = bpfprog.TierDeliver
		s.Dmac, s.Smac = [6]byte(out[0:6]), [6]byte(out[6:12])
		if c.peer.IsValid() {
			s.Flags |= bpfprog.TierDecap
			s.Peer, s.PeerFamily = bpfprog.AddrWords(c.peer), 6
			if c.peer.Unmap().Is4() {
				s.PeerFamily = 4
			}
		}
	default:
		return s, false
	}
	if q.DecodeIP(out, l3) != fastpath.ReasonNone || !plainL4(q, l3) || q.Proto != c.key.Proto ||
		q.SrcPort != src.Port() || q.DstPort != dst.Port() {
		return s, false
	}
	if q.Src != src.Addr() {
		s.Flags |= bpfprog.TierSNAT
		s.NewSaddr = bpfprog.AddrWords(q.Src)
	}
	if q.Dst != dst.Addr() {
		if c.peer.IsValid() {
			return s, false // ingress never changes the destination
		}
		s.Flags |= bpfprog.TierDNAT
		s.NewDaddr = bpfprog.AddrWords(q.Dst)
	}
	s.OutIfindex = uint32(outIfindex)
	switch {
	case c.peer.IsValid():
		s.Kind = bpfprog.TierKindIngress
	case t.IsServiceIP(dst.Addr()):
		s.Kind = bpfprog.TierKindService
		k := fastpath.MakeFlowKey(c.key.Proto, src.Addr(), src.Port(), dst.Addr(), dst.Port())
		if inst, _, found := e.flows.Lookup(&k, fastpath.Monotonic()); found {
			s.Inst = inst
		}
	default:
		s.Kind = bpfprog.TierKindInstance
	}
	return s, true
}

// simulate asks the processor what it would do now with a packet of flow
// k (from peer, for the uplink's flows) and returns the slot for it. It
// runs outside the workers (the sweeper), with its own context.
func (e *Engine) simulate(ctx *fastpath.WorkerCtx, t *fastpath.Table, k *bpfprog.TierKey, peer netip.Addr, buf []byte) (bpfprog.TierSlot, bool) {
	if t == nil {
		return bpfprog.TierSlot{}, false
	}
	src, dst := bpfprog.TierKeyAddrs(k)
	var inner []byte
	if k.Proto == fastpath.ProtoTCP {
		inner = synthTCP(src, dst)
	} else {
		inner = synthUDP(src, dst)
	}
	const head = 256
	frame := buf[:head]
	var f fastpath.Frame
	var c tierCapture
	var v [1]fastpath.Verdict
	var p, q fastpath.Parsed
	if peer.IsValid() {
		udp := make([]byte, fastpath.UDPLen, fastpath.UDPLen+len(inner))
		binary.BigEndian.PutUint16(udp[0:], 49152)
		binary.BigEndian.PutUint16(udp[2:], t.Node.Addr.Port())
		binary.BigEndian.PutUint16(udp[4:], uint16(fastpath.UDPLen+len(inner)))
		outer := synthIP(peer, t.Node.Addr.Addr(), fastpath.ProtoUDP, append(udp, inner...))
		pkt := append(append(frame, ethHeader(outer)...), outer...)
		f = fastpath.Frame{Buf: pkt, Off: head, Len: len(pkt) - head}
		var o fastpath.Parsed
		c = captureIngress(pkt[head:], int(k.Ifindex), &o, &q)
		e.proc.Ingress(ctx, []fastpath.Frame{f}, v[:])
	} else {
		pkt := append(append(frame, ethHeader(inner)...), inner...)
		f = fastpath.Frame{Buf: pkt, Off: head, Len: len(pkt) - head}
		c = captureEgress(pkt[head:], int(k.Ifindex), &q)
		id, ok := e.portByIfindex(int(k.Ifindex))
		if !ok {
			return bpfprog.TierSlot{}, false
		}
		e.proc.Egress(ctx, id, []fastpath.Frame{f}, v[:])
	}
	if !c.ok || (v[0].Action != fastpath.ActTxPort && v[0].Action != fastpath.ActTxUplink) {
		return bpfprog.TierSlot{}, false
	}
	out := f.Buf[v[0].Off : v[0].Off+v[0].Len]
	return e.tierSlotFor(&c, &v[0], out, e.outIfindex(&v[0]), t, &p)
}

// outIfindex is where a TX verdict's frame goes: the uplink or a port's
// host veth (-1: no such port).
func (e *Engine) outIfindex(v *fastpath.Verdict) int {
	if v.Action == fastpath.ActTxUplink {
		return e.uplinkIdx
	}
	if px := e.portIfx.Load(); px != nil && int(v.Port) < len(*px) {
		return int((*px)[v.Port])
	}
	return -1
}

// portByIfindex is the port on host veth ifindex.
func (e *Engine) portByIfindex(ifindex int) (fastpath.PortID, bool) {
	if m := e.ifxPort.Load(); m != nil {
		id, ok := (*m)[int32(ifindex)]
		return id, ok
	}
	return 0, false
}

func ethHeader(ip []byte) []byte {
	h := make([]byte, fastpath.EthernetLen)
	binary.BigEndian.PutUint16(h[12:], fastpath.EtherTypeIPv4)
	if ip[0]>>4 == 6 {
		binary.BigEndian.PutUint16(h[12:], fastpath.EtherTypeIPv6)
	}
	return h
}

// synthTCP and synthUDP build a bare TCP (ACK) or UDP packet from src to
// dst with no payload; checksums are left zero (the processor recomputes
// what it changes and never checks them).
func synthTCP(src, dst netip.AddrPort) []byte {
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	l4[12], l4[13] = 5<<4, 0x10
	return synthIP(src.Addr(), dst.Addr(), fastpath.ProtoTCP, l4)
}

func synthUDP(src, dst netip.AddrPort) []byte {
	l4 := make([]byte, fastpath.UDPLen)
	binary.BigEndian.PutUint16(l4[0:], src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	binary.BigEndian.PutUint16(l4[4:], fastpath.UDPLen)
	return synthIP(src.Addr(), dst.Addr(), fastpath.ProtoUDP, l4)
}

func synthIP(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	if src.Unmap().Is4() {
		h := make([]byte, fastpath.IPv4MinLen, fastpath.IPv4MinLen+len(l4))
		h[0], h[8], h[9] = 0x45, 64, proto
		binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(l4)))
		binary.BigEndian.PutUint16(h[6:], 0x4000)
		s, d := src.Unmap().As4(), dst.Unmap().As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return append(h, l4...)
	}
	h := make([]byte, fastpath.IPv6Len, fastpath.IPv6Len+len(l4))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6], h[7] = proto, 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, l4...)
}
