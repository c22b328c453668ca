package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// Fuzz targets. Run one with, e.g.:
//
//	go test -run='^$' -fuzz=FuzzEgress -fuzztime=10s ./fastpath/
//
// Seeds are the golden frames (f.Add) plus testdata/fuzz when present.

func seedFrames() [][]byte {
	big := make([]byte, 100)
	var s [][]byte
	for _, ip := range [][]byte{
		udpPkt(cli4, svcR4, 40000, 53, ipo{DF: true}),
		udpPkt(cli6, svcR6, 40000, 53, ipo{}),
		tcpPkt(cli4, svcL4, 1, 80),
		tcpPkt(cli6, svcL6, 1, 80),
		echoPkt(cli4, svcR4, false, 3),
		echoPkt(cli6, svcR6, false, 3),
		udpPkt(cli4, srvRI4, 1, 2, ipo{}),
		mkIP(cli4, svcR4, ProtoICMP, mkICMP(cli4, svcR4, 3, 3, 0, udpPkt(svcR4, cli4, 1, 2, ipo{})), ipo{}),
		mkIP(cli6, srvRI6, ProtoICMPv6, mkICMP(cli6, srvRI6, 1, 4, 0, udpPkt(srvRI6, cli6, 1, 2, ipo{})), ipo{}),
		fragments(cli4, svcR4, ProtoUDP, mkUDP(cli4, svcR4, 1, 2, big), 7, 64)[0],
		fragments(cli6, svcR6, ProtoUDP, mkUDP(cli6, svcR6, 1, 2, big), 7, 64)[1],
	} {
		s = append(s, fromCli(ip))
	}
	return s
}

func FuzzDecode(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Parsed
		if r := p.Decode(b); r == ReasonNone {
			if p.L3Off > p.L4Off || p.L4Off > p.End || p.End > len(b) {
				t.Fatalf("offsets %d %d %d len %d", p.L3Off, p.L4Off, p.End, len(b))
			}
		}
		_ = p.DecodeIP(b, 0)
		var q Parsed
		_ = q.decodeIP(b, 0, true, 0)
		if q.End > len(b) || q.L4Off > len(b) {
			t.Fatalf("quoted offsets beyond input")
		}
	})
}

// fuzzFrame places b in a frame with headroom; the frame is larger than
// the packet so writes beyond Len but inside Buf are allowed, writes
// outside Buf would panic.
func fuzzProc(t *testing.T) (*Processor, *WorkerCtx) {
	b := testBuilder(nodeA)
	b.Node.UnderlayMTU = 700 // make too-big reachable with small inputs
	tb, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	var h TableHolder
	h.Swap(tb)
	ctx := NewWorkerCtx()
	return NewProcessor(&h, NewFlowTable(FlowConfig{Capacity: 64})), ctx
}

func checkVerdict(t *testing.T, f Frame, v Verdict) {
	if v.Action >= numActions || v.Reason >= NumReasons {
		t.Fatalf("verdict %+v", v)
	}
	if v.Off < 0 || v.Len < 0 || v.Off+v.Len > len(f.Buf) {
		t.Fatalf("verdict range %d+%d outside %d", v.Off, v.Len, len(f.Buf))
	}
	if v.Action == ActTxPort || v.Action == ActTxUplink {
		var p Parsed
		if r := p.Decode(f.Buf[v.Off : v.Off+v.Len]); r != ReasonNone {
			t.Fatalf("emitted a frame that does not parse: %v", r)
		}
	}
}

func FuzzEgress(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s, uint8(0))
		f.Add(s[14:], uint8(1))
	}
	f.Fuzz(func(t *testing.T, b []byte, mode uint8) {
		p, ctx := fuzzProc(t)
		if mode&1 != 0 {
			b = fromCli(b) // raw IP behind a valid Ethernet header
		}
		for _, port := range []PortID{1, 2} {
			fr := Frame{Buf: make([]byte, 256+len(b)+64), Off: 256, Len: len(b)}
			if mode&2 != 0 {
				fr.Off = int(mode) % 64 // little headroom
				fr.Buf = fr.Buf[:fr.Off+len(b)]
			}
			copy(fr.Buf[fr.Off:], b)
			var v [1]Verdict
			p.Egress(ctx, port, []Frame{fr}, v[:])
			checkVerdict(t, fr, v[0])
		}
	})
}

func FuzzIngress(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(fromB(s[14:]), uint8(0))
		f.Add(s[14:], uint8(1))
	}
	f.Add(fromB(mkIP(srvRI4, cli4, ProtoICMP, mkICMP(srvRI4, cli4, 3, 3, 0, udpPkt(cli4, srvRI4, 40000, 53, ipo{})), ipo{})), uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, mode uint8) {
		p, ctx := fuzzProc(t)
		// Open a flow so replies and errors can match.
		fr := inFrame(fromCli(udpPkt(cli4, svcR4, 40000, 53, ipo{})))
		var v [1]Verdict
		p.Egress(ctx, 1, []Frame{fr}, v[:])
		if mode&1 != 0 {
			b = fromB(b) // arbitrary inner packet in a valid tunnel datagram
		}
		fr = Frame{Buf: make([]byte, 256+len(b)), Off: 256, Len: len(b)}
		copy(fr.Buf[256:], b)
		p.Ingress(ctx, []Frame{fr}, v[:])
		checkVerdict(t, fr, v[0])
	})
}

// FuzzChecksum: every incremental update equals a full recomputation.
// The checksummed bytes start with a nonzero word, as every real header
// does (RFC 1624 §3: the two zeros of one's complement differ only for
// all-zero data).
func FuzzChecksum(f *testing.F) {
	f.Add([]byte("\x45\x00\x00\x1c\x00\x00\x40\x00\x40\x11"), uint16(2), []byte{1, 2, 3, 4})
	f.Add(bytes.Repeat([]byte{0xff}, 40), uint16(8), make([]byte, 16))
	f.Add([]byte{1, 0}, uint16(0), []byte{0xfe, 0xff})
	f.Fuzz(func(t *testing.T, data []byte, off uint16, repl []byte) {
		b := append([]byte{0x45, 0x00}, data...)
		if len(b)%2 == 1 {
			b = append(b, 0)
		}
		o := 2 + int(off)&^1
		for _, n := range []int{2, 4, 16} {
			if len(repl) < n || o+n > len(b) {
				continue
			}
			c := append([]byte(nil), b...)
			old := Checksum(c, 0)
			var got uint16
			switch n {
			case 2:
				got = UpdateChecksum16(old, binary.BigEndian.Uint16(c[o:]), binary.BigEndian.Uint16(repl))
			case 4:
				got = UpdateChecksum32(old, binary.BigEndian.Uint32(c[o:]), binary.BigEndian.Uint32(repl))
				g2 := UpdateChecksumAddr(old, netip.AddrFrom4([4]byte(c[o:])), netip.AddrFrom4([4]byte(repl)))
				if g2 != got {
					t.Fatalf("addr4 update %04x != 32-bit update %04x", g2, got)
				}
			case 16:
				got = UpdateChecksumAddr(old, netip.AddrFrom16([16]byte(c[o:])), netip.AddrFrom16([16]byte(repl)))
			}
			copy(c[o:], repl[:n])
			if want := Checksum(c, 0); got != want {
				t.Fatalf("n=%d off=%d: incremental %04x, full %04x", n, o, got, want)
			}
			if want := refChecksum(c); want != Checksum(c, 0) {
				t.Fatalf("Checksum %04x, reference %04x", Checksum(c, 0), want)
			}
		}
	})
}
