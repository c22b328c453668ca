package fastpath

import (
	"encoding/binary"
	"net/netip"
)

// The tunnel's outer headers: Ethernet, IPv4 or IPv6, and UDP in front of
// the inner packet.

func writeEth(b []byte, dst, src *[6]byte, version uint8) {
	// Array stores, not copy(): no temporaries and no overlap checks.
	e := (*[EthernetLen]byte)(b)
	*(*[6]byte)(e[0:6]) = *dst
	*(*[6]byte)(e[6:12]) = *src
	if version == 4 {
		binary.BigEndian.PutUint16(e[12:], EtherTypeIPv4)
	} else {
		binary.BigEndian.PutUint16(e[12:], EtherTypeIPv6)
	}
}

// TunnelSourcePort maps a flow hash to the outer UDP source port (the
// ephemeral range 49152–65535, RFC 6335).
func TunnelSourcePort(hash uint32) uint16 { return 49152 | uint16(hash&0x3fff) }

// encap writes Ethernet + outer IP + UDP headers at the start of b, in
// front of the inner packet that fills the rest of b. Outer IPv4: DF set,
// TTL 64, ID 0 (RFC 6864 allows any ID on atomic datagrams), UDP checksum
// 0 (RFC 768). Outer IPv6: hop limit 64, flow label from the hash, UDP
// checksum computed (RFC 8200 §8.1; RFC 6935's zero-checksum exception is
// not used).
func encap(b []byte, t *Table, inst *Instance, hash uint32) {
	ipo := EthernetLen
	if t.node4 {
		// The constant bytes come from the instance's template; only the
		// lengths, the header checksum and the source port vary.
		h := (*[EthernetLen + outerOverhead4]byte)(b)
		*h = inst.outer4
		ipLen := len(b) - ipo
		binary.BigEndian.PutUint16(h[ipo+2:], uint16(ipLen))
		binary.BigEndian.PutUint16(h[ipo+10:], ^fold32(inst.outerSum+uint32(ipLen)))
		binary.BigEndian.PutUint16(h[ipo+IPv4MinLen:], TunnelSourcePort(hash))
		binary.BigEndian.PutUint16(h[ipo+IPv4MinLen+4:], uint16(ipLen-IPv4MinLen))
		return
	}
	writeEth(b, &inst.nodeMAC, &t.Node.UplinkMAC, 6)
	h := b[ipo : ipo+IPv6Len]
	binary.BigEndian.PutUint32(h[0:], 6<<28|hash&0xfffff)
	binary.BigEndian.PutUint16(h[4:], uint16(len(b)-ipo-IPv6Len))
	h[6], h[7] = ProtoUDP, 64
	putAddr(h[8:], t.Node.Addr.Addr())
	putAddr(h[24:], inst.Node.Addr())
	udp := b[ipo+IPv6Len:]
	binary.BigEndian.PutUint16(udp[0:], TunnelSourcePort(hash))
	binary.BigEndian.PutUint16(udp[2:], inst.Node.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	udp[6], udp[7] = 0, 0
	cs := Checksum(udp, PseudoHeaderSum(ProtoUDP, h[8:24], h[24:40], len(udp)))
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], cs)
}

// outerHeader4 returns the Ethernet, outer IPv4 and UDP headers encap
// sends from node to peer over an IPv4 underlay, with the fields that vary
// per packet (lengths, header checksum, UDP source port) zero: Build
// keeps one per remote instance (Instance.outer4). Outer IPv4: DF set, TTL
// 64, ID 0; UDP checksum 0.
func outerHeader4(dstMAC, srcMAC [6]byte, node, peer netip.AddrPort) (h [EthernetLen + outerOverhead4]byte) {
	writeEth(h[:], &dstMAC, &srcMAC, 4)
	ip := h[EthernetLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint32(ip[4:], ipv4FlagDF) // ID 0, DF
	ip[8], ip[9] = 64, ProtoUDP
	putAddr(ip[12:], node.Addr())
	putAddr(ip[16:], peer.Addr())
	binary.BigEndian.PutUint16(ip[IPv4MinLen+2:], peer.Port())
	return h
}
