package fastpath

import (
	"encoding/binary"
	"net/netip"
)

// FlowKey is a packed 5-tuple: word 0 holds protocol, family and ports,
// words 1–2 the source address, 3–4 the destination (IPv4 in the first 4
// bytes). For ICMP echo both ports are the echo identifier.
type FlowKey [5]uint64

// MakeFlowKey packs a 5-tuple. src and dst must be of the same family.
func MakeFlowKey(proto uint8, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) FlowKey {
	var k FlowKey
	fam := uint64(6)
	if src.Is4() {
		fam = 4
		s, d := src.As4(), dst.As4()
		k[1] = uint64(binary.BigEndian.Uint32(s[:])) << 32
		k[3] = uint64(binary.BigEndian.Uint32(d[:])) << 32
	} else {
		s, d := src.As16(), dst.As16()
		k[1], k[2] = binary.BigEndian.Uint64(s[:8]), binary.BigEndian.Uint64(s[8:])
		k[3], k[4] = binary.BigEndian.Uint64(d[:8]), binary.BigEndian.Uint64(d[8:])
	}
	k[0] = uint64(proto) | fam<<8 | uint64(sport)<<16 | uint64(dport)<<32
	return k
}

// flowKeyOf packs the 5-tuple of the packet p describes straight from its
// bytes (the same key MakeFlowKey builds from p's fields).
func flowKeyOf(pkt []byte, p *Parsed) FlowKey {
	var k FlowKey
	k.setOf(pkt, p)
	return k
}

// setOf sets k to flowKeyOf(pkt, p) in place: the packet path keeps its
// keys in locals, and a returned key would be copied into them with
// 16-byte moves that must wait for the 8-byte stores that built it (no
// store forwarding across two stores).
func (k *FlowKey) setOf(pkt []byte, p *Parsed) {
	w0 := uint64(p.Proto) | uint64(p.SrcPort)<<16 | uint64(p.DstPort)<<32
	// Decode checked the fixed header, so one length check (the array
	// conversion) covers the address loads.
	if p.Version == 4 {
		h := (*[IPv4MinLen]byte)(pkt[p.L3Off:])
		*k = FlowKey{w0 | 4<<8, uint64(binary.BigEndian.Uint32(h[12:])) << 32, 0, uint64(binary.BigEndian.Uint32(h[16:])) << 32, 0}
		return
	}
	h := (*[IPv6Len]byte)(pkt[p.L3Off:])
	*k = FlowKey{w0 | 6<<8, binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint64(h[16:]), binary.BigEndian.Uint64(h[24:]), binary.BigEndian.Uint64(h[32:])}
}

// reverse returns the key of the same 5-tuple in the other direction.
func (k *FlowKey) reverse() FlowKey {
	w0 := k[0]&0xffff | (w0Port(k[0], 32) << 16) | (w0Port(k[0], 16) << 32)
	return FlowKey{w0, k[3], k[4], k[1], k[2]}
}

func w0Port(w0 uint64, shift uint) uint64 { return (w0 >> shift) & 0xffff }

// Dst returns the key's destination address.
func (k *FlowKey) Dst() netip.Addr { return keyAddr(k[0], k[3], k[4]) }

func keyAddr(w0, hi, lo uint64) netip.Addr {
	if (w0>>8)&0xff == 4 {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(hi>>32))
		return netip.AddrFrom4(a)
	}
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], hi)
	binary.BigEndian.PutUint64(a[8:], lo)
	return netip.AddrFrom16(a)
}

// Hash is the flow hash. It is deterministic (the same on every node and
// across restarts) because it picks the tunnel UDP source port and the
// IPv6 flow label, which peers' RSS spreads on, and a flow must keep its
// outer 5-tuple (the fragment cache stores it for later fragments). Being
// unseeded, anyone who picks ports can compute it, so it does not choose
// FlowTable buckets: those use the table's seeded bucket function.
func (k *FlowKey) Hash() uint32 {
	// Five independent multiplies (they pipeline), then a finalizer.
	h := k[0]*0x9E3779B97F4A7C15 + k[1]*0xbf58476d1ce4e5b9 + k[2]*0x94d049bb133111eb +
		k[3]*0xff51afd7ed558ccd + k[4]*0xc4ceb9fe1a85ec53
	h ^= h >> 31
	h *= 0xd6e8feb86659fd93
	h ^= h >> 32
	return uint32(h)
}
