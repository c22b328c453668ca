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
	// Sum the bytes as little-endian 64-bit words with end-around carry
	// and swap the two bytes of the folded result: summing byte-swapped
	// 16-bit words yields the byte-swapped sum (RFC 1071 §2(B), "byte
	// order independence"), and 2^64 ≡ 2^32 ≡ 2^16 ≡ 1 (mod 0xffff)
	// ("parallel summation"). Little-endian loads need no byte swaps on
	// the usual hosts. initial (a big-endian sum) enters multiplied by
	// 2^8, which is what swapping its bytes is modulo 0xffff.
	acc, carry := uint64(initial)<<8, uint64(0)
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[8:]), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[16:]), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[24:]), carry)
		b = b[32:]
	}
	acc, carry = bits.Add64(acc, 0, carry)
	acc += carry // cannot carry again: acc ≤ 2^64-2 after adding one
	// The rest (under 32 bytes: all of a small packet) goes in as 32-bit
	// words (2^32 ≡ 1 as well) added into t, plain integer additions that
	// cannot overflow (at most 8 of them): no carry from word to word, one
	// step per bit of the remaining length.
	var t uint64
	if len(b) >= 16 {
		t = uint64(binary.LittleEndian.Uint32(b)) + uint64(binary.LittleEndian.Uint32(b[4:])) +
			uint64(binary.LittleEndian.Uint32(b[8:])) + uint64(binary.LittleEndian.Uint32(b[12:]))
		b = b[16:]
	}
	if len(b) >= 8 {
		t += uint64(binary.LittleEndian.Uint32(b)) + uint64(binary.LittleEndian.Uint32(b[4:]))
		b = b[8:]
	}
	if len(b) >= 4 {
		t += uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		t += uint64(binary.LittleEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		t += uint64(b[0]) // the padded word's low byte, little-endian
	}
	// Every sum here is 0 only if all that went in was 0, and an
	// end-around fold turns any other sum into the one value in 1..0xffff
	// congruent to it; a byte swap keeps 0, 0xffff and congruence (it
	// multiplies by 2^8): the result is bit for bit that of adding
	// big-endian 16-bit words one by one.
	acc, carry = bits.Add64(acc, t, 0)
	return bits.RotateLeft16(fold64(acc+carry), 8) // acc < t < 2^35 when carry is set
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

// pseudoSum4 is PseudoHeaderSum for IPv4 addresses given as words, only
// partly folded: a value below 2^32 congruent to it modulo 0xffff and, like
// it, 0 only when every field is. As the initial sum of Sum or Checksum it
// gives the same result, which depends on the initial value only through
// that congruence and whether it is 0.
func pseudoSum4(src, dst uint32, proto uint8, l4len int) uint32 {
	s := uint64(src) + uint64(dst) + uint64(proto) + uint64(l4len>>16) + uint64(l4len&0xffff)
	return uint32(s>>16 + s&0xffff) // s < 2^34: the sum stays below 2^19
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

// addrDelta4 is addrDelta of two IPv4 addresses taken as 32-bit words:
// ^old + new instead of the sum over their 16-bit words. The two differ
// as integers but not in what applyDelta4 makes of them: they are
// congruent modulo 0xffff (2^16 ≡ 1), and both are 0 exactly when old is
// 0xffffffff and new is 0 (every term of either sum is non-negative).
// Since an end-around fold maps a sum to 0 only when it is 0, and
// otherwise to the one value in 1..0xffff congruent to it, ^hc + delta
// folds to the same checksum either way, -0 and +0 included.
func addrDelta4(old, new uint32) uint64 { return uint64(^old) + uint64(new) }

// applyDelta4 is applyDelta for a sum of at most two addrDelta4 terms
// (each below 2^33): ^hc + delta is below 2^35, and three 16-bit folds
// bring that to 16 bits (below 2^20, then at most 0x1000e, then 0xffff).
func applyDelta4(hc uint16, delta uint64) uint16 {
	s := uint64(^hc) + delta
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return ^uint16(s)
}

// fold32 is fold64 for a sum that fits 32 bits: two 16-bit folds suffice
// (the first leaves at most 0x1fffe, the second at most 0xffff).
func fold32(s uint32) uint16 {
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return uint16(s)
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
