package fastpath

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// The IPv4 fast path's checksum shortcuts must give the very bits of the
// generic code, one's complement -0 (0xffff) and +0 included: golden
// frames compare exact bytes.

func TestApplyDelta4MatchesAddrDelta(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 1624))
	edge := []uint32{0, 1, 0xffff, 0x10000, 0xfffeffff, 0xffff0000, 0xfffffffe, 0xffffffff}
	pick := func() uint32 {
		if rng.IntN(2) == 0 {
			return edge[rng.IntN(len(edge))]
		}
		return rng.Uint32()
	}
	words := func(o, n uint32) uint64 {
		var ob, nb [4]byte
		binary.BigEndian.PutUint32(ob[:], o)
		binary.BigEndian.PutUint32(nb[:], n)
		return addrDelta(ob[:], nb[:])
	}
	hcs := []uint16{0, 1, 0x7fff, 0xfffe, 0xffff}
	for i := range 200000 {
		hc := uint16(rng.Uint32())
		if i%2 == 0 {
			hc = hcs[rng.IntN(len(hcs))]
		}
		o1, n1, o2, n2 := pick(), pick(), pick(), pick()
		if got, want := applyDelta4(hc, addrDelta4(o1, n1)), applyDelta(hc, words(o1, n1)); got != want {
			t.Fatalf("hc %04x %08x→%08x: %04x, want %04x", hc, o1, n1, got, want)
		}
		got := applyDelta4(hc, addrDelta4(o1, n1)+addrDelta4(o2, n2))
		if want := applyDelta(hc, words(o1, n1)+words(o2, n2)); got != want {
			t.Fatalf("hc %04x %08x→%08x %08x→%08x: %04x, want %04x", hc, o1, n1, o2, n2, got, want)
		}
	}
	for _, hc := range hcs {
		if got, want := applyDelta4(hc, 0), applyDelta(hc, 0); got != want {
			t.Fatalf("hc %04x, no change: %04x, want %04x", hc, got, want)
		}
	}
	// Sums whose folds carry (words near 0xffff) anywhere in the range
	// of two addrDelta4 terms: with hc 0xffff the sum is the delta itself.
	for a := uint64(0); a < 4; a++ {
		for b := uint64(0xffe0); b <= 0xffff; b++ {
			for c := uint64(0xffe0); c <= 0x1001f; c++ {
				d := a<<32 | b<<16 + c
				if got, want := applyDelta4(0xffff, d), applyDelta(0xffff, d); got != want {
					t.Fatalf("delta %#x: %04x, want %04x", d, got, want)
				}
			}
		}
	}
}

func TestFold32(t *testing.T) {
	rng := rand.New(rand.NewPCG(32, 16))
	for _, s := range []uint32{0, 1, 0xffff, 0x10000, 0x1fffe, 0xfffeffff, 0xffff0000, 0xffffffff} {
		if got, want := fold32(s), fold64(uint64(s)); got != want {
			t.Fatalf("fold32(%#x) = %#x, want %#x", s, got, want)
		}
	}
	for range 100000 {
		s := rng.Uint32()
		if got, want := fold32(s), fold64(uint64(s)); got != want {
			t.Fatalf("fold32(%#x) = %#x, want %#x", s, got, want)
		}
	}
}

// TestSumMatchesWordSum checks Sum against the definition: initial plus
// the big-endian 16-bit words (odd length padded), folded end-around: 0
// only for a zero sum, else the value in 1..0xffff congruent modulo 0xffff.
func TestSumMatchesWordSum(t *testing.T) {
	rng := rand.New(rand.NewPCG(1071, 1))
	want := func(b []byte, initial uint32) uint16 {
		s := uint64(initial)
		for i := 0; i < len(b); i += 2 {
			w := uint64(b[i]) << 8
			if i+1 < len(b) {
				w |= uint64(b[i+1])
			}
			s += w
		}
		if s == 0 {
			return 0
		}
		return uint16((s-1)%0xffff + 1)
	}
	buf := make([]byte, 200)
	inits := []uint32{0, 1, 0xfffe, 0xffff, 0x10000, 0xffffffff}
	for i := range 20000 {
		b := buf[rng.IntN(8):][:rng.IntN(190)] // any alignment and length
		switch i % 4 {
		case 0:
			clear(b)
		case 1:
			for j := range b {
				b[j] = 0xff
			}
		default:
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
		}
		initial := rng.Uint32()
		if i%3 == 0 {
			initial = inits[rng.IntN(len(inits))]
		}
		if got, w := Sum(b, initial), want(b, initial); got != w {
			t.Fatalf("Sum(% x, %#x) = %#04x, want %#04x", b, initial, got, w)
		}
	}
}

func TestPseudoSum4(t *testing.T) {
	rng := rand.New(rand.NewPCG(768, 793))
	data := make([]byte, 64)
	for i := range 100000 {
		var src, dst [4]byte
		binary.BigEndian.PutUint32(src[:], rng.Uint32())
		binary.BigEndian.PutUint32(dst[:], rng.Uint32())
		proto, n := uint8(rng.Uint32()), rng.IntN(70000)
		b := data[:rng.IntN(len(data))]
		switch i % 3 {
		case 0:
			src, dst, proto, n = [4]byte{}, [4]byte{}, 0, 0
			clear(b)
		case 1:
			src, dst = [4]byte{0xff, 0xff, 0xff, 0xff}, [4]byte{0xff, 0xff, 0xff, 0xff}
		}
		for j := range b {
			if i%3 != 0 {
				b[j] = byte(rng.Uint32())
			}
		}
		want := Checksum(b, PseudoHeaderSum(proto, src[:], dst[:], n))
		if got := Checksum(b, pseudoSum4(binary.BigEndian.Uint32(src[:]), binary.BigEndian.Uint32(dst[:]), proto, n)); got != want {
			t.Fatalf("%v %v %d %d: %#04x, want %#04x", src, dst, proto, n, got, want)
		}
	}
}
