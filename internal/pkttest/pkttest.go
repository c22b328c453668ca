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
	if src.Is4() {
		h := make([]byte, fastpath.IPv4MinLen, fastpath.IPv4MinLen+len(u))
		h[0], h[8], h[9] = 0x45, 64, fastpath.ProtoUDP
		binary.BigEndian.PutUint16(h[2:], uint16(fastpath.IPv4MinLen+len(u)))
		binary.BigEndian.PutUint16(h[6:], 0x4000) // DF
		copy(h[12:], s)
		copy(h[16:], d)
		binary.BigEndian.PutUint16(h[10:], fastpath.IPv4HeaderChecksum(h))
		return append(h, u...)
	}
	h := make([]byte, fastpath.IPv6Len, fastpath.IPv6Len+len(u))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(u)))
	h[6], h[7] = fastpath.ProtoUDP, 64
	copy(h[8:], s)
	copy(h[24:], d)
	return append(h, u...)
}
