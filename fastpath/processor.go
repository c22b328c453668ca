package fastpath

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"

	"github.com/oakwire/oakwire/internal/monotime"
	"github.com/oakwire/oakwire/policy"
)

// Processor is the per-packet logic of a node. It is safe for concurrent
// use by any number of workers, each with its own WorkerCtx.
type Processor struct {
	tables *TableHolder
	flows  *FlowTable
}

// NewProcessor returns a processor reading snapshots from tables and
// sharing flows between workers.
func NewProcessor(tables *TableHolder, flows *FlowTable) *Processor {
	return &Processor{tables: tables, flows: flows}
}

// Flows returns the shared flow table (for the sweeper and metrics).
func (p *Processor) Flows() *FlowTable { return p.flows }

// WorkerCtx is one worker's private state: counters and scratch. It must
// not be shared by goroutines, except Stats, which any goroutine may call.
type WorkerCtx struct {
	// Now is a coarse monotonic clock in nanoseconds, set by the worker
	// once per batch (flow idle timers, fragment cache expiry).
	Now int64

	pp, q, e Parsed
	fragOut  fragCache
	fragIn   fragCache
	counters counters
}

// NewWorkerCtx returns a fresh worker context.
func NewWorkerCtx() *WorkerCtx {
	c := new(WorkerCtx)
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go ≥ 1.24)
	c.fragOut.seed = binary.LittleEndian.Uint32(b[:4])
	c.fragIn.seed = binary.LittleEndian.Uint32(b[4:])
	return c
}

// Stats adds this worker's counters as of its last finished batch into s.
// Any goroutine may call it.
func (c *WorkerCtx) Stats(s *Stats) {
	for i := range s.Drops {
		s.Drops[i] += c.counters.pubD[i].Load()
	}
	for i := range s.Events {
		s.Events[i] += c.counters.pubE[i].Load()
	}
}

func (c *WorkerCtx) ev(e Event) { c.counters.events[e]++ }

func (c *WorkerCtx) drop(v *Verdict, r DropReason) {
	v.Action, v.Reason = ActDrop, r
	c.counters.drops[r]++
}

func (c *WorkerCtx) slow(v *Verdict, r DropReason) {
	v.Action, v.Reason = ActSlowPath, r
	c.counters.drops[r]++
	c.counters.events[EvEgressSlowPath]++
}

// Egress processes a batch of frames received from local container port in
// and writes one verdict per frame into out (len(out) ≥ len(frames)). It
// rewrites frames in place and may write in front of Frame.Off (up to 14
// + 48 bytes of headroom for the tunnel headers). The table snapshot is
// loaded once per batch.
func (p *Processor) Egress(ctx *WorkerCtx, in PortID, frames []Frame, out []Verdict) {
	t := p.tables.Load()
	var port *LocalPort
	if t != nil {
		port = t.Port(in)
	}
	out = out[:len(frames)]
	for i := range frames {
		out[i] = Verdict{Off: frames[i].Off, Len: frames[i].Len, Port: in}
		if port == nil {
			ctx.drop(&out[i], ReasonUnknownPort)
			continue
		}
		p.egress(ctx, t, port, &frames[i], &out[i])
	}
	ctx.counters.publish()
}

// Ingress processes a batch of frames received from the uplink (outer
// Ethernet/IP/UDP) and writes one verdict per frame into out.
// Decapsulation moves Off forward to a fresh Ethernet header in front of
// the inner packet.
func (p *Processor) Ingress(ctx *WorkerCtx, frames []Frame, out []Verdict) {
	t := p.tables.Load()
	out = out[:len(frames)]
	for i := range frames {
		out[i] = Verdict{Off: frames[i].Off, Len: frames[i].Len}
		if t == nil {
			out[i].Action = ActPass
			continue
		}
		p.ingress(ctx, t, &frames[i], &out[i])
	}
	ctx.counters.publish()
}

func frameBytes(f *Frame) ([]byte, bool) {
	// As unsigned values a negative Off or Len is beyond any length, so
	// two comparisons check 0 ≤ Off ≤ len(Buf) and 0 ≤ Len ≤ len(Buf)-Off.
	if uint(f.Off) > uint(len(f.Buf)) || uint(f.Len) > uint(len(f.Buf)-f.Off) {
		return nil, false
	}
	return f.Buf[f.Off:][:f.Len], true
}

func (p *Processor) egress(ctx *WorkerCtx, t *Table, port *LocalPort, f *Frame, v *Verdict) {
	pkt, ok := frameBytes(f)
	if !ok {
		ctx.drop(v, ReasonTruncatedEth)
		return
	}
	pp := &ctx.pp
	if r := pp.Decode(pkt); r != ReasonNone {
		if r == ReasonNotIP {
			v.Action = ActPass
			ctx.ev(EvEgressPass)
			return
		}
		ctx.drop(v, r)
		return
	}
	if !t.inService(pp.Dst) {
		v.Action = ActPass
		ctx.ev(EvEgressPass)
		return
	}
	own, self := port.NS4, port.Inst4
	if pp.Version == 6 {
		own, self = port.NS6, port.Inst6
	}
	if !own.IsValid() || pp.Src != own {
		ctx.drop(v, ReasonSpoofed)
		return
	}
	if !self.IsValid() {
		ctx.drop(v, ReasonNoFamily)
		return
	}
	e, ok := t.addrs.get(pp.Dst)
	if !ok {
		ctx.slow(v, ReasonUnknownService)
		return
	}
	ii, hash, ok := p.egressTarget(ctx, t, e, port.ID, pkt, pp, v)
	if !ok {
		return
	}
	inst := &t.Instances[ii]
	ns := inst.NS4
	if pp.Version == 6 {
		ns = inst.NS6
	}
	if !ns.IsValid() {
		ctx.drop(v, ReasonNoFamily)
		return
	}
	full := port.Csum == CsumRecompute
	if inst.Local {
		p.egressLocal(ctx, t, f, pkt, pp, self, ns, full, inst, v)
		return
	}
	p.egressRemote(ctx, t, port, f, pkt, pp, self, ns, full, inst, hash, v)
}

// egressLocal delivers a translated packet to an instance on this node.
func (p *Processor) egressLocal(ctx *WorkerCtx, t *Table, f *Frame, pkt []byte, pp *Parsed, self, ns netip.Addr, full bool, inst *Instance, v *Verdict) {
	dp := t.Port(inst.Port)
	if dp == nil {
		ctx.drop(v, ReasonUnknownPort)
		return
	}
	translateEgress(ctx, pkt, pp, self, ns, full)
	start, end, ver := pp.L3Off-EthernetLen, pp.End, pp.Version
	// Both ends are here: the reply direction of a local flow is also
	// un-translated here (what ingress does for remote servers). The
	// translated packet parses as pp did but for its addresses (the
	// rewrite changed only addresses, checksums and an ICMP error's
	// quote, none of which parsing looks at beyond reading the
	// addresses), so pp, which this packet needs no more, becomes its
	// decode with the addresses read again: no second Decode, and no
	// copy of the struct just written (its wide loads would wait on
	// the narrow stores).
	pp.readAddrs(pkt)
	p.untranslate(ctx, t, pkt[:end], pp)
	writeEth(pkt[start:], &dp.ContainerMAC, &dp.HostMAC, ver)
	v.Action, v.Port = ActTxPort, inst.Port
	v.Off, v.Len = f.Off+start, end-start
	ctx.ev(EvEgressLocal)
}

// egressRemote translates and encapsulates a packet for an instance on
// another node.
func (p *Processor) egressRemote(ctx *WorkerCtx, t *Table, port *LocalPort, f *Frame, pkt []byte, pp *Parsed, self, ns netip.Addr, full bool, inst *Instance, hash uint32, v *Verdict) {
	ipLen := pp.End - pp.L3Off
	if ipLen > t.maxIP {
		p.tooBig(ctx, t, port, f, pkt, v)
		return
	}
	if inst.Node.Addr().Is4() != t.node4 {
		ctx.drop(v, ReasonNodeFamily)
		return
	}
	hdr := EthernetLen + outerOverhead4
	if !t.node4 {
		hdr = EthernetLen + outerOverhead6
	}
	start := f.Off + pp.L3Off - hdr
	if start < 0 {
		ctx.drop(v, ReasonNoHeadroom)
		return
	}
	translateEgress(ctx, pkt, pp, self, ns, full)
	encap(f.Buf[start:start+hdr+ipLen], t, inst, hash)
	v.Off, v.Len = start, hdr+ipLen
	if !inst.hasMAC {
		ctx.slow(v, ReasonNoNeighbor)
		return
	}
	v.Action = ActTxUplink
	ctx.ev(EvEgressRemote)
}

// egressTarget picks the instance a container's packet to a service or
// instance IP goes to, and the flow hash its tunnel header carries. On
// false the verdict says why not.
func (p *Processor) egressTarget(ctx *WorkerCtx, t *Table, e addrEntry, port PortID, pkt []byte, pp *Parsed, v *Verdict) (ii int32, hash uint32, ok bool) {
	if e.kind == addrInstance {
		ii = e.idx
		var fk FlowKey
		fk.setOf(pkt, pp)
		k := fk
		if pp.Frag != FragNone {
			k = MakeFlowKey(pp.Proto, pp.Src, 0, pp.Dst, 0) // all fragments alike
		}
		hash = k.Hash()
		if pp.HasPorts && pp.Frag != FragLater && !pp.isICMPError() {
			// The client now talks to the instance IP itself on this
			// 5-tuple: a service flow that picked this instance from the
			// same port must not turn the replies' source into its
			// service IP (see FlowTable).
			rev := fk.reverse()
			p.flows.ReleaseReverse(&rev)
		}
	} else {
		svc := &t.Services[e.idx]
		switch {
		case pp.Frag == FragLater:
			fe := ctx.fragOut.get(pp, ctx.Now)
			if fe == nil {
				ctx.drop(v, ReasonFragUnknown)
				return 0, 0, false
			}
			if ii = t.instanceByNumber(svc, fe.inst); ii < 0 {
				ctx.drop(v, ReasonFragUnknown)
				return 0, 0, false
			}
			hash = fe.hash
			ctx.ev(EvFragTranslated)
		case pp.isICMPError():
			var r DropReason
			if ii, hash, r = p.resolveICMPError(ctx, t, svc, pkt, pp); r != ReasonNone {
				ctx.drop(v, r)
				return 0, 0, false
			}
		case !pp.HasPorts:
			ctx.drop(v, ReasonUnsupportedProto)
			return 0, 0, false
		default:
			var r DropReason
			if ii, hash, r = p.resolve(ctx, t, svc, e.policy, port, pkt, pp); r != ReasonNone {
				ctx.drop(v, r)
				return 0, 0, false
			}
			if pp.Frag == FragFirst {
				ctx.fragOut.put(pp, t.Instances[ii].Number, netip.Addr{}, hash, ctx.Now)
			}
		}
	}
	return ii, hash, true
}

// resolve finds or creates the flow of a packet from port to a service IP.
func (p *Processor) resolve(ctx *WorkerCtx, t *Table, svc *Service, pol policy.ID, port PortID, pkt []byte, pp *Parsed) (int32, uint32, DropReason) {
	var key FlowKey
	key.setOf(pkt, pp)
	h := key.Hash() // tunnel source port, not the flow table's bucket
	num, ref, found := p.flows.Lookup(&key, ctx.Now)
	if found {
		if ii := t.instanceByNumber(svc, num); ii >= 0 {
			p.flows.Claim(ref) // the replies are this flow's again
			return ii, h, ReasonNone
		}
	}
	ii, ok := pol.Pick(&svc.policy[pol], h)
	if !ok {
		return 0, 0, ReasonNoInstance
	}
	inst := &t.Instances[ii]
	iip := inst.IP4
	if pp.Version == 6 {
		iip = inst.IP6
	}
	if !iip.IsValid() {
		return 0, 0, ReasonNoFamily
	}
	rev := MakeFlowKey(pp.Proto, iip, pp.DstPort, pp.Src, pp.SrcPort)
	if found {
		p.flows.Rebind(ref, &rev, inst.Number)
		ctx.ev(EvFlowRechosen)
		return ii, h, ReasonNone
	}
	got, ok := p.flows.Insert(&key, &rev, inst.Number, port, ctx.Now)
	if !ok {
		return 0, 0, ReasonFlowTableFull
	}
	if got != inst.Number {
		// Another worker created the flow first: follow its choice.
		if gi := t.instanceByNumber(svc, got); gi >= 0 {
			return gi, h, ReasonNone
		}
	} else {
		ctx.ev(EvFlowNew)
	}
	return ii, h, ReasonNone
}

// resolveICMPError finds the flow that an ICMP error from a local client
// to a service IP is about. The client received packets from the service
// IP only as translated replies (ingress, or a local server's reply), so
// the error quotes such a reply: from the service IP to the client's
// nsIP, ports swapped. The quote reversed is the forward key the flow was
// stored under (flowKeyOf of the client's own packets). The error goes to
// the server that sent the reply, the flow's instance, with the flow's hash
// (the tunnel source port of the flow's own packets); translateEgress then
// rewrites the quote as the mirror image of the outer addresses. Nothing
// is created, claimed or chosen again: an error about no live flow (or
// about a flow whose instance is gone) is ReasonICMPNoFlow.
func (p *Processor) resolveICMPError(ctx *WorkerCtx, t *Table, svc *Service, pkt []byte, pp *Parsed) (int32, uint32, DropReason) {
	if pp.Frag != FragNone {
		// The ICMP checksum covers fragments that are not here, and
		// translating the quote changes it. Kernels quote at most 576 /
		// 1280 bytes, so real errors are never fragmented.
		return 0, 0, ReasonUnsupportedProto
	}
	q := &ctx.q
	if quoted(pkt, pp, q) != ReasonNone {
		return 0, 0, ReasonBadEmbedded
	}
	if !q.HasPorts || q.Src != pp.Dst || q.Dst != pp.Src {
		return 0, 0, ReasonICMPNoFlow // not a reply the service IP sent this client
	}
	var qk FlowKey
	qk.setOf(pkt, q)
	key := qk.reverse()
	num, _, ok := p.flows.Lookup(&key, ctx.Now)
	if !ok {
		return 0, 0, ReasonICMPNoFlow
	}
	ii := t.instanceByNumber(svc, num)
	if ii < 0 {
		return 0, 0, ReasonICMPNoFlow
	}
	return ii, key.Hash(), ReasonNone
}

// translateEgress rewrites the addresses; for an ICMP error it also
// rewrites the quoted packet's addresses as the mirror image (the quoted
// packet travelled the other way: its source was our destination and its
// destination our source) and recomputes the ICMP checksum.
func translateEgress(ctx *WorkerCtx, pkt []byte, pp *Parsed, src, dst netip.Addr, full bool) {
	if !pp.isICMPError() || pp.Frag != FragNone {
		rewriteAddrs(pkt, pp, src, dst, full)
		return
	}
	oldSrc, oldDst := pp.Src, pp.Dst
	rewriteAddrs(pkt, pp, src, dst, full)
	q := &ctx.q
	if quoted(pkt, pp, q) != ReasonNone {
		return // opaque quote: leave it
	}
	qs, qd := q.Src, q.Dst
	if qs == oldDst {
		qs = dst
	}
	if qd == oldSrc {
		qd = src
	}
	rewriteAddrs(pkt, q, qs, qd, false)
	icmpChecksum(pkt, pp)
	ctx.ev(EvICMPErrorTranslated)
}

// tooBig turns the frame into an ICMP "fragmentation needed" (IPv4, type 3
// code 4, RFC 1191) or ICMPv6 "packet too big" (RFC 4443 §3.2) back to the
// sending container, quoting the original (untranslated) packet, and sends
// it back out of the port it came from. The error's source is the
// packet's original destination. The advertised MTU is the underlay MTU
// minus the tunnel overhead, but never below 1280 for IPv6: every IPv6
// link carries 1280 bytes (RFC 8200 §5) and a sender does not lower its
// path MTU below that (RFC 8201 §4), so a smaller value is ignored or
// invalid. No error is sent for IPv4 without DF (the frame is dropped: we
// do not fragment), about an ICMP error, or for an IPv6 packet of at most
// 1280 bytes that an underlay below 1280 + overhead cannot carry (only
// fragmenting below IPv6 could; no error can make the sender go smaller).
func (p *Processor) tooBig(ctx *WorkerCtx, t *Table, port *LocalPort, f *Frame, pkt []byte, v *Verdict) {
	pp := &ctx.pp
	if (pp.Version == 4 && !pp.DF) || pp.isICMPError() {
		ctx.drop(v, ReasonTooBig)
		return
	}
	mtu := t.maxIP
	if pp.Version == 6 && mtu < minIPv6MTU {
		if pp.End-pp.L3Off <= minIPv6MTU {
			ctx.drop(v, ReasonTooBig)
			return
		}
		mtu = minIPv6MTU
	}
	hdr, limit := IPv4MinLen+ICMPMinLen, minIPv4ErrorQuoteTo
	if pp.Version == 6 {
		hdr, limit = IPv6Len+ICMPMinLen, minIPv6MTU
	}
	start := f.Off + pp.L3Off - hdr - EthernetLen
	if start < 0 {
		ctx.drop(v, ReasonNoHeadroom)
		return
	}
	qlen := min(pp.End-pp.L3Off, limit-hdr)
	ipLen := hdr + qlen
	b := f.Buf[start : start+EthernetLen+ipLen]
	src, dst := pp.Dst, pp.Src
	writeEth(b, &port.ContainerMAC, &port.HostMAC, pp.Version)
	ip := b[EthernetLen:]
	if pp.Version == 4 {
		h := ip[:IPv4MinLen]
		h[0], h[1] = 0x45, 0
		binary.BigEndian.PutUint16(h[2:], uint16(ipLen))
		binary.BigEndian.PutUint32(h[4:], 0)
		h[8], h[9], h[10], h[11] = 64, ProtoICMP, 0, 0
		putAddr(h[12:], src)
		putAddr(h[16:], dst)
		IPv4(h).SetChecksum(IPv4HeaderChecksum(h))
		m := ip[IPv4MinLen:]
		m[0], m[1], m[2], m[3], m[4], m[5] = ICMPv4DestUnreach, ICMPv4FragNeeded, 0, 0, 0, 0
		binary.BigEndian.PutUint16(m[6:], uint16(mtu))
		binary.BigEndian.PutUint16(m[2:], Checksum(m, 0))
	} else {
		h := ip[:IPv6Len]
		binary.BigEndian.PutUint32(h[0:], 6<<28)
		binary.BigEndian.PutUint16(h[4:], uint16(ipLen-IPv6Len))
		h[6], h[7] = ProtoICMPv6, 64
		putAddr(h[8:], src)
		putAddr(h[24:], dst)
		m := ip[IPv6Len:]
		m[0], m[1], m[2], m[3] = ICMPv6PacketTooBig, 0, 0, 0
		binary.BigEndian.PutUint32(m[4:], uint32(mtu))
		binary.BigEndian.PutUint16(m[2:], Checksum(m, PseudoHeaderSum(ProtoICMPv6, h[8:24], h[24:40], len(m))))
	}
	v.Action, v.Port = ActTxPort, port.ID
	v.Off, v.Len = start, len(b)
	ctx.ev(EvICMPTooBigSent)
}

func (p *Processor) ingress(ctx *WorkerCtx, t *Table, f *Frame, v *Verdict) {
	pkt, ok := frameBytes(f)
	if !ok {
		ctx.drop(v, ReasonTruncatedEth)
		return
	}
	pp := &ctx.pp
	if r := pp.Decode(pkt); r != ReasonNone {
		if r == ReasonNotIP {
			v.Action = ActPass
			ctx.ev(EvIngressPass)
			return
		}
		ctx.drop(v, r)
		return
	}
	if pp.Proto != ProtoUDP || pp.Dst != t.Node.Addr.Addr() || pp.Frag == FragLater || pp.DstPort != t.Node.Addr.Port() {
		v.Action = ActPass
		ctx.ev(EvIngressPass)
		return
	}
	if pp.Frag == FragFirst {
		ctx.drop(v, ReasonOuterFragment)
		return
	}
	if _, ok := t.peers.get(pp.Src); !ok {
		ctx.drop(v, ReasonNonPeer)
		return
	}
	innerOff := pp.L4Off + UDPLen
	inner := pkt[:pp.L4Off+int(binary.BigEndian.Uint16(pkt[pp.L4Off+4:]))]
	q := &ctx.q
	if r := q.decodeIP(inner, innerOff, false, 0); r != ReasonNone {
		ctx.drop(v, ReasonBadInner)
		return
	}
	id, ok := t.localNS.get(q.Dst)
	if !ok {
		ctx.drop(v, ReasonNotLocal)
		return
	}
	if r := p.checkSource(ctx, t, inner, q, pp.Src); r != ReasonNone {
		if r == ReasonUnknownSource {
			ctx.slow(v, r)
			return
		}
		ctx.drop(v, r)
		return
	}
	lp := t.Port(id)
	if !p.untranslate(ctx, t, inner, q) && t.Node.IngressCsum == CsumRecompute && q.HasPorts &&
		q.Frag == FragNone && (q.Proto == ProtoTCP || q.Proto == ProtoUDP) {
		rewriteAddrs(inner, q, q.Src, q.Dst, true) // same addresses; checksum recomputed
	}
	start := innerOff - EthernetLen
	writeEth(pkt[start:], &lp.ContainerMAC, &lp.HostMAC, q.Version)
	v.Action, v.Port = ActTxPort, id
	v.Off, v.Len = f.Off+start, q.End-start
	ctx.ev(EvIngressDelivered)
}

// checkSource says whether a tunnel packet's inner source is plausible
// from peer (SPEC §7.2 isolation): an instance IP or nsIP that the table
// places on that node, or a reply on a flow this node opened (a server
// that has just migrated still answers from its old node). A service IP is
// never a source on the wire (replies are translated here), nor is an
// address outside the platform. A source in the service ranges that the
// table does not know yet is ReasonUnknownSource: the slow path resolves
// it through the cluster (a client's service is usually unknown to the
// server's node until its first packet), and its retransmission passes.
func (p *Processor) checkSource(ctx *WorkerCtx, t *Table, pkt []byte, q *Parsed, peer netip.Addr) DropReason {
	node, known := t.sourceNode(q.Src)
	if known && node == peer {
		return ReasonNone
	}
	if p.replyToLocalFlow(ctx, pkt, q) {
		return ReasonNone
	}
	if !known && t.inService(q.Src) {
		if _, ok := t.addrs.get(q.Src); !ok {
			return ReasonUnknownSource
		}
	}
	return ReasonWrongSource
}

// replyToLocalFlow reports whether q is a reply on a flow this node opened
// (its reverse key), or an ICMP error about one (the quote's reverse key).
// Later fragments carry no ports and are judged by their source alone.
func (p *Processor) replyToLocalFlow(ctx *WorkerCtx, pkt []byte, q *Parsed) bool {
	var k FlowKey
	switch {
	case q.isICMPError() && q.Frag == FragNone:
		e := &ctx.e
		if quoted(pkt, q, e) != ReasonNone || !e.HasPorts {
			return false
		}
		k = MakeFlowKey(e.Proto, e.Dst, e.DstPort, e.Src, e.SrcPort)
	case q.HasPorts && q.Frag != FragLater:
		k.setOf(pkt, q)
	default:
		return false
	}
	_, ok := p.flows.LookupReverse(&k, ctx.Now)
	return ok
}

// untranslate restores the service IP as the source of a packet about to
// be delivered to a local client when it is a reply on a flow this node
// opened (reverse key), including ICMP errors about such a flow and later
// fragments of a translated reply. Other packets are left unchanged. It
// reports whether it rewrote a TCP/UDP packet's addresses (with the
// checksum recomputed in full when the node's IngressCsum says so).
func (p *Processor) untranslate(ctx *WorkerCtx, t *Table, pkt []byte, q *Parsed) bool {
	switch {
	case q.isICMPError() && q.Frag == FragNone:
		p.untranslateICMPError(ctx, pkt, q)
	case q.Frag == FragLater:
		if fe := ctx.fragIn.get(q, ctx.Now); fe != nil {
			rewriteAddrs(pkt, q, fe.addr, q.Dst, false)
			ctx.ev(EvFragTranslated)
			ctx.ev(EvIngressTranslated)
		}
	case q.HasPorts:
		var k FlowKey
		k.setOf(pkt, q) // MakeFlowKey of q's fields, from the bytes
		if svcIP, ok := p.flows.LookupReverse(&k, ctx.Now); ok {
			rewriteAddrs(pkt, q, svcIP, q.Dst, t.Node.IngressCsum == CsumRecompute)
			if q.Frag == FragFirst {
				ctx.fragIn.put(q, 0, svcIP, 0, ctx.Now)
			}
			ctx.ev(EvIngressTranslated)
			return true
		}
	}
	return false
}

// untranslateICMPError handles an ICMP error arriving for a local client:
// if the quoted packet (client nsIP → server instance IP) belongs to a
// flow this node opened, the quoted destination and the error's source
// (when it is the server instance) become the service IP again.
func (p *Processor) untranslateICMPError(ctx *WorkerCtx, pkt []byte, q *Parsed) {
	e := &ctx.e
	if quoted(pkt, q, e) != ReasonNone || !e.HasPorts {
		return
	}
	k := MakeFlowKey(e.Proto, e.Dst, e.DstPort, e.Src, e.SrcPort)
	svcIP, ok := p.flows.LookupReverse(&k, ctx.Now)
	if !ok {
		return
	}
	server := e.Dst
	rewriteAddrs(pkt, e, e.Src, svcIP, false)
	if q.Src == server {
		rewriteAddrs(pkt, q, svcIP, q.Dst, false)
	}
	icmpChecksum(pkt, q)
	ctx.ev(EvICMPErrorTranslated)
	ctx.ev(EvIngressTranslated)
}

// Monotonic returns nanoseconds on the monotonic clock since process start
// (internal/monotime, the poller's clock too): the clock workers put in
// WorkerCtx.Now once per batch and the sweeper passes to FlowTable.Sweep.
func Monotonic() int64 { return monotime.Now() }
