package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
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

// Checksum property through real translation (FuzzTranslateChecksums).
//
// The verifier below shares no code with the package: it walks emitted
// frames by hand and checks every checksum with refChecksum (pkt_test.go),
// a word-by-word loop over the concatenated bytes: a checksummed region
// with its checksum field in place sums to 0xffff, so refChecksum is 0.

// verifyFrame checks an emitted Ethernet frame: outer IPv4 header and
// outer UDP checksum (IPv4: when nonzero; IPv6: always) when outer is set,
// then the inner IP packet. The IP packet must fill the frame exactly.
func verifyFrame(t *testing.T, what string, frame []byte, outer bool) {
	t.Helper()
	if len(frame) < 14 {
		t.Fatalf("%s: frame of %d bytes", what, len(frame))
	}
	ip := frame[14:]
	if et := be.Uint16(frame[12:]); len(ip) == 0 || (et == 0x0800) != (ip[0]>>4 == 4) {
		t.Fatalf("%s: EtherType %#x for IP version %d", what, et, ip[0]>>4)
	}
	if !outer {
		verifyIP(t, what, ip, false)
		return
	}
	src, dst, proto, l4 := verifyIPHeader(t, what+": outer", ip, false)
	if proto != ProtoUDP || len(l4) < 8 || int(be.Uint16(l4[4:])) != len(l4) {
		t.Fatalf("%s: outer is not one UDP datagram (proto %d, %d bytes)", what, proto, len(l4))
	}
	if cs := be.Uint16(l4[6:]); (cs != 0 || !src.Is4()) && refChecksum(pseudo(src, dst, ProtoUDP, len(l4)), l4) != 0 {
		t.Fatalf("%s: outer UDP checksum %04x does not verify", what, cs)
	}
	verifyIP(t, what+": inner", l4[8:], false)
}

// verifyIPHeader checks the IP header of ip (IPv4: header checksum; a top
// level packet must fill ip exactly, a quoted one may be cut short) and
// returns the addresses, the upper-layer protocol and its bytes (empty for
// a later fragment).
func verifyIPHeader(t *testing.T, what string, ip []byte, quote bool) (src, dst netip.Addr, proto uint8, l4 []byte) {
	t.Helper()
	switch {
	case len(ip) >= 20 && ip[0]>>4 == 4:
		ihl, tl := int(ip[0]&0xf)*4, int(be.Uint16(ip[2:]))
		if ihl < 20 || len(ip) < ihl || tl < ihl || (!quote && tl != len(ip)) {
			t.Fatalf("%s: IPv4 IHL %d total length %d in %d bytes", what, ihl, tl, len(ip))
		}
		if refChecksum(ip[:ihl]) != 0 {
			t.Fatalf("%s: IPv4 header checksum %04x does not verify", what, be.Uint16(ip[10:]))
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:])), netip.AddrFrom4([4]byte(ip[16:]))
		if be.Uint16(ip[6:])&0x3fff != 0 {
			return src, dst, ip[9], nil // fragment: the generator makes none
		}
		return src, dst, ip[9], ip[ihl:min(tl, len(ip))]
	case len(ip) >= 40 && ip[0]>>4 == 6:
		end := 40 + int(be.Uint16(ip[4:]))
		if (!quote && end != len(ip)) || (quote && end < 40) {
			t.Fatalf("%s: IPv6 payload length %d in %d bytes", what, end-40, len(ip))
		}
		src, dst = netip.AddrFrom16([16]byte(ip[8:])), netip.AddrFrom16([16]byte(ip[24:]))
		return src, dst, ip[6], ip[40:min(end, len(ip))]
	}
	t.Fatalf("%s: not an IP packet (%d bytes)", what, len(ip))
	return
}

// verifyIP checks ip's header and upper-layer checksum, and an ICMP
// error's quote. A quote may be cut short: its IPv4 header is checked, its
// upper-layer checksum only when the quoted datagram is complete.
func verifyIP(t *testing.T, what string, ip []byte, quote bool) {
	t.Helper()
	src, dst, proto, l4 := verifyIPHeader(t, what, ip, quote)
	complete := !quote
	if quote {
		if ip[0]>>4 == 4 {
			complete = int(be.Uint16(ip[2:])) <= len(ip)
		} else {
			complete = 40+int(be.Uint16(ip[4:])) <= len(ip)
		}
	}
	v4 := src.Is4()
	switch {
	case l4 == nil:
	case proto == ProtoTCP:
		if complete && refChecksum(pseudo(src, dst, ProtoTCP, len(l4)), l4) != 0 {
			t.Fatalf("%s: TCP checksum %04x does not verify", what, be.Uint16(l4[16:]))
		}
	case proto == ProtoUDP:
		if len(l4) < 8 {
			if !quote {
				t.Fatalf("%s: UDP of %d bytes", what, len(l4))
			}
			return
		}
		ul, cs := int(be.Uint16(l4[4:])), be.Uint16(l4[6:])
		if ul < 8 || ul > len(l4) {
			if !quote || complete {
				t.Fatalf("%s: UDP length %d of %d bytes", what, ul, len(l4))
			}
			return
		}
		if cs == 0 && !v4 && !quote {
			t.Fatalf("%s: IPv6 UDP checksum 0", what)
		}
		if (cs != 0 || !v4) && refChecksum(pseudo(src, dst, ProtoUDP, ul), l4[:ul]) != 0 {
			t.Fatalf("%s: UDP checksum %04x does not verify over the UDP length %d", what, cs, ul)
		}
	case proto == ProtoICMP && v4, proto == ProtoICMPv6 && !v4:
		if len(l4) < 8 {
			if !quote {
				t.Fatalf("%s: ICMP of %d bytes", what, len(l4))
			}
			return
		}
		var ok bool
		if v4 {
			ok = refChecksum(l4) == 0
		} else {
			ok = refChecksum(pseudo(src, dst, ProtoICMPv6, len(l4)), l4) == 0
		}
		if complete && !ok {
			t.Fatalf("%s: ICMP checksum %04x does not verify", what, be.Uint16(l4[2:]))
		}
		if isErr := (v4 && (l4[0] == 3 || l4[0] == 11 || l4[0] == 12)) || (!v4 && l4[0] < 128); isErr && !quote {
			verifyIP(t, what+": quote", l4[8:], true)
		}
	}
}

// tcFill is the seeds' payload pattern.
const tcFill = uint64(0x6f616b7769726521) // "!eriwkao" repeated

// Bits of FuzzTranslateChecksums' sel.
const (
	tcV6         = 1 << 0  // inner IPv6
	tcKind       = 3 << 1  // 0 TCP, 1 UDP, 2 ICMP echo, 3 ICMP error from the client about the flow
	tcDst        = 3 << 3  // 0 remote service, 1 local service, 2 remote instance IP, 3 local instance IP
	tcInc1       = 1 << 5  // port 1 (client) CsumIncremental
	tcInc2       = 1 << 6  // port 2 (local server) CsumIncremental
	tcZero       = 1 << 7  // IPv4 UDP checksum 0
	tcPartial    = 1 << 8  // CHECKSUM_PARTIAL from containers (recompute ports only)
	tcTrailer    = 1 << 9  // bytes beyond the UDP length
	tcOpts       = 1 << 10 // IPv4 options
	tcNode6      = 1 << 11 // IPv6 underlay
	tcCutQuote   = 1 << 12 // the client's error quotes header + 8 bytes
	tcErrReply   = 1 << 13 // the server answers with an ICMP error
	tcErrTCP     = 1 << 14 // kind 3: the flow is TCP (else UDP)
	tcErrTooBig  = 1 << 15 // ICMP errors are frag-needed / packet-too-big
	tcZeroSum    = 1 << 16 // UDP payload chosen so the translated request's checksum computes to 0
	tcPayloadMax = 1500    // payload bytes: beyond the tunnel MTU, so too-big errors are covered
)

// tcTables caches the immutable tables FuzzTranslateChecksums needs, by
// underlay family and port checksum modes (Build per input would dominate).
var tcTables [8]struct {
	once sync.Once
	t    *Table
}

func tcTable(t *testing.T, node6, inc1, inc2 bool) *Table {
	i := 0
	for j, b := range []bool{node6, inc1, inc2} {
		if b {
			i |= 1 << j
		}
	}
	c := &tcTables[i]
	c.once.Do(func() {
		node := nodeA
		if node6 {
			node = nodeA6
		}
		b := testBuilder(node)
		if inc1 {
			b.Ports[0].Csum = CsumIncremental
		}
		if inc2 {
			b.Ports[1].Csum = CsumIncremental
		}
		c.t, _ = b.Build()
	})
	if c.t == nil {
		t.Fatal("test table does not build")
	}
	return c.t
}

// tcPacket builds one packet with the fuzzed variations: proto is TCP, UDP
// or ICMP echo (id = sp, sequence = dp); reply makes an echo reply;
// partialOK says it comes from a container port whose checksum mode allows
// CHECKSUM_PARTIAL.
func tcPacket(sel uint32, proto uint8, src, dst netip.Addr, sp, dp uint16, payload []byte, reply, partialOK bool) []byte {
	v4 := src.Is4()
	var l4 []byte
	switch proto {
	case ProtoTCP:
		l4 = mkTCP(src, dst, sp, dp, payload)
	case ProtoUDP:
		l4 = mkUDP(src, dst, sp, dp, payload)
		if sel&tcTrailer != 0 {
			l4 = append(l4, 0x5a, 0xa5, 0x01) // odd count: checks the odd-length tail
		}
	default:
		typ := uint8(ICMPv4EchoRequest)
		proto = ProtoICMP
		switch {
		case v4 && reply:
			typ = ICMPv4EchoReply
		case !v4 && reply:
			typ, proto = ICMPv6EchoReply, ProtoICMPv6
		case !v4:
			typ, proto = ICMPv6EchoRequest, ProtoICMPv6
		}
		l4 = mkICMP(src, dst, typ, 0, uint32(sp)<<16|uint32(dp), payload)
	}
	ip := mkIP(src, dst, proto, l4, ipo{DF: v4})
	hl := 20
	if !v4 {
		hl = 40
	}
	switch {
	case proto == ProtoUDP && v4 && sel&tcZero != 0:
		be.PutUint16(ip[hl+6:], 0)
	case (proto == ProtoUDP || proto == ProtoTCP) && partialOK && sel&tcPartial != 0:
		// TX offload: only the folded pseudo-header sum, not complemented.
		n, co := len(l4), 16
		if proto == ProtoUDP {
			n, co = int(be.Uint16(l4[4:])), 6
		}
		be.PutUint16(ip[hl+co:], ^refChecksum(pseudo(src, dst, proto, n)))
	}
	if v4 && sel&tcOpts != 0 {
		o := append(append(append([]byte{}, ip[:20]...), 1, 1, 1, 0), ip[20:]...) // NOP NOP NOP EOL
		o[0] = 0x46
		be.PutUint16(o[2:], uint16(len(o)))
		o[10], o[11] = 0, 0
		be.PutUint16(o[10:], refChecksum(o[:24]))
		ip = o
	}
	return ip
}

// tcError is an ICMP error from src to dst quoting q (cut to header + 8
// bytes when cut, else to what fits 576 / 1280 bytes as kernels do).
func tcError(sel uint32, src, dst netip.Addr, q []byte, cut bool) []byte {
	typ, code, proto, limit := uint8(3), uint8(3), uint8(ProtoICMP), 576-28
	if sel&tcErrTooBig != 0 {
		code = 4
	}
	if !src.Is4() {
		typ, code, proto, limit = 1, 4, ProtoICMPv6, 1280-48
		if sel&tcErrTooBig != 0 {
			typ, code = 2, 0
		}
	}
	if cut {
		hl := 40
		if src.Is4() {
			hl = int(q[0]&0xf) * 4
		}
		limit = hl + 8
	}
	return mkIP(src, dst, proto, mkICMP(src, dst, typ, code, 1280, q[:min(len(q), limit)]), ipo{})
}

// FuzzTranslateChecksums: valid packets (IPv4/IPv6; TCP, UDP, ICMP echo,
// ICMP errors either way; both checksum modes; IPv4 UDP checksum 0;
// CHECKSUM_PARTIAL in recompute mode; UDP length below the payload; IPv4
// options; IPv4 or IPv6 underlay) go through Egress and Ingress of a small
// table: a request from the client, the server's reply (or error), and an
// ICMP error the client sends about the reply. Every checksum in every
// emitted frame must verify from scratch.
//
// The inputs are integers only: the payload is size (mod tcPayloadMax+1)
// bytes repeating the 8 bytes of fill. Arbitrary payload bytes add nothing
// here (FuzzChecksum covers the checksum code over arbitrary data) but make
// the fuzzer minimize every new input for up to -fuzzminimizetime (60 s),
// during which it does not fuzz (golang/go#48820).
func FuzzTranslateChecksums(f *testing.F) {
	for _, sel := range []uint32{
		0, 1, 2, 3, 4, 5, 6, 7, // kinds × families, remote service, recompute
		1<<3 | 1, 2 << 3, 3<<3 | 2<<1, 1<<3 | 3<<1 | 1, // local service, instance IPs
		tcInc1 | tcInc2 | 1<<1, tcInc1 | tcInc2 | 1<<3 | 1<<1 | 1, // incremental
		tcZero | 1<<1, tcZero | 1<<1 | 1<<3 | tcInc2, // IPv4 UDP checksum 0
		tcPartial, tcPartial | 1<<1 | 1 | 1<<3, tcPartial | tcInc1 | 1<<1, // CHECKSUM_PARTIAL
		tcTrailer | 1<<1, tcTrailer | 1<<1 | 1 | tcInc1, tcTrailer | tcPartial | 1<<1 | 1<<3, // UDP length < payload
		tcOpts | 1<<1, tcOpts | 3<<1 | tcErrTCP, tcOpts | 3<<1 | tcCutQuote | 1<<3, // IPv4 options
		tcNode6 | 1<<1, tcNode6 | 1 | 3<<1, // IPv6 underlay
		tcErrReply | 1<<1, tcErrReply | 1 | 1<<3 | 1<<1, tcErrReply | tcErrTooBig | 2<<3 | tcCutQuote, // server errors
		3<<1 | tcErrTooBig | tcErrTCP | 1, 3<<1 | tcCutQuote | tcErrTCP, 3<<1 | 3<<3 | tcZero, // client errors
	} {
		f.Add(sel, uint16(40000), uint16(53), uint16(16), tcFill)
	}
	for _, sel := range []uint32{tcZeroSum | 1<<1 | 1, tcZeroSum | 1<<1 | 1 | tcInc1 | 1<<3, tcZeroSum | 1<<1 | tcTrailer | 3<<3} {
		f.Add(sel, uint16(40000), uint16(53), uint16(16), tcFill) // translated UDP checksum computes to 0
	}
	f.Add(uint32(1<<1), uint16(1), uint16(2), uint16(1450), tcFill)                    // too big for the tunnel
	f.Add(uint32(1<<1|1), uint16(1), uint16(2), uint16(1450), tcFill)                  // IPv6 too big
	f.Add(uint32(3<<1|tcErrTCP|1), uint16(1), uint16(2), uint16(1300), tcFill)         // big reply, quote cut to 1280
	f.Add(uint32(3<<1), uint16(0xffff), uint16(0), uint16(7), ^uint64(0))              // words of 0xffff, odd length
	f.Add(uint32(1<<1|tcZero|tcOpts), uint16(0), uint16(0xffff), uint16(0), uint64(0)) // empty payload
	f.Fuzz(func(t *testing.T, sel uint32, sport, dport, size uint16, fill uint64) {
		payload := make([]byte, int(size)%(tcPayloadMax+1))
		for i := range payload {
			payload[i] = byte(fill >> (8 * (i % 8)))
		}
		node := nodeA
		if sel&tcNode6 != 0 {
			node = nodeA6
		}
		var h TableHolder
		h.Swap(tcTable(t, sel&tcNode6 != 0, sel&tcInc1 != 0, sel&tcInc2 != 0))
		ft := NewFlowTable(FlowConfig{Capacity: 64})
		ft.seed = [5]uint64{1, 3, 5, 7, 9} // same chains every run: coverage the fuzzer can reproduce
		p, ctx := NewProcessor(&h, ft), NewWorkerCtx()
		ctx.Now = 1e9

		v6 := sel&tcV6 != 0
		cli, cliI, svcR, svcL, srvR, srvRI, srvL, srvLI := cli4, cliI4, svcR4, svcL4, srvR4, srvRI4, srvL4, srvLI4
		if v6 {
			cli, cliI, svcR, svcL, srvR, srvRI, srvL, srvLI = cli6, cliI6, svcR6, svcL6, srvR6, srvRI6, srvL6, srvLI6
		}
		kind := (sel & tcKind) >> 1
		proto := []uint8{ProtoTCP, ProtoUDP, ProtoICMP, ProtoUDP}[kind]
		if kind == 3 && sel&tcErrTCP != 0 {
			proto = ProtoTCP
		}
		if proto == ProtoICMP {
			dport = sport // echo: the identifier is both ports
		}
		dsel := (sel & tcDst) >> 3
		dst := []netip.Addr{svcR, svcL, srvRI, srvLI}[dsel]
		local := dsel&1 != 0
		peer := nodeB
		if sel&tcNode6 != 0 {
			peer = nodeB6
		}
		if sel&tcZeroSum != 0 && proto == ProtoUDP {
			// Make the last payload word the one's complement of the
			// rest of the translated request's sum: its checksum then
			// computes to 0 and must be sent as 0xffff (RFC 768), which
			// the IPv6 check tells from "no checksum".
			payload = append(append([]byte(nil), payload...), 0, 0)
			if len(payload)%2 == 1 {
				payload = append(payload, 0)
			}
			ns := []netip.Addr{srvR, srvL, srvR, srvL}[dsel]
			u := mkUDP(cliI, ns, sport, dport, payload)
			u[6], u[7] = 0, 0
			be.PutUint16(payload[len(payload)-2:], refChecksum(pseudo(cliI, ns, ProtoUDP, len(u)), u))
		}

		run := func(what string, ingress bool, port PortID, pkt []byte) Verdict {
			t.Helper()
			var frame []byte
			switch {
			case ingress:
				frame = mkOuter(macA, macB, peer.Addr(), node.Addr(), 50000, node.Port(), pkt, 0)
			case port == 1:
				frame = fromCli(pkt)
			default:
				frame = mkEth(macH2, macC2, pkt)
			}
			fr := Frame{Buf: make([]byte, 256+len(frame)+64), Off: 256, Len: len(frame)}
			copy(fr.Buf[256:], frame)
			var v [1]Verdict
			if ingress {
				p.Ingress(ctx, []Frame{fr}, v[:])
			} else {
				p.Egress(ctx, port, []Frame{fr}, v[:])
			}
			checkVerdict(t, fr, v[0])
			switch v[0].Action {
			case ActTxPort, ActTxUplink:
				verifyFrame(t, what, fr.Buf[v[0].Off:v[0].Off+v[0].Len], v[0].Action == ActTxUplink)
			default:
				t.Fatalf("%s: verdict %v/%v", what, v[0].Action, v[0].Reason)
			}
			return v[0]
		}

		// The client's request (or the flow an error will be about).
		req := tcPacket(sel, proto, cli, dst, sport, dport, payload, false, sel&tcInc1 == 0)
		if v := run("request", false, 1, req); v.Action == ActTxPort && v.Port == 1 {
			return // too big for the tunnel: the ICMP error back was checked
		}
		// The server's reply: from a remote server it arrives translated by
		// its node (instance IP → client nsIP); a local server sends it to
		// the client's instance IP.
		rsrc, rdst, rport, ringress := srvRI, cli, PortID(0), true
		if local {
			rsrc, rdst, rport, ringress = srvL, cliI, 2, false
		}
		var reply []byte
		if sel&tcErrReply != 0 {
			// The server's error quotes the request as it arrived there.
			qsrc, qdst := cli, srvRI
			if local {
				qsrc, qdst = cliI, srvL
			}
			q := tcPacket(sel&^tcPartial&^tcTrailer, proto, qsrc, qdst, sport, dport, payload, false, false)
			reply = tcError(sel, rsrc, rdst, q, sel&tcCutQuote != 0)
		} else {
			reply = tcPacket(sel, proto, rsrc, rdst, dport, sport, payload, true, local && sel&tcInc2 == 0)
		}
		run("reply", ringress, rport, reply)
		if kind != 3 {
			return
		}
		// The client's ICMP error about the reply as it saw it: from the
		// address it addressed, to its nsIP.
		q := tcPacket(sel&^tcPartial&^tcTrailer, proto, dst, cli, dport, sport, payload, true, false)
		run("client error", false, 1, tcError(sel, cli, dst, q, sel&tcCutQuote != 0))
	})
}
