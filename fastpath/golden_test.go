package fastpath

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"
)

// Test topology. This node A = 198.18.0.1:50103. Peers B (MAC known) and C
// (no neighbour entry). Port 1 is the client container, port 2 a local
// server container.
var (
	macA      = mac{0xaa, 0, 0, 0, 0, 1}
	macB      = mac{0xbb, 0, 0, 0, 0, 2}
	macC1     = mac{0x02, 0, 0, 0, 1, 1} // container behind port 1
	macH1     = mac{0x02, 0, 0, 0, 1, 2} // host side of port 1
	macC2     = mac{0x02, 0, 0, 0, 2, 1}
	macH2     = mac{0x02, 0, 0, 0, 2, 2}
	nodeA     = netip.MustParseAddrPort("198.18.0.1:50103")
	nodeB     = netip.MustParseAddrPort("198.18.0.2:50103")
	nodeC     = netip.MustParseAddrPort("198.18.0.3:50104")
	nodeA6    = netip.MustParseAddrPort("[2001:db8::1]:50103")
	nodeB6    = netip.MustParseAddrPort("[2001:db8::2]:50103")
	cli4      = a4("10.18.0.2") // client nsIP
	cli6      = a4("fc00::2")
	cliI4     = a4("10.30.1.30") // client instance IP
	cliI6     = a4("fdff::130")
	srvL4     = a4("10.18.0.3") // local server nsIP
	srvL6     = a4("fc00::3")
	srvLI4    = a4("10.30.1.20")
	srvLI6    = a4("fdff::120")
	srvR4     = a4("10.18.0.66") // remote server nsIP on B
	srvR6     = a4("fc00::100:2")
	srvRI4    = a4("10.30.1.10")
	srvRI6    = a4("fdff::110")
	svcR4     = a4("10.30.1.1") // RR service IP of remote service R
	svcR6     = a4("fdff:2000::11")
	svcRC4    = a4("10.30.2.1") // Closest service IP of R
	svcL4     = a4("10.30.1.2") // RR service IP of local service L
	svcL6     = a4("fdff:2000::12")
	svcN4     = a4("10.30.1.3") // service whose node has no neighbour entry
	unknown4  = a4("10.30.9.9")
	outside4  = a4("8.8.8.8")
	nsIPOnB4  = a4("10.18.0.67")
	remoteCl4 = a4("10.30.5.5") // some other client's instance IP
)

func testBuilder(node netip.AddrPort) *Builder {
	peerB, peerC := nodeB, nodeC
	if !node.Addr().Is4() {
		peerB = nodeB6
	}
	return &Builder{
		Node: NodeSpec{Addr: node, UplinkMAC: macA, Loc: &Location{Lat: 52.5, Long: 13.4}},
		Services: []ServiceSpec{
			{Job: "a.b.r.n", IPs: []PolicyIP{{Policy: "RR", V4: svcR4, V6: svcR6}, {Policy: "Closest", V4: svcRC4}}},
			{Job: "a.b.l.n", IPs: []PolicyIP{{Policy: "RR", V4: svcL4, V6: svcL6}}},
			{Job: "a.b.nb.n", IPs: []PolicyIP{{Policy: "RR", V4: svcN4}}},
			{Job: "a.b.c.n"},
			{Job: "a.b.rc.n"},
		},
		Instances: []InstanceSpec{
			{Job: "a.b.r.n", Number: 0, IP4: srvRI4, IP6: srvRI6, NS4: srvR4, NS6: srvR6, Node: peerB},
			{Job: "a.b.l.n", Number: 0, IP4: srvLI4, IP6: srvLI6, NS4: srvL4, NS6: srvL6, Local: true, Port: 2, Node: node},
			{Job: "a.b.nb.n", Number: 0, IP4: a4("10.30.1.40"), NS4: a4("10.18.0.130"), Node: peerC},
			{Job: "a.b.c.n", Number: 0, IP4: cliI4, IP6: cliI6, NS4: cli4, NS6: cli6, Local: true, Port: 1, Node: node},
			{Job: "a.b.rc.n", Number: 0, IP4: remoteCl4, NS4: nsIPOnB4, Node: peerB},
		},
		Ports: []PortSpec{
			{ID: 1, NS4: cli4, NS6: cli6, Inst4: cliI4, Inst6: cliI6, ContainerMAC: macC1, HostMAC: macH1},
			{ID: 2, NS4: srvL4, NS6: srvL6, Inst4: srvLI4, Inst6: srvLI6, ContainerMAC: macC2, HostMAC: macH2},
		},
		Peers:     []netip.AddrPort{peerB, peerC},
		Neighbors: map[netip.Addr][6]byte{nodeB.Addr(): macB, nodeB6.Addr(): macB},
	}
}

func newTestProc(t testing.TB, node netip.AddrPort) (*Processor, *WorkerCtx) {
	t.Helper()
	tb, err := testBuilder(node).Build()
	if err != nil {
		t.Fatal(err)
	}
	var h TableHolder
	h.Swap(tb)
	ctx := NewWorkerCtx()
	ctx.Now = 1e9
	return NewProcessor(&h, NewFlowTable(FlowConfig{Capacity: 1024})), ctx
}

func hash5(proto uint8, src netip.Addr, sp uint16, dst netip.Addr, dp uint16) uint32 {
	k := MakeFlowKey(proto, src, sp, dst, dp)
	return k.Hash()
}

// Builders of whole frames used by the cases.

func fromCli(ip []byte) []byte { return mkEth(macH1, macC1, ip) }
func toCli(ip []byte) []byte   { return mkEth(macC1, macH1, ip) }
func toSrvL(ip []byte) []byte  { return mkEth(macC2, macH2, ip) }

func udpPkt(src, dst netip.Addr, sp, dp uint16, o ipo) []byte {
	return mkIP(src, dst, ProtoUDP, mkUDP(src, dst, sp, dp, pay), o)
}
func tcpPkt(src, dst netip.Addr, sp, dp uint16) []byte {
	return mkIP(src, dst, ProtoTCP, mkTCP(src, dst, sp, dp, pay), ipo{DF: true})
}
func echoPkt(src, dst netip.Addr, reply bool, id uint16) []byte {
	typ, proto := uint8(ICMPv4EchoRequest), uint8(ProtoICMP)
	if reply {
		typ = ICMPv4EchoReply
	}
	if !src.Is4() {
		typ, proto = ICMPv6EchoRequest, ProtoICMPv6
		if reply {
			typ = ICMPv6EchoReply
		}
	}
	return mkIP(src, dst, proto, mkICMP(src, dst, typ, 0, uint32(id)<<16|1, pay), ipo{})
}

// udpTrail is a UDP datagram to port 53 whose IP payload carries 4 bytes
// beyond the UDP length (the checksum covers the UDP length only).
func udpTrail(src, dst netip.Addr, sp uint16) []byte {
	return mkIP(src, dst, ProtoUDP, append(mkUDP(src, dst, sp, 53, pay), 0xde, 0xad, 0xbe, 0xef), ipo{})
}

// toB is what A sends to B for inner packet ip with flow hash h.
func toB(ip []byte, h uint32) []byte {
	return mkOuter(macB, macA, nodeA.Addr(), nodeB.Addr(), TunnelSourcePort(h), nodeB.Port(), ip, 0)
}

// fromB is what B sends to A.
func fromB(ip []byte) []byte {
	return mkOuter(macA, macB, nodeB.Addr(), nodeA.Addr(), 51000, nodeA.Port(), ip, 0)
}

type step struct {
	name    string
	ingress bool
	port    PortID // egress in-port
	in      []byte
	act     Action
	out     PortID
	reason  DropReason
	want    []byte // nil: the frame must be unchanged (drop, pass, unknown service)
}

func runSteps(t *testing.T, p *Processor, ctx *WorkerCtx, steps []step) {
	t.Helper()
	for _, s := range steps {
		f := inFrame(s.in)
		orig := append([]byte(nil), f.Buf...)
		var v [1]Verdict
		if s.ingress {
			p.Ingress(ctx, []Frame{f}, v[:])
		} else {
			p.Egress(ctx, s.port, []Frame{f}, v[:])
		}
		got := v[0]
		if got.Action != s.act || got.Reason != s.reason || (s.act == ActTxPort && got.Port != s.out) {
			t.Errorf("%s: verdict %v/%v port %d, want %v/%v port %d", s.name, got.Action, got.Reason, got.Port, s.act, s.reason, s.out)
			continue
		}
		if s.want == nil {
			if got.Off != f.Off || got.Len != f.Len || !bytes.Equal(f.Buf, orig) {
				t.Errorf("%s: frame changed", s.name)
			}
			continue
		}
		out := f.Buf[got.Off : got.Off+got.Len]
		if !bytes.Equal(out, s.want) {
			t.Errorf("%s: output differs\n got %s\nwant %s", s.name, hex.EncodeToString(out), hex.EncodeToString(s.want))
		}
	}
}

func TestGoldenEgress(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	h := func(proto uint8, src netip.Addr, sp uint16, dst netip.Addr, dp uint16) uint32 {
		return hash5(proto, src, sp, dst, dp)
	}
	big4 := mkIP(cli4, svcR4, ProtoUDP, mkUDP(cli4, svcR4, 1, 2, make([]byte, 1480-28)), ipo{DF: true})
	big6 := mkIP(cli6, svcR6, ProtoUDP, mkUDP(cli6, svcR6, 1, 2, make([]byte, 1480-48)), ipo{})
	bigNoDF := mkIP(cli4, svcR4, ProtoUDP, mkUDP(cli4, svcR4, 1, 2, make([]byte, 1480-28)), ipo{})
	steps := []step{
		{name: "udp4 remote", in: fromCli(udpPkt(cli4, svcR4, 40000, 53, ipo{ID: 7, DF: true})), act: ActTxUplink,
			want: toB(udpPkt(cliI4, srvR4, 40000, 53, ipo{ID: 7, DF: true}), h(ProtoUDP, cli4, 40000, svcR4, 53))},
		{name: "tcp4 remote", in: fromCli(tcpPkt(cli4, svcR4, 40001, 80)), act: ActTxUplink,
			want: toB(tcpPkt(cliI4, srvR4, 40001, 80), h(ProtoTCP, cli4, 40001, svcR4, 80))},
		{name: "udp6 remote", in: fromCli(udpPkt(cli6, svcR6, 40000, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI6, srvR6, 40000, 53, ipo{}), h(ProtoUDP, cli6, 40000, svcR6, 53))},
		{name: "tcp6 remote", in: fromCli(tcpPkt(cli6, svcR6, 40001, 80)), act: ActTxUplink,
			want: toB(tcpPkt(cliI6, srvR6, 40001, 80), h(ProtoTCP, cli6, 40001, svcR6, 80))},
		{name: "udp4 closest remote", in: fromCli(udpPkt(cli4, svcRC4, 40002, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI4, srvR4, 40002, 53, ipo{}), h(ProtoUDP, cli4, 40002, svcRC4, 53))},
		{name: "udp4 to instance IP", in: fromCli(udpPkt(cli4, srvRI4, 40003, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI4, srvR4, 40003, 53, ipo{}), h(ProtoUDP, cli4, 40003, srvRI4, 53))},
		{name: "udp4 local", port: 1, in: fromCli(udpPkt(cli4, svcL4, 40000, 53, ipo{})), act: ActTxPort, out: 2,
			want: toSrvL(udpPkt(cliI4, srvL4, 40000, 53, ipo{}))},
		{name: "tcp6 local", port: 1, in: fromCli(tcpPkt(cli6, svcL6, 40000, 80)), act: ActTxPort, out: 2,
			want: toSrvL(tcpPkt(cliI6, srvL6, 40000, 80))},
		{name: "udp4 zero checksum stays zero", in: fromCli(func() []byte {
			b := udpPkt(cli4, svcR4, 40010, 53, ipo{})
			b[26], b[27] = 0, 0
			return b
		}()), act: ActTxUplink, want: toB(func() []byte {
			b := udpPkt(cliI4, srvR4, 40010, 53, ipo{})
			b[26], b[27] = 0, 0
			return b
		}(), h(ProtoUDP, cli4, 40010, svcR4, 53))},
		// The UDP length says 24 of the 28 payload bytes: the recomputed
		// checksum covers those 24 (pseudo-header length 24), the 4
		// trailing bytes pass unchanged.
		{name: "udp4 length shorter than payload", in: fromCli(udpTrail(cli4, svcR4, 40011)), act: ActTxUplink,
			want: toB(udpTrail(cliI4, srvR4, 40011), h(ProtoUDP, cli4, 40011, svcR4, 53))},
		{name: "udp6 length shorter than payload", in: fromCli(udpTrail(cli6, svcR6, 40011)), act: ActTxUplink,
			want: toB(udpTrail(cliI6, srvR6, 40011), h(ProtoUDP, cli6, 40011, svcR6, 53))},
		{name: "udp4 local length shorter than payload", in: fromCli(udpTrail(cli4, svcL4, 40011)), act: ActTxPort, out: 2,
			want: toSrvL(udpTrail(cliI4, srvL4, 40011))},
		{name: "icmp4 echo", in: fromCli(echoPkt(cli4, svcR4, false, 77)), act: ActTxUplink,
			want: toB(echoPkt(cliI4, srvR4, false, 77), h(ProtoICMP, cli4, 77, svcR4, 77))},
		{name: "icmp6 echo", in: fromCli(echoPkt(cli6, svcR6, false, 77)), act: ActTxUplink,
			want: toB(echoPkt(cliI6, srvR6, false, 77), h(ProtoICMPv6, cli6, 77, svcR6, 77))},
		{name: "outside service range", in: fromCli(udpPkt(cli4, outside4, 1, 2, ipo{})), act: ActPass},
		{name: "platform but not service", in: fromCli(udpPkt(cli4, nsIPOnB4, 1, 2, ipo{})), act: ActPass},
		{name: "arp", in: append(mkEth(macH1, macC1, udpPkt(cli4, svcR4, 1, 2, ipo{}))[:12], 0x08, 0x06, 0, 1), act: ActPass},
		{name: "spoofed v4", in: fromCli(udpPkt(a4("10.18.0.9"), svcR4, 1, 2, ipo{})), act: ActDrop, reason: ReasonSpoofed},
		{name: "spoofed v6", in: fromCli(udpPkt(a4("fc00::9"), svcR6, 1, 2, ipo{})), act: ActDrop, reason: ReasonSpoofed},
		{name: "unknown service", in: fromCli(udpPkt(cli4, unknown4, 1, 2, ipo{})), act: ActSlowPath, reason: ReasonUnknownService},
		{name: "unknown port", port: 9, in: fromCli(udpPkt(cli4, svcR4, 1, 2, ipo{})), act: ActDrop, reason: ReasonUnknownPort},
		{name: "no neighbour", in: fromCli(udpPkt(cli4, svcN4, 40000, 53, ipo{})), act: ActSlowPath, reason: ReasonNoNeighbor,
			want: mkOuter(mac{}, macA, nodeA.Addr(), nodeC.Addr(), TunnelSourcePort(h(ProtoUDP, cli4, 40000, svcN4, 53)), nodeC.Port(),
				udpPkt(cliI4, a4("10.18.0.130"), 40000, 53, ipo{}), 0)},
		{name: "no v6 instance", in: fromCli(udpPkt(cli6, a4("fdff:2000::99"), 1, 2, ipo{})), act: ActSlowPath, reason: ReasonUnknownService},
		{name: "sctp to service", in: fromCli(mkIP(cli4, svcR4, 132, pay, ipo{})), act: ActDrop, reason: ReasonUnsupportedProto},
		{name: "too big v4", in: fromCli(big4), act: ActTxPort, out: 1,
			want: toCli(mkIP(svcR4, cli4, ProtoICMP, mkICMP(svcR4, cli4, 3, 4, 1472, big4[:576-28]), ipo{}))},
		{name: "too big v6", in: fromCli(big6), act: ActTxPort, out: 1,
			want: toCli(mkIP(svcR6, cli6, ProtoICMPv6, mkICMP(svcR6, cli6, 2, 0, 1472, big6[:1280-48]), ipo{}))},
		{name: "too big v4 without DF", in: fromCli(bigNoDF), act: ActDrop, reason: ReasonTooBig},
	}
	for i := range steps {
		if steps[i].port == 0 {
			steps[i].port = 1
		}
	}
	runSteps(t, p, ctx, steps)
}

func TestGoldenEgressVLAN(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	in := fromCli(udpPkt(cli4, svcL4, 40000, 53, ipo{}))
	tagged := append(append(append([]byte{}, in[:12]...), 0x81, 0x00, 0x00, 0x05), in[12:]...)
	runSteps(t, p, ctx, []step{
		{name: "one tag tolerated", port: 1, in: tagged, act: ActTxPort, out: 2, want: toSrvL(udpPkt(cliI4, srvL4, 40000, 53, ipo{}))},
		{name: "two tags dropped", port: 1, in: append(append(append([]byte{}, tagged[:12]...), 0x88, 0xa8, 0, 1), tagged[12:]...), act: ActDrop, reason: ReasonVLANStacked},
	})
}

func TestGoldenTruncated(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	u4 := fromCli(udpPkt(cli4, svcR4, 1, 2, ipo{}))
	u6 := fromCli(udpPkt(cli6, svcR6, 1, 2, ipo{}))
	t4 := fromCli(tcpPkt(cli4, svcR4, 1, 2))
	i4 := fromCli(echoPkt(cli4, svcR4, false, 1))
	i6 := fromCli(echoPkt(cli6, svcR6, false, 1))
	set := func(b []byte, off int, v ...byte) []byte {
		c := append([]byte(nil), b...)
		copy(c[off:], v)
		return c
	}
	// An IPv4 packet with a truncated total length: cut the frame, keep the header.
	cut := func(b []byte, n int) []byte { return append([]byte(nil), b[:n]...) }
	ext := mkEth(macH1, macC1, func() []byte {
		b := udpPkt(cli6, svcR6, 1, 2, ipo{})
		// hop-by-hop header claiming 16 bytes but only 8 present before the end.
		hbh := []byte{ProtoUDP, 1, 0, 0, 0, 0, 0, 0}
		b = append(append([]byte{}, b[:40]...), hbh...)
		b[6] = 0
		be.PutUint16(b[4:], uint16(len(hbh)))
		return b
	}())
	steps := []step{
		{name: "eth", in: cut(u4, 10), reason: ReasonTruncatedEth},
		{name: "vlan tag cut", in: set(cut(u4, 15), 12, 0x81, 0, 0), reason: ReasonTruncatedEth},
		{name: "ipv4 header", in: cut(u4, 14+19), reason: ReasonTruncatedIPv4},
		{name: "ipv4 total length", in: cut(u4, len(u4)-1), reason: ReasonTruncatedIPv4},
		{name: "ipv4 ihl", in: set(u4, 14, 0x44), reason: ReasonBadIPv4},
		{name: "ipv4 version", in: set(u4, 14, 0x65), reason: ReasonBadIPv4},
		{name: "ipv4 options cut", in: set(u4, 14, 0x4f), reason: ReasonBadIPv4},
		{name: "ipv6 header", in: cut(u6, 14+39), reason: ReasonTruncatedIPv6},
		{name: "ipv6 payload", in: cut(u6, len(u6)-1), reason: ReasonTruncatedIPv6},
		{name: "ipv6 version", in: set(u6, 14, 0x40), reason: ReasonBadIPv6},
		{name: "ipv6 ext header", in: ext, reason: ReasonTruncatedIPv6},
		{name: "udp", in: set(cut(u4, 14+20+7), 16, 0, 27), reason: ReasonTruncatedUDP},
		{name: "udp length", in: set(u4, 14+20+4, 0xff, 0), reason: ReasonBadUDPLength},
		{name: "tcp", in: set(cut(t4, 14+20+19), 16, 0, 39), reason: ReasonTruncatedTCP},
		{name: "tcp data offset", in: set(t4, 14+20+12, 0x40), reason: ReasonBadTCP},
		{name: "icmp4", in: set(cut(i4, 14+20+7), 16, 0, 27), reason: ReasonTruncatedICMP},
		{name: "icmp6", in: set(cut(i6, 14+40+7), 18, 0, 7), reason: ReasonTruncatedICMP},
	}
	for i := range steps {
		steps[i].port, steps[i].act = 1, ActDrop
	}
	runSteps(t, p, ctx, steps)
	// The same truncations arriving as tunnel payloads are bad inner packets.
	var in []step
	for _, s := range steps[2:] {
		inner := s.in[14:]
		in = append(in, step{name: "inner " + s.name, ingress: true, in: fromB(inner), act: ActDrop, reason: ReasonBadInner})
	}
	in = append(in,
		step{name: "outer eth", ingress: true, in: cut(fromB(u4[14:]), 13), act: ActDrop, reason: ReasonTruncatedEth},
		step{name: "outer ipv4", ingress: true, in: cut(fromB(u4[14:]), 30), act: ActDrop, reason: ReasonTruncatedIPv4},
		step{name: "outer udp length", ingress: true, in: set(fromB(u4[14:]), 14+20+4, 0xff, 0xff), act: ActDrop, reason: ReasonBadUDPLength},
		step{name: "inner nibble", ingress: true, in: fromB(set(u4[14:], 0, 0x55)), act: ActDrop, reason: ReasonBadInner},
		step{name: "empty inner", ingress: true, in: fromB(nil), act: ActDrop, reason: ReasonBadInner},
	)
	runSteps(t, p, ctx, in)
}

func TestGoldenIngress(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	h := hash5
	steps := []step{
		// Open flows first (egress), then the replies come back.
		{name: "udp4 request", port: 1, in: fromCli(udpPkt(cli4, svcR4, 40000, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI4, srvR4, 40000, 53, ipo{}), h(ProtoUDP, cli4, 40000, svcR4, 53))},
		{name: "udp4 reply", ingress: true, in: fromB(udpPkt(srvRI4, cli4, 53, 40000, ipo{})), act: ActTxPort, out: 1,
			want: toCli(udpPkt(svcR4, cli4, 53, 40000, ipo{}))},
		{name: "tcp6 request", port: 1, in: fromCli(tcpPkt(cli6, svcR6, 40001, 80)), act: ActTxUplink,
			want: toB(tcpPkt(cliI6, srvR6, 40001, 80), h(ProtoTCP, cli6, 40001, svcR6, 80))},
		{name: "tcp6 reply", ingress: true, in: fromB(tcpPkt(srvRI6, cli6, 80, 40001)), act: ActTxPort, out: 1,
			want: toCli(tcpPkt(svcR6, cli6, 80, 40001))},
		{name: "tcp4 request", port: 1, in: fromCli(tcpPkt(cli4, svcR4, 40001, 80)), act: ActTxUplink,
			want: toB(tcpPkt(cliI4, srvR4, 40001, 80), h(ProtoTCP, cli4, 40001, svcR4, 80))},
		{name: "tcp4 reply", ingress: true, in: fromB(tcpPkt(srvRI4, cli4, 80, 40001)), act: ActTxPort, out: 1,
			want: toCli(tcpPkt(svcR4, cli4, 80, 40001))},
		{name: "udp6 request", port: 1, in: fromCli(udpPkt(cli6, svcR6, 40000, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI6, srvR6, 40000, 53, ipo{}), h(ProtoUDP, cli6, 40000, svcR6, 53))},
		{name: "udp6 reply", ingress: true, in: fromB(udpPkt(srvRI6, cli6, 53, 40000, ipo{})), act: ActTxPort, out: 1,
			want: toCli(udpPkt(svcR6, cli6, 53, 40000, ipo{}))},
		{name: "echo4 request", port: 1, in: fromCli(echoPkt(cli4, svcR4, false, 9)), act: ActTxUplink,
			want: toB(echoPkt(cliI4, srvR4, false, 9), h(ProtoICMP, cli4, 9, svcR4, 9))},
		{name: "echo4 reply", ingress: true, in: fromB(echoPkt(srvRI4, cli4, true, 9)), act: ActTxPort, out: 1,
			want: toCli(echoPkt(svcR4, cli4, true, 9))},
		{name: "echo6 request", port: 1, in: fromCli(echoPkt(cli6, svcR6, false, 9)), act: ActTxUplink,
			want: toB(echoPkt(cliI6, srvR6, false, 9), h(ProtoICMPv6, cli6, 9, svcR6, 9))},
		{name: "echo6 reply", ingress: true, in: fromB(echoPkt(srvRI6, cli6, true, 9)), act: ActTxPort, out: 1,
			want: toCli(echoPkt(svcR6, cli6, true, 9))},
		// ICMP errors about the UDP flow, from the server instance.
		{name: "icmp4 port unreachable", ingress: true,
			in:  fromB(mkIP(srvRI4, cli4, ProtoICMP, mkICMP(srvRI4, cli4, 3, 3, 0, udpPkt(cli4, srvRI4, 40000, 53, ipo{})), ipo{})),
			act: ActTxPort, out: 1,
			want: toCli(mkIP(svcR4, cli4, ProtoICMP, mkICMP(svcR4, cli4, 3, 3, 0, udpPkt(cli4, svcR4, 40000, 53, ipo{})), ipo{}))},
		{name: "icmp4 time exceeded from elsewhere", ingress: true,
			in:  fromB(mkIP(a4("10.30.7.7"), cli4, ProtoICMP, mkICMP(a4("10.30.7.7"), cli4, 11, 0, 0, udpPkt(cli4, srvRI4, 40000, 53, ipo{})[:28]), ipo{})),
			act: ActTxPort, out: 1,
			want: toCli(mkIP(a4("10.30.7.7"), cli4, ProtoICMP, mkICMP(a4("10.30.7.7"), cli4, 11, 0, 0, udpPkt(cli4, svcR4, 40000, 53, ipo{})[:28]), ipo{}))},
		{name: "icmp6 packet too big", ingress: true,
			in:  fromB(mkIP(srvRI6, cli6, ProtoICMPv6, mkICMP(srvRI6, cli6, 2, 0, 1280, udpPkt(cli6, srvRI6, 40000, 53, ipo{})), ipo{})),
			act: ActTxPort, out: 1,
			want: toCli(mkIP(svcR6, cli6, ProtoICMPv6, mkICMP(svcR6, cli6, 2, 0, 1280, udpPkt(cli6, svcR6, 40000, 53, ipo{})), ipo{}))},
		{name: "icmp error without flow passes unchanged", ingress: true,
			in:  fromB(mkIP(srvRI4, cli4, ProtoICMP, mkICMP(srvRI4, cli4, 3, 3, 0, udpPkt(cli4, srvRI4, 1, 2, ipo{})), ipo{})),
			act: ActTxPort, out: 1,
			want: toCli(mkIP(srvRI4, cli4, ProtoICMP, mkICMP(srvRI4, cli4, 3, 3, 0, udpPkt(cli4, srvRI4, 1, 2, ipo{})), ipo{}))},
		// Not a reply: delivered unchanged.
		{name: "request from remote client", ingress: true, in: fromB(udpPkt(remoteCl4, srvL4, 5555, 53, ipo{})), act: ActTxPort, out: 2,
			want: toSrvL(udpPkt(remoteCl4, srvL4, 5555, 53, ipo{}))},
		{name: "non-peer", ingress: true,
			in:  mkOuter(macA, macB, a4("198.18.0.9"), nodeA.Addr(), 51000, nodeA.Port(), udpPkt(srvRI4, cli4, 53, 40000, ipo{}), 0),
			act: ActDrop, reason: ReasonNonPeer},
		{name: "peer from another port is fine", ingress: true,
			in:  mkOuter(macA, macB, nodeC.Addr(), nodeA.Addr(), 1, nodeA.Port(), udpPkt(a4("10.30.1.40"), srvL4, 5555, 53, ipo{}), 0),
			act: ActTxPort, out: 2, want: toSrvL(udpPkt(a4("10.30.1.40"), srvL4, 5555, 53, ipo{}))},
		// SPEC §7.2: the inner source must be one the table places on the
		// sending peer, or a reply on a local flow.
		{name: "nsIP placed on the peer", ingress: true, in: fromB(udpPkt(nsIPOnB4, srvL4, 5555, 53, ipo{})), act: ActTxPort, out: 2,
			want: toSrvL(udpPkt(nsIPOnB4, srvL4, 5555, 53, ipo{}))},
		{name: "instance IP of another node", ingress: true,
			in:  mkOuter(macA, macB, nodeC.Addr(), nodeA.Addr(), 1, nodeA.Port(), udpPkt(remoteCl4, srvL4, 5555, 53, ipo{}), 0),
			act: ActDrop, reason: ReasonWrongSource},
		{name: "local instance IP from a peer", ingress: true, in: fromB(udpPkt(cliI4, srvL4, 5555, 53, ipo{})), act: ActDrop, reason: ReasonWrongSource},
		{name: "service IP as source", ingress: true, in: fromB(udpPkt(svcR4, cli4, 53, 40001, ipo{})), act: ActDrop, reason: ReasonWrongSource},
		{name: "source outside the platform", ingress: true, in: fromB(udpPkt(outside4, srvL4, 5555, 53, ipo{})), act: ActDrop, reason: ReasonWrongSource},
		{name: "unknown source in the service ranges", ingress: true, in: fromB(udpPkt(unknown4, srvL4, 5555, 53, ipo{})), act: ActSlowPath, reason: ReasonUnknownSource},
		{name: "other udp port", ingress: true,
			in: mkOuter(macA, macB, nodeB.Addr(), nodeA.Addr(), 51000, 53, udpPkt(srvRI4, cli4, 53, 40000, ipo{}), 0), act: ActPass},
		{name: "to another address", ingress: true,
			in: mkOuter(macA, macB, nodeB.Addr(), a4("198.18.0.7"), 51000, nodeA.Port(), udpPkt(srvRI4, cli4, 53, 40000, ipo{}), 0), act: ActPass},
		{name: "tcp to node", ingress: true, in: mkEth(macA, macB, tcpPkt(nodeB.Addr(), nodeA.Addr(), 22, 50103)), act: ActPass},
		{name: "not local", ingress: true, in: fromB(udpPkt(srvRI4, a4("10.18.0.50"), 53, 40000, ipo{})), act: ActDrop, reason: ReasonNotLocal},
		{name: "outer fragment", ingress: true, in: mkEth(macA, macB, mkIP(nodeB.Addr(), nodeA.Addr(), ProtoUDP,
			mkUDP(nodeB.Addr(), nodeA.Addr(), 1, nodeA.Port(), udpPkt(srvRI4, cli4, 53, 40000, ipo{})), ipo{MF: true})), act: ActDrop, reason: ReasonOuterFragment},
	}
	runSteps(t, p, ctx, steps)
}

// TestGoldenICMPErrorEgress: the local server answers a client's packet
// with port unreachable; the error and its quote are translated.
func TestGoldenICMPErrorEgress(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	quote := udpPkt(cliI4, srvL4, 40000, 53, ipo{})
	quote6 := udpPkt(cliI6, srvL6, 40000, 53, ipo{})
	runSteps(t, p, ctx, []step{
		{name: "icmp4 error to client instance", port: 2,
			in:  mkEth(macH2, macC2, mkIP(srvL4, cliI4, ProtoICMP, mkICMP(srvL4, cliI4, 3, 3, 0, quote), ipo{})),
			act: ActTxPort, out: 1,
			want: toCli(mkIP(srvLI4, cli4, ProtoICMP, mkICMP(srvLI4, cli4, 3, 3, 0, udpPkt(cli4, srvLI4, 40000, 53, ipo{})), ipo{}))},
		{name: "icmp6 error to client instance", port: 2,
			in:  mkEth(macH2, macC2, mkIP(srvL6, cliI6, ProtoICMPv6, mkICMP(srvL6, cliI6, 1, 4, 0, quote6), ipo{})),
			act: ActTxPort, out: 1,
			want: toCli(mkIP(srvLI6, cli6, ProtoICMPv6, mkICMP(srvLI6, cli6, 1, 4, 0, udpPkt(cli6, srvLI6, 40000, 53, ipo{})), ipo{}))},
		// An error to a service IP is translated only when it quotes a
		// reply of one of the sender's flows (TestGoldenICMPErrorToService);
		// this one quotes a packet the service never sent.
		{name: "icmp error to a service IP without a flow", port: 2,
			in:  mkEth(macH2, macC2, mkIP(srvL4, svcR4, ProtoICMP, mkICMP(srvL4, svcR4, 3, 3, 0, quote), ipo{})),
			act: ActDrop, reason: ReasonICMPNoFlow},
	})
}

// TestGoldenICMPErrorToService: a client's flow to a service IP picked an
// instance; the replies reached the client from the service IP. An ICMP
// error the client sends back about such a reply (to the service IP,
// quoting service IP → client nsIP) goes to the instance's nsIP, from and
// about the client's instance IP, like the flow's own packets: the quote
// becomes instance nsIP → client instance IP, the checksums follow (outer
// IPv4 header, quoted IPv4 header and UDP checksum incrementally; ICMP in
// full, ICMPv6 with its pseudo-header).
func TestGoldenICMPErrorToService(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	h := hash5
	fromSrvL := func(ip []byte) []byte { return mkEth(macH2, macC2, ip) }
	icmpErr := func(src, dst netip.Addr, typ, code uint8, rest uint32, quote []byte) []byte {
		proto := uint8(ProtoICMP)
		if !src.Is4() {
			proto = ProtoICMPv6
		}
		return mkIP(src, dst, proto, mkICMP(src, dst, typ, code, rest, quote), ipo{})
	}
	runSteps(t, p, ctx, []step{
		// Remote instance, IPv4: UDP port unreachable quoting the whole reply.
		{name: "udp4 request", port: 1, in: fromCli(udpPkt(cli4, svcR4, 40000, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI4, srvR4, 40000, 53, ipo{}), h(ProtoUDP, cli4, 40000, svcR4, 53))},
		{name: "udp4 reply", ingress: true, in: fromB(udpPkt(srvRI4, cli4, 53, 40000, ipo{})), act: ActTxPort, out: 1,
			want: toCli(udpPkt(svcR4, cli4, 53, 40000, ipo{}))},
		{name: "icmp4 port unreachable to service, remote", port: 1,
			in:   fromCli(icmpErr(cli4, svcR4, 3, 3, 0, udpPkt(svcR4, cli4, 53, 40000, ipo{}))),
			act:  ActTxUplink,
			want: toB(icmpErr(cliI4, srvR4, 3, 3, 0, udpPkt(srvR4, cliI4, 53, 40000, ipo{})), h(ProtoUDP, cli4, 40000, svcR4, 53))},
		// Remote, IPv4, TCP: fragmentation needed quoting header + 8 bytes.
		{name: "tcp4 request", port: 1, in: fromCli(tcpPkt(cli4, svcR4, 40001, 80)), act: ActTxUplink,
			want: toB(tcpPkt(cliI4, srvR4, 40001, 80), h(ProtoTCP, cli4, 40001, svcR4, 80))},
		{name: "icmp4 frag needed to service, remote", port: 1,
			in:   fromCli(icmpErr(cli4, svcR4, 3, 4, 1400, tcpPkt(svcR4, cli4, 80, 40001)[:28])),
			act:  ActTxUplink,
			want: toB(icmpErr(cliI4, srvR4, 3, 4, 1400, tcpPkt(srvR4, cliI4, 80, 40001)[:28]), h(ProtoTCP, cli4, 40001, svcR4, 80))},
		// Remote, IPv6.
		{name: "udp6 request", port: 1, in: fromCli(udpPkt(cli6, svcR6, 40000, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI6, srvR6, 40000, 53, ipo{}), h(ProtoUDP, cli6, 40000, svcR6, 53))},
		{name: "icmp6 port unreachable to service, remote", port: 1,
			in:   fromCli(icmpErr(cli6, svcR6, 1, 4, 0, udpPkt(svcR6, cli6, 53, 40000, ipo{}))),
			act:  ActTxUplink,
			want: toB(icmpErr(cliI6, srvR6, 1, 4, 0, udpPkt(srvR6, cliI6, 53, 40000, ipo{})), h(ProtoUDP, cli6, 40000, svcR6, 53))},
		{name: "tcp6 request", port: 1, in: fromCli(tcpPkt(cli6, svcR6, 40001, 80)), act: ActTxUplink,
			want: toB(tcpPkt(cliI6, srvR6, 40001, 80), h(ProtoTCP, cli6, 40001, svcR6, 80))},
		{name: "icmp6 packet too big to service, remote", port: 1,
			in:   fromCli(icmpErr(cli6, svcR6, 2, 0, 1280, tcpPkt(svcR6, cli6, 80, 40001))),
			act:  ActTxUplink,
			want: toB(icmpErr(cliI6, srvR6, 2, 0, 1280, tcpPkt(srvR6, cliI6, 80, 40001)), h(ProtoTCP, cli6, 40001, svcR6, 80))},
		// Local instance (port 2), IPv4 and IPv6: the reply came through
		// the local reply path, the error goes straight to the server.
		{name: "udp4 local request", port: 1, in: fromCli(udpPkt(cli4, svcL4, 40002, 53, ipo{})), act: ActTxPort, out: 2,
			want: toSrvL(udpPkt(cliI4, srvL4, 40002, 53, ipo{}))},
		{name: "udp4 local reply", port: 2, in: fromSrvL(udpPkt(srvL4, cliI4, 53, 40002, ipo{})), act: ActTxPort, out: 1,
			want: toCli(udpPkt(svcL4, cli4, 53, 40002, ipo{}))},
		{name: "icmp4 port unreachable to service, local", port: 1,
			in:  fromCli(icmpErr(cli4, svcL4, 3, 3, 0, udpPkt(svcL4, cli4, 53, 40002, ipo{}))),
			act: ActTxPort, out: 2,
			want: toSrvL(icmpErr(cliI4, srvL4, 3, 3, 0, udpPkt(srvL4, cliI4, 53, 40002, ipo{})))},
		{name: "udp6 local request", port: 1, in: fromCli(udpPkt(cli6, svcL6, 40002, 53, ipo{})), act: ActTxPort, out: 2,
			want: toSrvL(udpPkt(cliI6, srvL6, 40002, 53, ipo{}))},
		{name: "icmp6 port unreachable to service, local", port: 1,
			in:  fromCli(icmpErr(cli6, svcL6, 1, 4, 0, udpPkt(svcL6, cli6, 53, 40002, ipo{}))),
			act: ActTxPort, out: 2,
			want: toSrvL(icmpErr(cliI6, srvL6, 1, 4, 0, udpPkt(srvL6, cliI6, 53, 40002, ipo{})))},
		// Not about a live flow of this client: dropped and counted.
		{name: "icmp4 error to service, no flow", port: 1,
			in:  fromCli(icmpErr(cli4, svcR4, 3, 3, 0, udpPkt(svcR4, cli4, 53, 41234, ipo{}))),
			act: ActDrop, reason: ReasonICMPNoFlow},
		{name: "icmp6 error to service, no flow", port: 1,
			in:  fromCli(icmpErr(cli6, svcR6, 1, 4, 0, udpPkt(svcR6, cli6, 53, 41234, ipo{}))),
			act: ActDrop, reason: ReasonICMPNoFlow},
		{name: "icmp4 error to service quoting another service's reply", port: 1,
			in:  fromCli(icmpErr(cli4, svcR4, 3, 3, 0, udpPkt(svcL4, cli4, 53, 40002, ipo{}))),
			act: ActDrop, reason: ReasonICMPNoFlow},
		{name: "icmp4 error to service quoting the request direction", port: 1,
			in:  fromCli(icmpErr(cli4, svcR4, 3, 3, 0, udpPkt(cli4, svcR4, 40000, 53, ipo{}))),
			act: ActDrop, reason: ReasonICMPNoFlow},
		{name: "icmp4 error to service, unparsable quote", port: 1,
			in:  fromCli(icmpErr(cli4, svcR4, 3, 3, 0, udpPkt(svcR4, cli4, 53, 40000, ipo{})[:12])),
			act: ActDrop, reason: ReasonBadEmbedded},
		{name: "icmp4 error to service, fragmented", port: 1,
			in:  fromCli(mkIP(cli4, svcR4, ProtoICMP, mkICMP(cli4, svcR4, 3, 3, 0, udpPkt(svcR4, cli4, 53, 40000, ipo{})), ipo{MF: true})),
			act: ActDrop, reason: ReasonUnsupportedProto},
	})
	// The flow's instance is gone (no instance of R left): nothing to
	// send the error to; the flow is not chosen again for an error.
	b := testBuilder(nodeA)
	b.Instances = b.Instances[1:]
	tb, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	p.tables.Swap(tb)
	runSteps(t, p, ctx, []step{{name: "icmp4 error to service, instance gone", port: 1,
		in:  fromCli(icmpErr(cli4, svcR4, 3, 3, 0, udpPkt(svcR4, cli4, 53, 40000, ipo{}))),
		act: ActDrop, reason: ReasonICMPNoFlow}})
	var st Stats
	ctx.Stats(&st)
	if st.Drops[ReasonICMPNoFlow] != 5 || st.Events[EvICMPErrorTranslated] != 6 {
		t.Errorf("icmp-no-flow drops %d (want 5), icmp errors translated %d (want 6)",
			st.Drops[ReasonICMPNoFlow], st.Events[EvICMPErrorTranslated])
	}
}

// TestICMPErrorQuoteKey: the key egress looks up for an ICMP error to a
// service IP (its quote, reversed) is the forward key under which the
// flow's own packets were stored (flowKeyOf of the untranslated request).
func TestICMPErrorQuoteKey(t *testing.T) {
	for _, c := range []struct {
		name         string
		req, replied []byte
	}{
		{"udp4", udpPkt(cli4, svcR4, 40000, 53, ipo{}), udpPkt(svcR4, cli4, 53, 40000, ipo{})},
		{"tcp6", tcpPkt(cli6, svcR6, 40001, 80), tcpPkt(svcR6, cli6, 80, 40001)},
		{"echo4", echoPkt(cli4, svcR4, false, 9), echoPkt(svcR4, cli4, true, 9)},
		{"echo6", echoPkt(cli6, svcR6, false, 9), echoPkt(svcR6, cli6, true, 9)},
	} {
		var rp, ep, qp Parsed
		if r := rp.DecodeIP(c.req, 0); r != ReasonNone {
			t.Fatalf("%s: request: %v", c.name, r)
		}
		src, dst := rp.Src, rp.Dst
		proto := uint8(ProtoICMP)
		if !src.Is4() {
			proto = ProtoICMPv6
		}
		e := mkIP(src, dst, proto, mkICMP(src, dst, 3, 3, 0, c.replied), ipo{})
		if !src.Is4() {
			e = mkIP(src, dst, proto, mkICMP(src, dst, 1, 4, 0, c.replied), ipo{})
		}
		if r := ep.DecodeIP(e, 0); r != ReasonNone || !ep.isICMPError() {
			t.Fatalf("%s: error: %v", c.name, r)
		}
		if r := quoted(e, &ep, &qp); r != ReasonNone {
			t.Fatalf("%s: quote: %v", c.name, r)
		}
		qk := flowKeyOf(e, &qp)
		if got, want := qk.reverse(), flowKeyOf(c.req, &rp); got != want {
			t.Errorf("%s: quote reversed %x, flow key %x", c.name, got, want)
		}
	}
}

// fragment splits a whole upper-layer payload l4 into IP fragments of at
// most n payload bytes (n a multiple of 8).
func fragments(src, dst netip.Addr, proto uint8, l4 []byte, id uint32, n int) [][]byte {
	var out [][]byte
	for off := 0; off < len(l4); off += n {
		end := min(off+n, len(l4))
		out = append(out, mkIP(src, dst, proto, l4[off:end], ipo{ID: id, MF: end < len(l4), FragOff: off, Frag6: !src.Is4()}))
	}
	return out
}

func TestGoldenFragments(t *testing.T) {
	for _, fam := range []struct {
		name                      string
		cli, cliI, svc, srv, srvI netip.Addr
	}{
		{"v4", cli4, cliI4, svcR4, srvR4, srvRI4},
		{"v6", cli6, cliI6, svcR6, srvR6, srvRI6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			p, ctx := newTestProc(t, nodeA)
			big := make([]byte, 100)
			for i := range big {
				big[i] = byte(i)
			}
			hf := hash5(ProtoUDP, fam.cli, 40000, fam.svc, 53)
			in := fragments(fam.cli, fam.svc, ProtoUDP, mkUDP(fam.cli, fam.svc, 40000, 53, big), 0x1234, 64)
			want := fragments(fam.cliI, fam.srv, ProtoUDP, mkUDP(fam.cliI, fam.srv, 40000, 53, big), 0x1234, 64)
			replyIn := fragments(fam.srvI, fam.cli, ProtoUDP, mkUDP(fam.srvI, fam.cli, 53, 40000, big), 0x99, 64)
			replyWant := fragments(fam.svc, fam.cli, ProtoUDP, mkUDP(fam.svc, fam.cli, 53, 40000, big), 0x99, 64)
			orphan := fragments(fam.cli, fam.svc, ProtoUDP, mkUDP(fam.cli, fam.svc, 40000, 53, big), 0x4321, 64)[1]
			runSteps(t, p, ctx, []step{
				{name: "first", port: 1, in: fromCli(in[0]), act: ActTxUplink, want: toB(want[0], hf)},
				{name: "later", port: 1, in: fromCli(in[1]), act: ActTxUplink, want: toB(want[1], hf)},
				{name: "orphan later", port: 1, in: fromCli(orphan), act: ActDrop, reason: ReasonFragUnknown},
				{name: "reply first", ingress: true, in: fromB(replyIn[0]), act: ActTxPort, out: 1, want: toCli(replyWant[0])},
				{name: "reply later", ingress: true, in: fromB(replyIn[1]), act: ActTxPort, out: 1, want: toCli(replyWant[1])},
			})
		})
	}
}

// TestGoldenIPv6Underlay: node addresses are IPv6; the outer header is
// IPv6 with a computed UDP checksum and the flow hash as flow label.
func TestGoldenIPv6Underlay(t *testing.T) {
	p, ctx := newTestProc(t, nodeA6)
	h4 := hash5(ProtoUDP, cli4, 40000, svcR4, 53)
	h6 := hash5(ProtoTCP, cli6, 40001, svcR6, 80)
	outer := func(ip []byte, h uint32) []byte {
		return mkOuter(macB, macA, nodeA6.Addr(), nodeB6.Addr(), TunnelSourcePort(h), nodeB6.Port(), ip, h&0xfffff)
	}
	from := func(ip []byte) []byte {
		return mkOuter(macA, macB, nodeB6.Addr(), nodeA6.Addr(), 50000, nodeA6.Port(), ip, 0)
	}
	big := mkIP(cli4, svcR4, ProtoUDP, mkUDP(cli4, svcR4, 1, 2, make([]byte, 1460-28)), ipo{DF: true})
	runSteps(t, p, ctx, []step{
		{name: "udp4 over v6", port: 1, in: fromCli(udpPkt(cli4, svcR4, 40000, 53, ipo{})), act: ActTxUplink, want: outer(udpPkt(cliI4, srvR4, 40000, 53, ipo{}), h4)},
		{name: "tcp6 over v6", port: 1, in: fromCli(tcpPkt(cli6, svcR6, 40001, 80)), act: ActTxUplink, want: outer(tcpPkt(cliI6, srvR6, 40001, 80), h6)},
		{name: "reply over v6", ingress: true, in: from(udpPkt(srvRI4, cli4, 53, 40000, ipo{})), act: ActTxPort, out: 1, want: toCli(udpPkt(svcR4, cli4, 53, 40000, ipo{}))},
		{name: "too big for v6 underlay", port: 1, in: fromCli(big), act: ActTxPort, out: 1,
			want: toCli(mkIP(svcR4, cli4, ProtoICMP, mkICMP(svcR4, cli4, 3, 4, 1452, big[:576-28]), ipo{}))},
		{name: "v4 peer node from v6 node", port: 1, in: fromCli(udpPkt(cli4, svcN4, 1, 2, ipo{})), act: ActDrop, reason: ReasonNodeFamily},
	})
}

// TestChecksumModes: a container with TX offload sends a partial checksum
// (only the pseudo-header sum). Recompute mode (default) fixes it;
// incremental mode trusts it (and would corrupt it).
func TestChecksumModes(t *testing.T) {
	partial := func(src, dst netip.Addr) []byte {
		b := tcpPkt(src, dst, 40001, 80)
		l4 := len(b) - 20
		ps := ^refChecksum(pseudo(src, dst, ProtoTCP, l4)) // folded sum, not complemented
		be.PutUint16(b[20+16:], ps)
		return b
	}
	p, ctx := newTestProc(t, nodeA)
	runSteps(t, p, ctx, []step{{name: "partial recomputed", port: 1, in: fromCli(partial(cli4, svcL4)), act: ActTxPort, out: 2,
		want: toSrvL(tcpPkt(cliI4, srvL4, 40001, 80))}})

	b := testBuilder(nodeA)
	b.Ports[0].Csum = CsumIncremental
	tb, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	p.tables.Swap(tb)
	runSteps(t, p, ctx, []step{{name: "full checksum incremental", port: 1, in: fromCli(tcpPkt(cli4, svcL4, 40002, 80)), act: ActTxPort, out: 2,
		want: toSrvL(tcpPkt(cliI4, srvL4, 40002, 80))}})
}

// TestGoldenLocalReply: client and server on this node; the server's reply
// to the client's instance IP is delivered locally with the service IP the
// client addressed as its source (TCP both directions, and ICMP errors).
func TestGoldenLocalReply(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	fromSrvL := func(ip []byte) []byte { return mkEth(macH2, macC2, ip) }
	runSteps(t, p, ctx, []step{
		{name: "tcp4 request", port: 1, in: fromCli(tcpPkt(cli4, svcL4, 40000, 80)), act: ActTxPort, out: 2,
			want: toSrvL(tcpPkt(cliI4, srvL4, 40000, 80))},
		{name: "tcp4 reply", port: 2, in: fromSrvL(tcpPkt(srvL4, cliI4, 80, 40000)), act: ActTxPort, out: 1,
			want: toCli(tcpPkt(svcL4, cli4, 80, 40000))},
		{name: "tcp6 request", port: 1, in: fromCli(tcpPkt(cli6, svcL6, 40000, 80)), act: ActTxPort, out: 2,
			want: toSrvL(tcpPkt(cliI6, srvL6, 40000, 80))},
		{name: "tcp6 reply", port: 2, in: fromSrvL(tcpPkt(srvL6, cliI6, 80, 40000)), act: ActTxPort, out: 1,
			want: toCli(tcpPkt(svcL6, cli6, 80, 40000))},
		{name: "udp4 request", port: 1, in: fromCli(udpPkt(cli4, svcL4, 40001, 53, ipo{})), act: ActTxPort, out: 2,
			want: toSrvL(udpPkt(cliI4, srvL4, 40001, 53, ipo{}))},
		{name: "port unreachable", port: 2,
			in:  fromSrvL(mkIP(srvL4, cliI4, ProtoICMP, mkICMP(srvL4, cliI4, 3, 3, 0, udpPkt(cliI4, srvL4, 40001, 53, ipo{})), ipo{})),
			act: ActTxPort, out: 1,
			want: toCli(mkIP(svcL4, cli4, ProtoICMP, mkICMP(svcL4, cli4, 3, 3, 0, udpPkt(cli4, svcL4, 40001, 53, ipo{})), ipo{}))},
	})
}

// TestGoldenInstanceIPAfterService: a client port that talked to a service
// IP and then straight to the instance IP that service picked (an ephemeral
// port reused within the flow's idle time; the e2e ClusterDown loss) gets
// the direct replies with the instance IP as their source, not the service
// IP, which the client's kernel would drop (UDP NoPorts, TCP RST) with no
// counter in the data plane. Using the service again takes the replies back.
func TestGoldenInstanceIPAfterService(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	h := hash5
	fromSrvL := func(ip []byte) []byte { return mkEth(macH2, macC2, ip) }
	runSteps(t, p, ctx, []step{
		{name: "udp4 via service", port: 1, in: fromCli(udpPkt(cli4, svcR4, 40000, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI4, srvR4, 40000, 53, ipo{}), h(ProtoUDP, cli4, 40000, svcR4, 53))},
		{name: "udp4 service reply", ingress: true, in: fromB(udpPkt(srvRI4, cli4, 53, 40000, ipo{})), act: ActTxPort, out: 1,
			want: toCli(udpPkt(svcR4, cli4, 53, 40000, ipo{}))},
		{name: "udp4 direct", port: 1, in: fromCli(udpPkt(cli4, srvRI4, 40000, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI4, srvR4, 40000, 53, ipo{}), h(ProtoUDP, cli4, 40000, srvRI4, 53))},
		{name: "udp4 direct reply", ingress: true, in: fromB(udpPkt(srvRI4, cli4, 53, 40000, ipo{})), act: ActTxPort, out: 1,
			want: toCli(udpPkt(srvRI4, cli4, 53, 40000, ipo{}))},
		{name: "udp4 port unreachable, direct", ingress: true,
			in:  fromB(mkIP(srvRI4, cli4, ProtoICMP, mkICMP(srvRI4, cli4, 3, 3, 0, udpPkt(cli4, srvRI4, 40000, 53, ipo{})), ipo{})),
			act: ActTxPort, out: 1,
			want: toCli(mkIP(srvRI4, cli4, ProtoICMP, mkICMP(srvRI4, cli4, 3, 3, 0, udpPkt(cli4, srvRI4, 40000, 53, ipo{})), ipo{}))},
		{name: "udp4 via service again", port: 1, in: fromCli(udpPkt(cli4, svcR4, 40000, 53, ipo{})), act: ActTxUplink,
			want: toB(udpPkt(cliI4, srvR4, 40000, 53, ipo{}), h(ProtoUDP, cli4, 40000, svcR4, 53))},
		{name: "udp4 service reply again", ingress: true, in: fromB(udpPkt(srvRI4, cli4, 53, 40000, ipo{})), act: ActTxPort, out: 1,
			want: toCli(udpPkt(svcR4, cli4, 53, 40000, ipo{}))},
		{name: "tcp6 via service", port: 1, in: fromCli(tcpPkt(cli6, svcR6, 46820, 80)), act: ActTxUplink,
			want: toB(tcpPkt(cliI6, srvR6, 46820, 80), h(ProtoTCP, cli6, 46820, svcR6, 80))},
		{name: "tcp6 direct", port: 1, in: fromCli(tcpPkt(cli6, srvRI6, 46820, 80)), act: ActTxUplink,
			want: toB(tcpPkt(cliI6, srvR6, 46820, 80), h(ProtoTCP, cli6, 46820, srvRI6, 80))},
		{name: "tcp6 direct reply", ingress: true, in: fromB(tcpPkt(srvRI6, cli6, 80, 46820)), act: ActTxPort, out: 1,
			want: toCli(tcpPkt(srvRI6, cli6, 80, 46820))},
		{name: "echo4 via service", port: 1, in: fromCli(echoPkt(cli4, svcR4, false, 9)), act: ActTxUplink,
			want: toB(echoPkt(cliI4, srvR4, false, 9), h(ProtoICMP, cli4, 9, svcR4, 9))},
		{name: "echo4 direct", port: 1, in: fromCli(echoPkt(cli4, srvRI4, false, 9)), act: ActTxUplink,
			want: toB(echoPkt(cliI4, srvR4, false, 9), h(ProtoICMP, cli4, 9, srvRI4, 9))},
		{name: "echo4 direct reply", ingress: true, in: fromB(echoPkt(srvRI4, cli4, true, 9)), act: ActTxPort, out: 1,
			want: toCli(echoPkt(srvRI4, cli4, true, 9))},
		// Both ends on this node: the reply is un-translated on egress.
		{name: "tcp4 local via service", port: 1, in: fromCli(tcpPkt(cli4, svcL4, 40002, 80)), act: ActTxPort, out: 2,
			want: toSrvL(tcpPkt(cliI4, srvL4, 40002, 80))},
		{name: "tcp4 local direct", port: 1, in: fromCli(tcpPkt(cli4, srvLI4, 40002, 80)), act: ActTxPort, out: 2,
			want: toSrvL(tcpPkt(cliI4, srvL4, 40002, 80))},
		{name: "tcp4 local direct reply", port: 2, in: fromSrvL(tcpPkt(srvL4, cliI4, 80, 40002)), act: ActTxPort, out: 1,
			want: toCli(tcpPkt(srvLI4, cli4, 80, 40002))},
	})
}

// TestGoldenIPv6ExtHeaders: extension headers are walked to the upper layer
// and kept; the UDP checksum (pseudo-header) follows the translation.
func TestGoldenIPv6ExtHeaders(t *testing.T) {
	withExt := func(src, dst netip.Addr) []byte {
		l4 := mkUDP(src, dst, 40000, 53, pay)
		hbh := []byte{protoDestOpts, 0, 1, 4, 0, 0, 0, 0}                      // hop-by-hop, PadN
		dopt := []byte{ProtoUDP, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // destination options, 16 bytes
		b := mkIP(src, dst, protoHopByHop, append(append(append([]byte{}, hbh...), dopt...), l4...), ipo{})
		return b
	}
	p, ctx := newTestProc(t, nodeA)
	runSteps(t, p, ctx, []step{
		{name: "hbh+dstopts udp6", port: 1, in: fromCli(withExt(cli6, svcR6)), act: ActTxUplink,
			want: toB(withExt(cliI6, srvR6), hash5(ProtoUDP, cli6, 40000, svcR6, 53))},
		{name: "hbh not first", port: 1, in: fromCli(func() []byte {
			b := withExt(cli6, svcR6)
			b[48] = protoHopByHop // the destination options header now points to a second hop-by-hop
			return b
		}()), act: ActDrop, reason: ReasonBadIPv6Ext},
	})
}

// TestGoldenIPv4Options: the header length is honoured and options are kept.
func TestGoldenIPv4Options(t *testing.T) {
	withOpts := func(src, dst netip.Addr) []byte {
		b := udpPkt(src, dst, 40000, 53, ipo{})
		o := append(append(append([]byte{}, b[:20]...), 1, 1, 1, 0), b[20:]...) // NOP NOP NOP EOL
		o[0] = 0x46
		be.PutUint16(o[2:], uint16(len(o)))
		o[10], o[11] = 0, 0
		be.PutUint16(o[10:], refChecksum(o[:24]))
		return o
	}
	p, ctx := newTestProc(t, nodeA)
	runSteps(t, p, ctx, []step{
		{name: "udp4 with options", port: 1, in: fromCli(withOpts(cli4, svcR4)), act: ActTxUplink,
			want: toB(withOpts(cliI4, srvR4), hash5(ProtoUDP, cli4, 40000, svcR4, 53))},
	})
}

// TestGoldenTooBigIPv6Floor: on an underlay whose tunnel carries less than
// 1280 inner bytes (Build accepts down to 576), IPv6 packet-too-big still
// advertises 1280 (RFC 8200 §5, RFC 8201 §4), IPv6 packets of at most 1280
// bytes that do not fit are dropped (no error could help), and IPv4 gets
// the real limit.
func TestGoldenTooBigIPv6Floor(t *testing.T) {
	for _, c := range []struct {
		name  string
		node  netip.AddrPort
		mtu   int
		limit int // inner limit advertised to IPv4
	}{
		{"v4 underlay", nodeA, 1200, 1200 - 28},
		{"v6 underlay", nodeA6, 1300, 1300 - 48},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := testBuilder(c.node)
			b.Node.UnderlayMTU = c.mtu
			tb, err := b.Build()
			if err != nil {
				t.Fatal(err)
			}
			var h TableHolder
			h.Swap(tb)
			p, ctx := NewProcessor(&h, NewFlowTable(FlowConfig{Capacity: 64})), NewWorkerCtx()
			big6 := mkIP(cli6, svcR6, ProtoUDP, mkUDP(cli6, svcR6, 1, 2, make([]byte, 1300-48)), ipo{})
			mid6 := mkIP(cli6, svcR6, ProtoUDP, mkUDP(cli6, svcR6, 1, 2, make([]byte, 1280-48)), ipo{})
			big4 := mkIP(cli4, svcR4, ProtoUDP, mkUDP(cli4, svcR4, 1, 2, make([]byte, 1280-28)), ipo{DF: true})
			runSteps(t, p, ctx, []step{
				{name: "v6 above 1280", port: 1, in: fromCli(big6), act: ActTxPort, out: 1,
					want: toCli(mkIP(svcR6, cli6, ProtoICMPv6, mkICMP(svcR6, cli6, 2, 0, 1280, big6[:1280-48]), ipo{}))},
				{name: "v6 of 1280", port: 1, in: fromCli(mid6), act: ActDrop, reason: ReasonTooBig},
				{name: "v4 gets the real limit", port: 1, in: fromCli(big4), act: ActTxPort, out: 1,
					want: toCli(mkIP(svcR4, cli4, ProtoICMP, mkICMP(svcR4, cli4, 3, 4, uint32(c.limit), big4[:576-28]), ipo{}))},
			})
		})
	}
}
