package fastpath

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// Internet checksum helpers (RFC 1071, RFC 1624).
//
// A "sum" (uint32/uint64) is the unfolded one's complement sum of 16-bit
// big-endian words; a "checksum" is the folded, complemented 16-bit value
// stored in a header.

// Sum returns the one's complement sum of b (odd length padded with a zero
// byte) added to initial, folded to 16 bits but not complemented.
func Sum(b []byte, initial uint32) uint16 {
	// Sum 64-bit big-endian words with end-around carry: the result is
	// congruent to the 16-bit one's complement sum because
	// 2^64 ≡ 2^32 ≡ 2^16 ≡ 1 (mod 0xffff) (RFC 1071 §2(B), "byte order
	// independence" and "parallel summation").
	acc, carry := uint64(initial), uint64(0)
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[8:]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[16:]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[24:]), carry)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b), carry)
		b = b[8:]
	}
	var tail uint64
	if len(b) >= 4 {
		tail = uint64(binary.BigEndian.Uint32(b)) << 32
		b = b[4:]
	}
	if len(b) >= 2 {
		tail |= uint64(binary.BigEndian.Uint16(b)) << 16
		b = b[2:]
	}
	if len(b) == 1 {
		tail |= uint64(b[0]) << 8
	}
	acc, carry = bits.Add64(acc, tail, carry)
	acc, carry = bits.Add64(acc, 0, carry)
	acc += carry // cannot carry again: acc ≤ 2^64-2 after adding one
	return fold64(acc)
}

func fold64(acc uint64) uint16 {
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return uint16(acc)
}

// Checksum returns the Internet checksum of b with an initial sum: the value
// to store in a header whose checksum field was zero while summing.
func Checksum(b []byte, initial uint32) uint16 { return ^Sum(b, initial) }

// PseudoHeaderSum returns the sum of the IPv4 or IPv6 pseudo-header (RFC 768,
// RFC 8200 §8.1) for an upper-layer packet of length l4len. src and dst are
// 4 or 16 bytes.
func PseudoHeaderSum(proto uint8, src, dst []byte, l4len int) uint32 {
	var s uint64
	if len(src) == 4 && len(dst) == 4 {
		s = uint64(binary.BigEndian.Uint32(src)) + uint64(binary.BigEndian.Uint32(dst))
	} else {
		s = uint64(Sum(src, 0)) + uint64(Sum(dst, 0))
	}
	s += uint64(proto) + uint64(l4len>>16) + uint64(l4len&0xffff)
	return uint32(fold64(s))
}

// IPv4HeaderChecksum computes the header checksum of hdr with its checksum
// field treated as zero.
func IPv4HeaderChecksum(hdr []byte) uint16 {
	s := uint32(Sum(hdr[:10], 0)) + uint32(Sum(hdr[12:], 0))
	return ^fold64(uint64(s))
}

// UpdateChecksum16 returns checksum hc after a 16-bit word changed from old
// to new: RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m').
func UpdateChecksum16(hc, old, new uint16) uint16 {
	return ^fold64(uint64(^hc) + uint64(^old) + uint64(new))
}

// UpdateChecksum32 is UpdateChecksum16 for an aligned 32-bit field.
func UpdateChecksum32(hc uint16, old, new uint32) uint16 {
	s := uint64(^hc) + uint64(^uint16(old>>16)) + uint64(^uint16(old)) + uint64(uint16(new>>16)) + uint64(uint16(new))
	return ^fold64(s)
}

// addrDelta returns the RFC 1624 difference sum (~m + m' over all words)
// of replacing old by new (both 4 or both 16 bytes).
func addrDelta(old, new []byte) uint64 {
	var s uint64
	for i := 0; i+1 < len(old); i += 2 {
		s += uint64(^binary.BigEndian.Uint16(old[i:])) + uint64(binary.BigEndian.Uint16(new[i:]))
	}
	return s
}

// applyDelta returns checksum hc adjusted by a difference sum.
func applyDelta(hc uint16, delta uint64) uint16 {
	return ^fold64(uint64(^hc) + delta)
}

// UpdateChecksumAddr returns checksum hc after an address (IPv4 or IPv6,
// same family) covered by it changed from old to new.
func UpdateChecksumAddr(hc uint16, old, new netip.Addr) uint16 {
	if old.Is4() {
		o, n := old.As4(), new.As4()
		return applyDelta(hc, addrDelta(o[:], n[:]))
	}
	o, n := old.As16(), new.As16()
	return applyDelta(hc, addrDelta(o[:], n[:]))
}
