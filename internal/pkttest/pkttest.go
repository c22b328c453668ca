// Package pkttest builds well-formed IP packets for tests that put bytes
// on the wire by hand: a peer node's tunnel payload, a forged packet on a
// raw socket. Checksums are valid (fastpath's own functions compute them).
package pkttest

import (
	"encoding/binary"
	"net/netip"

	"github.com/oakwire/oakwire/fastpath"
)

// UDP returns an IPv4 or IPv6 packet (by src's family) carrying one UDP
// datagram from src:sport to dst:dport, TTL/hop limit 64, IPv4 with DF.
func UDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, fastpath.UDPLen+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[fastpath.UDPLen:], payload)
	s, d := src.AsSlice(), dst.AsSlice()
	cs := fastpath.Checksum(u, fastpath.PseudoHeaderSum(fastpath.ProtoUDP, s, d, len(u)))
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], cs)
	return ipHeader(src, dst, fastpath.ProtoUDP, u)
}

// TCP returns an IPv4 or IPv6 packet carrying a TCP segment (ACK|PSH,
// sequence 1, window 65535) from src:sport to dst:dport.
func TCP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	return tcp(src, dst, sport, dport, 0x18, payload)
}

// TCPFlags is TCP with the flags byte given (FIN 0x01, SYN 0x02, RST
// 0x04, PSH 0x08, ACK 0x10).
func TCPFlags(src, dst netip.Addr, sport, dport uint16, flags byte, payload []byte) []byte {
	return tcp(src, dst, sport, dport, flags, payload)
}

func tcp(src, dst netip.Addr, sport, dport uint16, flags byte, payload []byte) []byte {
	const hl = 20
	t := make([]byte, hl+len(payload))
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], 1)
	t[12], t[13] = hl/4<<4, flags
	binary.BigEndian.PutUint16(t[14:], 65535)
	copy(t[hl:], payload)
	s, d := src.AsSlice(), dst.AsSlice()
	binary.BigEndian.PutUint16(t[16:], fastpath.Checksum(t, fastpath.PseudoHeaderSum(fastpath.ProtoTCP, s, d, len(t))))
	return ipHeader(src, dst, fastpath.ProtoTCP, t)
}

func ipHeader(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	s, d := src.AsSlice(), dst.AsSlice()
	if src.Is4() {
		h := make([]byte, fastpath.IPv4MinLen, fastpath.IPv4MinLen+len(l4))
		h[0], h[8], h[9] = 0x45, 64, proto
		binary.BigEndian.PutUint16(h[2:], uint16(fastpath.IPv4MinLen+len(l4)))
		binary.BigEndian.PutUint16(h[6:], 0x4000) // DF
		copy(h[12:], s)
		copy(h[16:], d)
		binary.BigEndian.PutUint16(h[10:], fastpath.IPv4HeaderChecksum(h))
		return append(h, l4...)
	}
	h := make([]byte, fastpath.IPv6Len, fastpath.IPv6Len+len(l4))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6], h[7] = proto, 64
	copy(h[8:], s)
	copy(h[24:], d)
	return append(h, l4...)
}

// Eth prepends an Ethernet header (EtherType from the packet's version).
func Eth(dst, src [6]byte, ip []byte) []byte {
	b := make([]byte, 0, fastpath.EthernetLen+len(ip))
	b = append(append(b, dst[:]...), src[:]...)
	et := uint16(fastpath.EtherTypeIPv4)
	if len(ip) > 0 && ip[0]>>4 == 6 {
		et = fastpath.EtherTypeIPv6
	}
	b = binary.BigEndian.AppendUint16(b, et)
	return append(b, ip...)
}

// Verify checks the IP packet's IPv4 header checksum and its TCP or UDP
// checksum from scratch (an IPv4 UDP checksum of 0 means none). It returns
// a description of the first thing wrong, or "".
func Verify(ip []byte) string {
	var p fastpath.Parsed
	if r := p.DecodeIP(ip, 0); r != fastpath.ReasonNone {
		return "does not parse: " + r.String()
	}
	if p.Version == 4 && fastpath.Checksum(ip[:fastpath.IPv4(ip).HeaderLen()], 0) != 0 {
		return "bad IPv4 header checksum"
	}
	l4 := ip[p.L4Off:p.End]
	var ck int
	switch p.Proto {
	case fastpath.ProtoTCP:
		ck = 16
	case fastpath.ProtoUDP:
		ck = 6
		if p.Version == 4 && binary.BigEndian.Uint16(l4[6:]) == 0 {
			return ""
		}
	default:
		return ""
	}
	if len(l4) < ck+2 {
		return "truncated transport header"
	}
	if fastpath.Checksum(l4, fastpath.PseudoHeaderSum(p.Proto, p.Src.AsSlice(), p.Dst.AsSlice(), len(l4))) != 0 {
		return "bad transport checksum"
	}
	return ""
}
