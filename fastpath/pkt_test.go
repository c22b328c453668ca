package fastpath

import (
	"encoding/binary"
	"net/netip"
)

// A small, deliberately naive packet builder for tests. It shares no code
// with the package: checksums are computed by refChecksum, a word-by-word
// loop over the concatenated bytes.

func refChecksum(parts ...[]byte) uint16 {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	if len(b)%2 == 1 {
		b = append(b, 0)
	}
	var s uint32
	for i := 0; i < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func addrBytes(a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return b[:]
	}
	b := a.As16()
	return b[:]
}

func pseudo(src, dst netip.Addr, proto uint8, n int) []byte {
	var b []byte
	b = append(b, addrBytes(src)...)
	b = append(b, addrBytes(dst)...)
	if src.Is4() {
		return append(b, 0, proto, byte(n>>8), byte(n))
	}
	return append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n), 0, 0, 0, proto)
}

var (
	a4  = netip.MustParseAddr
	be  = binary.BigEndian
	pay = []byte("hello, oakwire!!") // 16 bytes
)

func u16(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }

// mkUDP returns a UDP header + payload with a full checksum.
func mkUDP(src, dst netip.Addr, sp, dp uint16, p []byte) []byte {
	b := append(append(append(append(u16(sp), u16(dp)...), u16(uint16(8+len(p)))...), 0, 0), p...)
	c := refChecksum(pseudo(src, dst, ProtoUDP, len(b)), b)
	if c == 0 {
		c = 0xffff
	}
	be.PutUint16(b[6:], c)
	return b
}

// mkTCP returns a 20-byte TCP header (ACK|PSH) + payload with a full checksum.
func mkTCP(src, dst netip.Addr, sp, dp uint16, p []byte) []byte {
	b := make([]byte, 20, 20+len(p))
	be.PutUint16(b[0:], sp)
	be.PutUint16(b[2:], dp)
	be.PutUint32(b[4:], 1000)
	be.PutUint32(b[8:], 2000)
	b[12] = 5 << 4
	b[13] = 0x18
	be.PutUint16(b[14:], 65535)
	b = append(b, p...)
	be.PutUint16(b[16:], refChecksum(pseudo(src, dst, ProtoTCP, len(b)), b))
	return b
}

// mkICMP returns an ICMP (v4: no pseudo-header) or ICMPv6 message.
func mkICMP(src, dst netip.Addr, typ, code uint8, rest uint32, p []byte) []byte {
	b := []byte{typ, code, 0, 0, byte(rest >> 24), byte(rest >> 16), byte(rest >> 8), byte(rest)}
	b = append(b, p...)
	if src.Is4() {
		be.PutUint16(b[2:], refChecksum(b))
	} else {
		be.PutUint16(b[2:], refChecksum(pseudo(src, dst, ProtoICMPv6, len(b)), b))
	}
	return b
}

type ipo struct {
	ID      uint32
	DF, MF  bool
	FragOff int // bytes
	Frag6   bool
	TTL     uint8
	FlowLbl uint32
}

// mkIP wraps an upper-layer payload in an IPv4 or IPv6 header.
func mkIP(src, dst netip.Addr, proto uint8, l4 []byte, o ipo) []byte {
	ttl := o.TTL
	if ttl == 0 {
		ttl = 64
	}
	if src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		be.PutUint16(h[2:], uint16(20+len(l4)))
		be.PutUint16(h[4:], uint16(o.ID))
		ff := uint16(o.FragOff / 8)
		if o.DF {
			ff |= 0x4000
		}
		if o.MF {
			ff |= 0x2000
		}
		be.PutUint16(h[6:], ff)
		h[8], h[9] = ttl, proto
		copy(h[12:], addrBytes(src))
		copy(h[16:], addrBytes(dst))
		be.PutUint16(h[10:], refChecksum(h))
		return append(h, l4...)
	}
	h := make([]byte, 40)
	be.PutUint32(h, 6<<28|o.FlowLbl)
	h[6], h[7] = proto, ttl
	copy(h[8:], addrBytes(src))
	copy(h[24:], addrBytes(dst))
	if o.Frag6 {
		h[6] = protoFragment
		fh := make([]byte, 8)
		fh[0] = proto
		fo := uint16(o.FragOff)
		if o.MF {
			fo |= 1
		}
		be.PutUint16(fh[2:], fo)
		be.PutUint32(fh[4:], o.ID)
		h = append(h, fh...)
	}
	be.PutUint16(h[4:], uint16(len(h)-40+len(l4)))
	return append(h, l4...)
}

type mac = [6]byte

func mkEth(dst, src mac, ip []byte) []byte {
	b := append(append([]byte{}, dst[:]...), src[:]...)
	if len(ip) > 0 && ip[0]>>4 == 4 {
		b = append(b, 0x08, 0x00)
	} else {
		b = append(b, 0x86, 0xdd)
	}
	return append(b, ip...)
}

// mkOuter encapsulates an inner IP packet the way a peer does.
func mkOuter(dstMAC, srcMAC mac, from, to netip.Addr, sport, dport uint16, inner []byte, flowLbl uint32) []byte {
	udp := append(append(append(append(u16(sport), u16(dport)...), u16(uint16(8+len(inner)))...), 0, 0), inner...)
	if !from.Is4() {
		be.PutUint16(udp[6:], refChecksum(pseudo(from, to, ProtoUDP, len(udp)), udp))
	}
	return mkEth(dstMAC, srcMAC, mkIP(from, to, ProtoUDP, udp, ipo{DF: from.Is4(), FlowLbl: flowLbl}))
}

// inFrame puts b at offset 256 of a fresh 4 KiB frame.
func inFrame(b []byte) Frame {
	buf := make([]byte, 4096)
	copy(buf[256:], b)
	return Frame{Buf: buf, Off: 256, Len: len(b)}
}

var netipAddrPortZero netip.AddrPort
