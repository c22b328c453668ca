//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfprog

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/internal/pkttest"
)

// skbMD is struct __sk_buff, the context of a TC test run (the kernel
// takes ifindex, gso_size and a few others from it; the rest is zero).
type skbMD struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto uint32
	Priority, IngressIfindex, Ifindex, TCIndex                                  uint32
	CB                                                                          [5]uint32
	Hash, TCClassid, Data, DataEnd, NapiID                                      uint32
	Family, RemoteIP4, LocalIP4                                                 uint32
	RemoteIP6, LocalIP6                                                         [4]uint32
	RemotePort, LocalPort, DataMeta                                             uint32
	FlowKeys, Tstamp                                                            uint64
	WireLen, GsoSegs                                                            uint32
	Sk                                                                          uint64
	GsoSize                                                                     uint32
	TstampType                                                                  uint8
	_                                                                           [3]byte
	Hwtstamp                                                                    uint64
}

// TC actions (linux/pkt_cls.h).
const (
	actOK       = 0
	actShot     = 2
	actRedirect = 7
)

var (
	tNode4   = mustAddr("198.18.0.1")
	tPeer4   = mustAddr("198.18.0.2")
	tStrange = mustAddr("198.18.0.9")
	tCli4    = mustAddr("10.18.0.2")
	tCli6    = mustAddr("fc00::2")
	tCliI4   = mustAddr("10.30.0.7") // the client's instance IP
	tCliI6   = mustAddr("fdff::7")
	tSvc4    = mustAddr("10.30.0.2") // an RR service IP
	tSvc6    = mustAddr("fdff:2000::2")
	tSrv4    = mustAddr("10.18.0.66") // the chosen instance's nsIP, on the peer
	tSrv6    = mustAddr("fc00::102")
	tSrvI4   = mustAddr("10.30.0.3") // its instance IP
	tCtrMAC  = [6]byte{0x0a, 0x58, 10, 18, 0, 2}
	tHostMAC = [6]byte{0x0e, 0x58, 10, 18, 0, 2}
)

// tierBed is a loaded tier whose "port" and "uplink" are both lo (ifindex
// 1: test runs take their device from it), with a punt device configured.
type tierBed struct {
	o *Objects
	t *Tier
	n uint32 // next free slot
}

func newTierBed(t *testing.T) *tierBed {
	t.Helper()
	o := load(t, Config{})
	tr, err := LoadTier(TierConfig{Share: o, Flows: 64, Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(o.SetNode(tNode4, netip.Addr{}, tunnelPort))
	must(o.ReplacePeers([]Peer{{Addr: tPeer4, TunnelPort: tunnelPort}}))
	must(o.SetPort(loIfindex, Port{IP4: tCli4, IP6: tCli6, HostMAC: tHostMAC}))
	must(tr.SetConfig(loIfindex, 99))
	return &tierBed{o: o, t: tr}
}

// add writes a slot and publishes k for it; active says whether the gate
// is open.
func (b *tierBed) add(t *testing.T, k TierKey, s TierSlot, active bool) *TierSlot {
	t.Helper()
	i := b.n
	b.n++
	p := b.t.Slot(i)
	*p = s
	if active {
		p.Gate = TierGateActive
	}
	if err := b.t.Publish(&k, i); err != nil {
		t.Fatal(err)
	}
	return p
}

// run feeds frame to prog and returns the action and the frame after.
func (b *tierBed) run(t *testing.T, prog *ebpf.Program, frame []byte, gso uint32) (int, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+256)
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out, Repeat: 1,
		Context: &skbMD{Ifindex: loIfindex, GsoSize: gso}})
	if err != nil {
		t.Fatalf("test-run: %v", err)
	}
	// DataOut is resized to what the program left.
	return int(int32(ret)), out
}

func (b *tierBed) counters(t *testing.T) map[string]uint64 {
	t.Helper()
	c, err := b.t.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func encapSlot(dnat netip.Addr, snat netip.Addr) TierSlot {
	o, sum := OuterTemplate(tNode4, tPeer4, 49999, tunnelPort)
	return TierSlot{Flags: TierSNAT | TierDNAT | TierEncap, OutIfindex: 99, MaxLen: 1472,
		NewSaddr: AddrWords(snat), NewDaddr: AddrWords(dnat), Outer: o, OuterSum: sum,
		OuterLen: uint32(TierOuterLen), Kind: TierKindService}
}

func TestTierPort(t *testing.T) {
	b := newTierBed(t)
	tcpK := NewTierKey(loIfindex, fastpath.ProtoTCP, netip.AddrPortFrom(tCli4, 40000), netip.AddrPortFrom(tSvc4, 80))
	udpK := NewTierKey(loIfindex, fastpath.ProtoUDP, netip.AddrPortFrom(tCli4, 40001), netip.AddrPortFrom(tSvc4, 53))
	zeroK := NewTierKey(loIfindex, fastpath.ProtoUDP, netip.AddrPortFrom(tCli4, 40002), netip.AddrPortFrom(tSvc4, 53))
	v6K := NewTierKey(loIfindex, fastpath.ProtoTCP, netip.AddrPortFrom(tCli6, 40003), netip.AddrPortFrom(tSvc6, 80))
	pendK := NewTierKey(loIfindex, fastpath.ProtoUDP, netip.AddrPortFrom(tCli4, 40004), netip.AddrPortFrom(tSvc4, 53))
	localK := NewTierKey(loIfindex, fastpath.ProtoUDP, netip.AddrPortFrom(tCli4, 40005), netip.AddrPortFrom(tSvc4, 53))
	b.add(t, tcpK, encapSlot(tSrv4, tCliI4), true)
	udp := b.add(t, udpK, encapSlot(tSrv4, tCliI4), true)
	b.add(t, zeroK, encapSlot(tSrv4, tCliI4), true)
	b.add(t, v6K, encapSlot(tSrv6, tCliI6), true)
	pend := b.add(t, pendK, encapSlot(tSrv4, tCliI4), false)
	b.add(t, localK, TierSlot{Flags: TierSNAT | TierDNAT | TierDeliver, OutIfindex: 42,
		NewSaddr: AddrWords(tCliI4), NewDaddr: AddrWords(tSrv4), Dmac: [6]byte{2, 0, 0, 0, 0, 0x66}, Smac: [6]byte{2, 0, 0, 0, 0, 0x67}}, true)

	payload := bytes.Repeat([]byte("x"), 100)
	macs := func(ip []byte) []byte { return pkttest.Eth(tHostMAC, tCtrMAC, ip) }
	udpZero := pkttest.UDP(tCli4, tSvc4, 40002, 53, payload)
	binary.BigEndian.PutUint16(udpZero[26:], 0) // an IPv4 UDP checksum of 0: none

	for _, tc := range []struct {
		name     string
		in       []byte
		gso      uint32
		act      int
		counter  string
		wantIP   []byte // the inner packet after: rewritten as the slot says
		encap    bool
		puntMeta []byte // punted: the Ethernet destination
	}{
		{name: "tcp encap", in: macs(pkttest.TCP(tCli4, tSvc4, 40000, 80, payload)), act: actRedirect, counter: "fast_port",
			wantIP: pkttest.TCP(tCliI4, tSrv4, 40000, 80, payload), encap: true},
		{name: "udp encap", in: macs(pkttest.UDP(tCli4, tSvc4, 40001, 53, payload)), act: actRedirect, counter: "fast_port",
			wantIP: pkttest.UDP(tCliI4, tSrv4, 40001, 53, payload), encap: true},
		{name: "udp checksum 0 stays 0", in: macs(udpZero), act: actRedirect, counter: "fast_port", encap: true},
		{name: "v6 tcp over v4", in: macs(pkttest.TCP(tCli6, tSvc6, 40003, 80, payload)), act: actRedirect, counter: "fast_port",
			wantIP: pkttest.TCP(tCliI6, tSrv6, 40003, 80, payload), encap: true},
		{name: "local delivery", in: macs(pkttest.UDP(tCli4, tSvc4, 40005, 53, payload)), act: actRedirect, counter: "fast_port",
			wantIP: pkttest.UDP(tCliI4, tSrv4, 40005, 53, payload)},
		// A GSO packet of a kind the kernel cannot encapsulate (test runs
		// cannot make a TCP one; TCP is end to end in dataplane's tests):
		// untouched, to the workers.
		{name: "gso the kernel refuses", in: macs(pkttest.TCP(tCli4, tSvc4, 40000, 80, payload)), gso: 1372, act: actRedirect, counter: "punt_other",
			puntMeta: []byte{0x02, 0, 0, 0, 0, 1}},
		{name: "gso segments too big", in: macs(pkttest.TCP(tCli4, tSvc4, 40000, 80, payload)), gso: 1440, act: actRedirect, counter: "punt_size",
			puntMeta: []byte{0x02, 0, 0, 0, 0, 1}},
		{name: "too big", in: macs(pkttest.UDP(tCli4, tSvc4, 40001, 53, make([]byte, 1460))), act: actRedirect, counter: "punt_size",
			puntMeta: []byte{0x02, 0, 0, 0, 0, 1}},
		{name: "no flow", in: macs(pkttest.UDP(tCli4, tSvc4, 41000, 53, payload)), act: actRedirect, counter: "punt_miss",
			puntMeta: []byte{0x02, 0, 0, 0, 0, 1}},
		{name: "pending", in: macs(pkttest.UDP(tCli4, tSvc4, 40004, 53, payload)), act: actRedirect, counter: "punt_pending",
			puntMeta: []byte{0x02, 1, 0, 0, 0, 1}},
		{name: "icmp to a service", in: macs(icmpEcho(tCli4, tSvc4)), act: actRedirect, counter: "punt_other",
			puntMeta: []byte{0x02, 0, 0, 0, 0, 1}},
		{name: "not a service", in: macs(pkttest.UDP(tCli4, mustAddr("10.18.0.3"), 1, 2, payload)), act: actOK, counter: "passed"},
		{name: "spoofed", in: macs(pkttest.UDP(mustAddr("10.18.0.3"), tSvc4, 1, 2, payload)), act: actShot, counter: "spoofed"},
		{name: "to a tunnel port", in: macs(pkttest.UDP(tCli4, tPeer4, 1, tunnelPort, payload)), act: actShot, counter: "to_tunnel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.counters(t)
			act, out := b.run(t, b.t.PortProgram(), tc.in, tc.gso)
			if act != tc.act {
				t.Fatalf("action %d, want %d", act, tc.act)
			}
			after := b.counters(t)
			for name, v := range after {
				want := uint64(0)
				if name == tc.counter {
					want = 1
				}
				if v-before[name] != want {
					t.Errorf("counter %s moved by %d, want %d", name, v-before[name], want)
				}
			}
			if tc.puntMeta != nil {
				if !bytes.Equal(out[:6], tc.puntMeta) || !bytes.Equal(out[6:len(tc.in)], tc.in[6:]) {
					t.Errorf("punted frame %x…, want destination %x and the rest unchanged", out[:20], tc.puntMeta)
				}
				return
			}
			if tc.act != actRedirect {
				return
			}
			inner := out[fastpath.EthernetLen:]
			if tc.encap {
				checkOuter(t, out, len(tc.in)-fastpath.EthernetLen)
				inner = out[fastpath.EthernetLen+TierOuterLen:]
			} else if !bytes.Equal(out[:12], []byte{2, 0, 0, 0, 0, 0x66, 2, 0, 0, 0, 0, 0x67}) {
				t.Errorf("delivered with MACs %x, want the slot's", out[:12])
			}
			inner = inner[:len(tc.in)-fastpath.EthernetLen]
			if msg := pkttest.Verify(inner); msg != "" {
				t.Errorf("inner packet: %s: %x", msg, inner)
			}
			if tc.wantIP != nil && !bytes.Equal(inner, tc.wantIP) {
				t.Errorf("inner packet\n%x\nwant\n%x", inner, tc.wantIP)
			}
			if tc.name == "udp checksum 0 stays 0" && binary.BigEndian.Uint16(inner[26:]) != 0 {
				t.Errorf("UDP checksum %#x, want 0", binary.BigEndian.Uint16(inner[26:]))
			}
		})
	}
	if pend.Gate != 1 {
		t.Errorf("pending slot's gate %#x, want one counted punt", pend.Gate)
	}
	if udp.Packets != 1 || udp.Bytes == 0 || udp.LastNs == 0 {
		t.Errorf("udp slot counted %d packets, %d bytes, last %d", udp.Packets, udp.Bytes, udp.LastNs)
	}
}

// checkOuter checks the outer IPv4 and UDP headers encap wrote in front of
// an inner packet of innerLen bytes.
func checkOuter(t *testing.T, frame []byte, innerLen int) {
	t.Helper()
	if et := binary.BigEndian.Uint16(frame[12:]); et != fastpath.EtherTypeIPv4 {
		t.Errorf("EtherType %#x, want IPv4", et)
	}
	ip := frame[fastpath.EthernetLen:]
	if int(binary.BigEndian.Uint16(ip[2:])) != innerLen+TierOuterLen || fastpath.Checksum(ip[:20], 0) != 0 {
		t.Errorf("outer IPv4 %x: want total length %d and a valid checksum", ip[:20], innerLen+TierOuterLen)
	}
	if netip.AddrFrom4([4]byte(ip[12:16])) != tNode4 || netip.AddrFrom4([4]byte(ip[16:20])) != tPeer4 || ip[6] != 0x40 {
		t.Errorf("outer IPv4 %x: want %v → %v with DF", ip[:20], tNode4, tPeer4)
	}
	udp := ip[20:]
	if binary.BigEndian.Uint16(udp[2:]) != tunnelPort || int(binary.BigEndian.Uint16(udp[4:])) != innerLen+8 || binary.BigEndian.Uint16(udp[6:]) != 0 {
		t.Errorf("outer UDP %x: want port %d, length %d, checksum 0", udp[:8], tunnelPort, innerLen+8)
	}
}

func icmpEcho(src, dst netip.Addr) []byte {
	ip := pkttest.UDP(src, dst, 1, 1, make([]byte, 8))
	ip[9] = fastpath.ProtoICMP
	return ip
}

func TestTierUplink(t *testing.T) {
	b := newTierBed(t)
	// A reply of the server (instance IP tSrvI4) to the client: its
	// source becomes the service IP again.
	replyK := NewTierKey(loIfindex, fastpath.ProtoUDP, netip.AddrPortFrom(tSrvI4, 53), netip.AddrPortFrom(tCli4, 40001))
	reqK := NewTierKey(loIfindex, fastpath.ProtoTCP, netip.AddrPortFrom(tSrvI4, 40000), netip.AddrPortFrom(tCli4, 80))
	deliver := func(flags uint32) TierSlot {
		return TierSlot{Flags: flags | TierDecap | TierDeliver, OutIfindex: 42, Peer: AddrWords(tPeer4), PeerFamily: 4,
			NewSaddr: AddrWords(tSvc4), Dmac: tCtrMAC, Smac: tHostMAC, Kind: TierKindIngress}
	}
	b.add(t, replyK, deliver(TierSNAT), true)
	b.add(t, reqK, deliver(0), true)
	payload := bytes.Repeat([]byte("y"), 64)
	tunnel := func(from netip.Addr, dport uint16, inner []byte) []byte {
		return pkttest.Eth([6]byte{2, 0, 0, 0, 0, 1}, [6]byte{2, 0, 0, 0, 0, 2},
			pkttest.UDP(from, tNode4, 51000, dport, inner))
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		act     int
		counter string
		want    []byte // the delivered frame
	}{
		{name: "reply translated", in: tunnel(tPeer4, tunnelPort, pkttest.UDP(tSrvI4, tCli4, 53, 40001, payload)),
			act: actRedirect, counter: "fast_uplink", want: pkttest.Eth(tCtrMAC, tHostMAC, pkttest.UDP(tSvc4, tCli4, 53, 40001, payload))},
		{name: "request delivered", in: tunnel(tPeer4, tunnelPort, pkttest.TCP(tSrvI4, tCli4, 40000, 80, payload)),
			act: actRedirect, counter: "fast_uplink", want: pkttest.Eth(tCtrMAC, tHostMAC, pkttest.TCP(tSrvI4, tCli4, 40000, 80, payload))},
		{name: "no flow", in: tunnel(tPeer4, tunnelPort, pkttest.UDP(tSrvI4, tCli4, 53, 40009, payload)), act: actRedirect, counter: "punt_miss"},
		{name: "not a peer", in: tunnel(tStrange, tunnelPort, pkttest.UDP(tSrvI4, tCli4, 53, 40001, payload)), act: actShot, counter: "not_peer"},
		{name: "other port", in: tunnel(tStrange, 53, pkttest.UDP(tSrvI4, tCli4, 53, 40001, payload)), act: actOK, counter: "passed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.counters(t)
			act, out := b.run(t, b.t.UplinkProgram(), tc.in, 0)
			if act != tc.act {
				t.Fatalf("action %d, want %d", act, tc.act)
			}
			after := b.counters(t)
			for name, v := range after {
				want := uint64(0)
				if name == tc.counter {
					want = 1
				}
				if v-before[name] != want {
					t.Errorf("counter %s moved by %d, want %d", name, v-before[name], want)
				}
			}
			if tc.want == nil {
				return
			}
			got := out[:len(tc.want)]
			if !bytes.Equal(got, tc.want) {
				t.Errorf("delivered\n%x\nwant\n%x", got, tc.want)
			}
			if msg := pkttest.Verify(got[fastpath.EthernetLen:]); msg != "" {
				t.Errorf("delivered packet: %s", msg)
			}
		})
	}
	// A flow from another peer than its slot's goes to the workers.
	if err := b.o.ReplacePeers([]Peer{{Addr: tPeer4}, {Addr: tStrange}}); err != nil {
		t.Fatal(err)
	}
	if act, _ := b.run(t, b.t.UplinkProgram(), tunnel(tStrange, tunnelPort, pkttest.UDP(tSrvI4, tCli4, 53, 40001, payload)), 0); act != actRedirect ||
		b.counters(t)["punt_peer"] != 1 {
		t.Errorf("flow from the wrong peer: action %d, punt_peer %d; want a punt", act, b.counters(t)["punt_peer"])
	}
}

func TestTierPuntOut(t *testing.T) {
	b := newTierBed(t)
	ip := pkttest.UDP(tSrvI4, tCli4, 53, 40001, []byte("z"))
	for _, tc := range []struct {
		name    string
		src     [6]byte
		act     int
		counter string
		wantSrc [6]byte
	}{
		{"to the uplink", [6]byte{0x02, 0, 0, 0, 0, 99}, actRedirect, "out_uplink", [6]byte{0x02, 0, 0, 0, 0, 99}},
		{"to a port", [6]byte{0x02, 0, 0, 0, 0, 1}, actRedirect, "out_port", tHostMAC},
		{"to nowhere", [6]byte{0x02, 0, 0, 0, 0, 7}, actShot, "out_bad", [6]byte{}},
		{"no metadata", [6]byte{0x0e, 0, 0, 0, 0, 1}, actShot, "out_bad", [6]byte{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := pkttest.Eth(tCtrMAC, tc.src, ip)
			act, out := b.run(t, b.t.PuntProgram(), in, 0)
			if act != tc.act {
				t.Fatalf("action %d, want %d", act, tc.act)
			}
			if c := b.counters(t)[tc.counter]; c == 0 {
				t.Errorf("counter %s did not move", tc.counter)
			}
			if tc.act == actRedirect && !bytes.Equal(out[6:12], tc.wantSrc[:]) {
				t.Errorf("source MAC %x, want %x", out[6:12], tc.wantSrc)
			}
		})
	}
}

func TestTierKeyRoundTrip(t *testing.T) {
	for _, c := range [][2]netip.AddrPort{
		{netip.MustParseAddrPort("10.18.0.2:40000"), netip.MustParseAddrPort("10.30.0.2:80")},
		{netip.MustParseAddrPort("[fc00::2]:1"), netip.MustParseAddrPort("[fdff:2000::2]:65535")},
	} {
		k := NewTierKey(7, fastpath.ProtoTCP, c[0], c[1])
		if s, d := TierKeyAddrs(&k); s != c[0] || d != c[1] {
			t.Errorf("%v → %v: got back %v → %v", c[0], c[1], s, d)
		}
	}
}
