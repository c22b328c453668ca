package fastpath

import (
	"encoding/binary"
	"net/netip"
)

// putAddr writes a at b (4 or 16 bytes by family).
func putAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		a4 := a.As4()
		copy(b, a4[:])
		return
	}
	a16 := a.As16()
	copy(b, a16[:])
}

// rewriteAddrs replaces the addresses of the IP packet p describes inside
// pkt with src and dst (same family), keeping checksums right: the IPv4
// header checksum and the upper-layer checksum (pseudo-header) are updated
// per RFC 1624; with full set, a TCP/UDP checksum of a non-fragmented
// packet is recomputed instead (CHECKSUM_PARTIAL from containers). An IPv4
// UDP checksum of 0 (none) stays 0; a computed 0 is sent as 0xffff
// (RFC 768); a recomputed UDP checksum covers the UDP length, not the IP
// payload. Later fragments carry no upper-layer header: only the IPv4
// header checksum changes. Checksum fields beyond a quoted packet's end are
// left alone.
func rewriteAddrs(pkt []byte, p *Parsed, src, dst netip.Addr, full bool) {
	if p.Version != 4 {
		rewriteAddrs6(pkt, p, src, dst, full)
		return
	}
	// IPv4, the common case, right here (one call): the addresses are
	// single 32-bit words at fixed offsets of a header whose 20 bytes
	// Decode checked, so one bounds check covers every access and the new
	// addresses go in with plain stores (no byte copies through putAddr).
	h := (*[IPv4MinLen]byte)(pkt[p.L3Off:])
	var delta uint64 // addrDelta4 terms
	if src != p.Src {
		n := addr4(src)
		delta += addrDelta4(binary.BigEndian.Uint32(h[12:]), n)
		binary.BigEndian.PutUint32(h[12:], n)
	}
	if dst != p.Dst {
		n := addr4(dst)
		delta += addrDelta4(binary.BigEndian.Uint32(h[16:]), n)
		binary.BigEndian.PutUint32(h[16:], n)
	}
	binary.BigEndian.PutUint16(h[10:], applyDelta4(binary.BigEndian.Uint16(h[10:]), delta))
	if p.Frag == FragLater {
		return
	}
	// ICMPv4 has no pseudo-header (and ICMPv6 in IPv4 is opaque): only TCP
	// and UDP checksums cover the addresses.
	var co int
	switch p.Proto {
	case ProtoTCP:
		co = 16
	case ProtoUDP:
		co = 6
	default:
		return
	}
	if p.L4Off+co+2 > p.End {
		return // cut off (a quoted packet)
	}
	cp := pkt[p.L4Off+co:]
	cs := binary.BigEndian.Uint16(cp)
	udp := p.Proto == ProtoUDP
	if udp && cs == 0 {
		return // no checksum (RFC 768)
	}
	if full && p.Frag == FragNone {
		cp[0], cp[1] = 0, 0
		l4 := pkt[p.L4Off:l4End(pkt, p, udp)]
		cs = Checksum(l4, pseudoSum4(binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:]), p.Proto, len(l4)))
	} else {
		cs = applyDelta4(cs, delta)
	}
	if udp && cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(cp, cs)
}

// l4End is where a recomputed TCP/UDP checksum's coverage ends: the IP
// payload's end, or for UDP the datagram per its length field (RFC 768),
// which Decode lets be shorter than the payload, as Linux does (it trims
// the excess): the bytes beyond are not part of the datagram.
func l4End(pkt []byte, p *Parsed, udp bool) int {
	end := p.End
	if udp {
		if ul := p.L4Off + int(binary.BigEndian.Uint16(pkt[p.L4Off+4:])); ul >= p.L4Off+UDPLen && ul < end {
			end = ul
		}
	}
	return end
}

// rewriteAddrs6 is rewriteAddrs for IPv6 (no header checksum).
func rewriteAddrs6(pkt []byte, p *Parsed, src, dst netip.Addr, full bool) {
	so, do, alen := p.L3Off+8, p.L3Off+24, 16
	var nb [16]byte
	var delta uint64
	if src != p.Src {
		putAddr(nb[:], src)
		delta += addrDelta(pkt[so:so+alen], nb[:alen])
		copy(pkt[so:], nb[:alen])
	}
	if dst != p.Dst {
		putAddr(nb[:], dst)
		delta += addrDelta(pkt[do:do+alen], nb[:alen])
		copy(pkt[do:], nb[:alen])
	}
	if p.Frag == FragLater {
		return
	}
	co := csumOff(p.Proto, p.Version)
	if co < 0 || p.L4Off+co+2 > p.End {
		return // no checksum we maintain, or cut off
	}
	cp := pkt[p.L4Off+co:]
	cs := binary.BigEndian.Uint16(cp)
	udp := p.Proto == ProtoUDP
	if full && p.Frag == FragNone && (udp || p.Proto == ProtoTCP) {
		cp[0], cp[1] = 0, 0
		l4 := pkt[p.L4Off:l4End(pkt, p, udp)]
		cs = Checksum(l4, PseudoHeaderSum(p.Proto, pkt[so:so+alen], pkt[do:do+alen], len(l4)))
	} else {
		cs = applyDelta(cs, delta)
	}
	if udp && cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(cp, cs)
}

// addr4 returns the first 4 bytes putAddr writes for a: the IPv4 address,
// or (a misconfigured IPv6 address in an IPv4 slot) its first 4 bytes, as
// the byte-copying code always did (the zero Addr, never passed, gives 0).
// AsSlice (4 or 16 bytes) inlines and its array stays on the stack. Not
// As16: the compiler copies its result with a 16-byte load that must wait
// for the two 8-byte stores that made it (no store forwarding), measured
// at 13 ns against 5 per conversion in a dependent chain; As4 is as fast
// as AsSlice but too costly to inline.
func addr4(a netip.Addr) uint32 {
	if s := a.AsSlice(); len(s) >= 4 {
		return binary.BigEndian.Uint32(s)
	}
	return 0
}

// icmpChecksum recomputes the checksum of the ICMP message p describes.
func icmpChecksum(pkt []byte, p *Parsed) {
	m := pkt[p.L4Off:p.End]
	m[2], m[3] = 0, 0
	var init uint32
	if p.Version == 6 {
		init = PseudoHeaderSum(ProtoICMPv6, pkt[p.L3Off+8:p.L3Off+24], pkt[p.L3Off+24:p.L3Off+40], len(m))
	}
	binary.BigEndian.PutUint16(m[2:], Checksum(m, init))
}

// quoted decodes the packet quoted by the ICMP error p describes into q.
func quoted(pkt []byte, p *Parsed, q *Parsed) DropReason {
	if r := q.decodeIP(pkt[:p.End], p.L4Off+ICMPMinLen, true, p.Version); r != ReasonNone {
		return ReasonBadEmbedded
	}
	return ReasonNone
}
