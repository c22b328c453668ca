package bpfprog

import (
	"encoding/binary"
	"net/netip"
)

// Test frame builders: just enough wire format for the steering programs.
// Checksums are left zero; the programs never look at them.

var (
	macA = []byte{0x02, 0, 0, 0, 0, 0xa}
	macB = []byte{0x02, 0, 0, 0, 0, 0xb}
)

type frame struct {
	vlan  bool       // insert one 802.1Q tag
	etype uint16     // EtherType after the tag (0: from src family)
	src   netip.Addr // IP source
	dst   netip.Addr // IP destination
	proto byte       // IP protocol (0: UDP)
	sport uint16
	dport uint16
	ihl   int    // IPv4 header words (0: 5)
	frag  uint16 // IPv4 frag_off field
	trunc int    // cut this many bytes off the end
	raw   []byte // if set, the payload after Ethernet (+VLAN) instead of IP
}

func (f frame) bytes() []byte {
	b := append(append([]byte{}, macA...), macB...)
	etype := f.etype
	if etype == 0 && f.raw == nil {
		etype = 0x0800
		if f.src.Is6() {
			etype = 0x86dd
		}
	}
	if f.vlan {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, 42)
	}
	b = binary.BigEndian.AppendUint16(b, etype)
	if f.raw != nil {
		b = append(b, f.raw...)
		return b[:len(b)-f.trunc]
	}
	proto := f.proto
	if proto == 0 {
		proto = 17
	}
	l4 := make([]byte, 8+16) // UDP-sized header (also stands in for TCP) + payload
	binary.BigEndian.PutUint16(l4[0:], f.sport)
	binary.BigEndian.PutUint16(l4[2:], f.dport)
	binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	if f.src.Is4() {
		ihl := f.ihl
		if ihl == 0 {
			ihl = 5
		}
		h := make([]byte, max(ihl, 5)*4) // ihl < 5 is a lie in the header only
		h[0] = 0x40 | byte(ihl)
		binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(l4)))
		binary.BigEndian.PutUint16(h[6:], f.frag)
		h[8] = 64
		h[9] = proto
		s, d := f.src.As4(), f.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		b = append(append(b, h...), l4...)
	} else {
		h := make([]byte, 40)
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
		h[6] = proto
		h[7] = 64
		s, d := f.src.As16(), f.dst.As16()
		copy(h[8:], s[:])
		copy(h[24:], d[:])
		b = append(append(b, h...), l4...)
	}
	return b[:len(b)-f.trunc]
}

// arp is an ARP request payload (after the EtherType).
var arp = []byte{
	0, 1, 8, 0, 6, 4, 0, 1,
	0x02, 0, 0, 0, 0, 0xb, 10, 18, 0, 2,
	0, 0, 0, 0, 0, 0, 10, 18, 0, 1,
}
