//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfprog

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/oakwire/oakwire/internal/testenv"
)

var (
	mustAddr = netip.MustParseAddr
	node4    = mustAddr("198.18.0.1")
	node6    = mustAddr("2001:2::1")
	peer4    = mustAddr("198.18.0.2")
	peer6    = mustAddr("2001:2::2")
	stranger = mustAddr("198.18.0.9")
)

const tunnelPort = 50103

// loIfindex is lo's ifindex, the test-run frames' ingress interface.
const loIfindex = 1

// xdpMD is struct xdp_md, the context of an XDP test run.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

func load(t *testing.T, cfg Config) *Objects {
	t.Helper()
	testenv.RequireRoot(t)
	o, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := o.Close(); err != nil {
			t.Error(err)
		}
	})
	return o
}

func counters(t *testing.T, o *Objects) map[string]uint64 {
	t.Helper()
	c, err := o.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// run feeds one frame through prog with the kernel's test-run facility and
// checks the verdict and that exactly the counter want moved, by one.
func run(t *testing.T, o *Objects, prog *ebpf.Program, in []byte, wantAct bpfXdpAction, wantCounter string) {
	t.Helper()
	before := counters(t, o)
	// The frame comes in on lo (ifindex 1, in every namespace), which
	// the tests register as a container port where xdp_port needs one.
	ret, err := prog.Run(&ebpf.RunOptions{Data: in, Repeat: 1, Context: &xdpMD{DataEnd: uint32(len(in)), IngressIfindex: loIfindex}})
	if err != nil {
		t.Fatalf("test-run: %v", err)
	}
	if got := bpfXdpAction(ret); got != wantAct {
		t.Errorf("action %v, want %v", got, wantAct)
	}
	after := counters(t, o)
	for name, v := range after {
		d := v - before[name]
		want := uint64(0)
		if name == wantCounter {
			want = 1
		}
		if d != want {
			t.Errorf("counter %s moved by %d, want %d", name, d, want)
		}
	}
}

func TestCounterNamesFromBTF(t *testing.T) {
	o := load(t, Config{})
	want := []string{"passed_not_service", "redirected", "redirect_failed", "malformed",
		"not_peer", "passed_other", "passed_not_tunnel", "spoofed", "to_tunnel"}
	if got := o.CounterNames(); !slices.Equal(got, want) {
		t.Fatalf("counter names %v, want %v", got, want)
	}
	if _, err := o.Counter("nope"); err == nil {
		t.Fatal("unknown counter: want error")
	}
}

func TestPortProgram(t *testing.T) {
	o := load(t, Config{})
	c4, c6 := mustAddr("10.18.0.2"), mustAddr("fc00::2")
	if err := o.SetPort(loIfindex, Port{IP4: c4, IP6: c6}); err != nil {
		t.Fatal(err)
	}
	if err := o.SetNode(node4, netip.Addr{}, tunnelPort); err != nil {
		t.Fatal(err)
	}
	if err := o.ReplacePeers([]Peer{{Addr: peer4, TunnelPort: 40000}, {Addr: peer6, TunnelPort: tunnelPort}}); err != nil {
		t.Fatal(err)
	}
	spoofARP := append([]byte{}, arp...)
	copy(spoofARP[14:18], []byte{10, 18, 0, 3})
	probeARP := append([]byte{}, arp...)
	copy(probeARP[14:18], []byte{0, 0, 0, 0})
	// In test-run no XSKMAP slot holds a socket: bpf_redirect_map returns
	// its fallback flags, XDP_PASS, and the program counts redirect_failed.
	for _, tc := range []struct {
		name    string
		f       frame
		act     bpfXdpAction
		counter string
	}{
		{"v4 service", frame{src: c4, dst: mustAddr("10.30.0.5"), dport: 80}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v4 service first", frame{src: c4, dst: mustAddr("10.30.0.0")}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v4 service last", frame{src: c4, dst: mustAddr("10.30.255.255")}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v4 service fragment", frame{src: c4, dst: mustAddr("10.30.0.5"), frag: 100}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v4 service tcp", frame{src: c4, dst: mustAddr("10.30.1.1"), proto: 6}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v6 service", frame{src: c6, dst: mustAddr("fdff:2000::1"), dport: 80}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v4 other container", frame{src: c4, dst: mustAddr("10.18.0.66")}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v4 below range", frame{src: c4, dst: mustAddr("10.29.255.255")}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v4 above range", frame{src: c4, dst: mustAddr("10.31.0.0")}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v4 internet", frame{src: c4, dst: mustAddr("192.0.2.1")}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v6 other container", frame{src: c6, dst: mustAddr("fc00::102")}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v6 reserved", frame{src: c6, dst: mustAddr("fdfe::1")}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"vlan v4 service", frame{vlan: true, src: c4, dst: mustAddr("10.30.0.5")}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"vlan v6 other", frame{vlan: true, src: c6, dst: mustAddr("fc00::3")}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"arp", frame{etype: 0x0806, raw: arp}, bpfXdpActionXDP_PASS, "passed_other"},
		{"vlan arp", frame{vlan: true, etype: 0x0806, raw: arp}, bpfXdpActionXDP_PASS, "passed_other"},
		{"ethernet only", frame{etype: 0x0800, raw: []byte{}}, bpfXdpActionXDP_PASS, "malformed"},
		{"truncated v4", frame{src: c4, dst: mustAddr("10.30.0.5"), trunc: 8 + 16 + 1}, bpfXdpActionXDP_PASS, "malformed"},
		{"truncated v6", frame{src: c6, dst: mustAddr("fdff::1"), trunc: 8 + 16 + 1}, bpfXdpActionXDP_PASS, "malformed"},
		{"truncated vlan", frame{vlan: true, etype: 0x0800, raw: []byte{}, trunc: 2}, bpfXdpActionXDP_PASS, "malformed"},
		{"v4 bad version", frame{etype: 0x0800, src: c6, dst: mustAddr("fdff::1")}, bpfXdpActionXDP_PASS, "malformed"},
		{"v4 bad ihl", frame{src: c4, dst: mustAddr("10.30.0.5"), ihl: 4}, bpfXdpActionXDP_PASS, "malformed"},
		// SPEC §7.2 isolation: every frame's source is checked.
		{"v4 spoofed to service", frame{src: mustAddr("10.18.0.3"), dst: mustAddr("10.30.0.5")}, bpfXdpActionXDP_DROP, "spoofed"},
		{"v4 spoofed to container", frame{src: mustAddr("10.30.0.7"), dst: mustAddr("10.18.0.66")}, bpfXdpActionXDP_DROP, "spoofed"},
		{"v4 spoofed node ip", frame{src: node4, dst: peer4, dport: 80}, bpfXdpActionXDP_DROP, "spoofed"},
		{"v6 spoofed", frame{src: mustAddr("fc00::3"), dst: mustAddr("fc00::102")}, bpfXdpActionXDP_DROP, "spoofed"},
		{"v6 link-local to all-routers", frame{src: mustAddr("fe80::1"), dst: mustAddr("ff02::2"), proto: 58}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v6 unspecified to solicited-node", frame{src: mustAddr("::"), dst: mustAddr("ff02::1:ff00:2"), proto: 58}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v6 link-local to global", frame{src: mustAddr("fe80::1"), dst: mustAddr("fc00::102")}, bpfXdpActionXDP_DROP, "spoofed"},
		{"arp spoofed sender", frame{etype: 0x0806, raw: spoofARP}, bpfXdpActionXDP_DROP, "spoofed"},
		{"arp probe", frame{etype: 0x0806, raw: probeARP}, bpfXdpActionXDP_PASS, "passed_other"},
		// Containers never reach a tunnel port (a peer's or this node's).
		{"v4 to peer tunnel port", frame{src: c4, dst: peer4, sport: 5000, dport: 40000}, bpfXdpActionXDP_DROP, "to_tunnel"},
		{"v4 to node tunnel port", frame{src: c4, dst: node4, sport: 5000, dport: tunnelPort}, bpfXdpActionXDP_DROP, "to_tunnel"},
		{"v6 to peer tunnel port", frame{src: c6, dst: peer6, sport: 5000, dport: tunnelPort}, bpfXdpActionXDP_DROP, "to_tunnel"},
		{"v4 to peer other port", frame{src: c4, dst: peer4, sport: 5000, dport: tunnelPort}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v4 tcp to peer tunnel port", frame{src: c4, dst: peer4, proto: 6, dport: 40000}, bpfXdpActionXDP_PASS, "passed_not_service"},
		{"v4 stranger tunnel port", frame{src: c4, dst: stranger, dport: tunnelPort}, bpfXdpActionXDP_PASS, "passed_not_service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run(t, o, o.PortProgram(), tc.f.bytes(), tc.act, tc.counter)
		})
	}
}

func TestUplinkProgram(t *testing.T) {
	o := load(t, Config{})
	if err := o.SetNode(node4, node6, tunnelPort); err != nil {
		t.Fatal(err)
	}
	if err := o.ReplacePeers([]Peer{{Addr: peer4}, {Addr: peer6, Port: 40000}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		f       frame
		act     bpfXdpAction
		counter string
	}{
		{"v4 tunnel from peer", frame{src: peer4, dst: node4, sport: 1234, dport: tunnelPort}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v4 tunnel, ip options", frame{src: peer4, dst: node4, ihl: 7, sport: 1, dport: tunnelPort}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"vlan v4 tunnel", frame{vlan: true, src: peer4, dst: node4, sport: 1, dport: tunnelPort}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v6 tunnel from peer", frame{src: peer6, dst: node6, sport: 40000, dport: tunnelPort}, bpfXdpActionXDP_PASS, "redirect_failed"},
		{"v6 tunnel, wrong peer port", frame{src: peer6, dst: node6, sport: 40001, dport: tunnelPort}, bpfXdpActionXDP_DROP, "not_peer"},
		{"v4 tunnel from non-peer", frame{src: stranger, dst: node4, sport: 1234, dport: tunnelPort}, bpfXdpActionXDP_DROP, "not_peer"},
		{"v6 tunnel from non-peer", frame{src: mustAddr("2001:2::9"), dst: node6, sport: 40000, dport: tunnelPort}, bpfXdpActionXDP_DROP, "not_peer"},
		{"v4 wrong port", frame{src: peer4, dst: node4, sport: 1234, dport: tunnelPort + 1}, bpfXdpActionXDP_PASS, "passed_not_tunnel"},
		{"v6 wrong port", frame{src: peer6, dst: node6, sport: 40000, dport: 22}, bpfXdpActionXDP_PASS, "passed_not_tunnel"},
		{"v4 not to node", frame{src: peer4, dst: mustAddr("198.18.0.3"), dport: tunnelPort}, bpfXdpActionXDP_PASS, "passed_not_tunnel"},
		{"v6 not to node", frame{src: peer6, dst: mustAddr("2001:2::3"), sport: 40000, dport: tunnelPort}, bpfXdpActionXDP_PASS, "passed_not_tunnel"},
		{"v4 tcp to tunnel port", frame{src: peer4, dst: node4, proto: 6, dport: tunnelPort}, bpfXdpActionXDP_PASS, "passed_not_tunnel"},
		{"v6 tcp to tunnel port", frame{src: peer6, dst: node6, proto: 6, sport: 40000, dport: tunnelPort}, bpfXdpActionXDP_PASS, "passed_not_tunnel"},
		{"v4 fragment", frame{src: peer4, dst: node4, dport: tunnelPort, frag: 0x2000}, bpfXdpActionXDP_PASS, "passed_other"},
		{"arp", frame{etype: 0x0806, raw: arp}, bpfXdpActionXDP_PASS, "passed_other"},
		{"truncated udp v4", frame{src: peer4, dst: node4, dport: tunnelPort, trunc: 16 + 1}, bpfXdpActionXDP_PASS, "malformed"},
		{"truncated udp v6", frame{src: peer6, dst: node6, dport: tunnelPort, trunc: 16 + 1}, bpfXdpActionXDP_PASS, "malformed"},
		{"truncated ip", frame{src: peer4, dst: node4, dport: tunnelPort, trunc: 8 + 16 + 1}, bpfXdpActionXDP_PASS, "malformed"},
		{"options past end", frame{src: peer4, dst: node4, dport: tunnelPort, ihl: 15, trunc: 8 + 16 + 10}, bpfXdpActionXDP_PASS, "malformed"},
		{"v4 bad ihl", frame{src: peer4, dst: node4, dport: tunnelPort, ihl: 3}, bpfXdpActionXDP_PASS, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run(t, o, o.UplinkProgram(), tc.f.bytes(), tc.act, tc.counter)
		})
	}

	t.Run("tunnel off", func(t *testing.T) {
		if err := o.SetNode(node4, netip.Addr{}, 0); err != nil {
			t.Fatal(err)
		}
		f := frame{src: stranger, dst: node4, dport: tunnelPort}
		run(t, o, o.UplinkProgram(), f.bytes(), bpfXdpActionXDP_PASS, "passed_not_tunnel")
		if err := o.SetNode(node4, netip.Addr{}, tunnelPort); err != nil {
			t.Fatal(err)
		}
		run(t, o, o.UplinkProgram(), f.bytes(), bpfXdpActionXDP_DROP, "not_peer")
		f6 := frame{src: peer6, dst: node6, sport: 40000, dport: tunnelPort}
		run(t, o, o.UplinkProgram(), f6.bytes(), bpfXdpActionXDP_PASS, "passed_not_tunnel")
	})
}

func TestServiceRangesShared(t *testing.T) {
	owner := load(t, Config{ServiceRanges: []netip.Prefix{netip.MustParsePrefix("10.30.7.0/24")}})
	port := load(t, Config{Share: owner, Queues: 4})
	if port.Queues() != 4 || owner.Queues() != 64 {
		t.Fatalf("queues %d/%d, want 4/64", port.Queues(), owner.Queues())
	}
	c4 := mustAddr("10.18.0.2")
	// The ports map is shared too: set through the owner, seen by both.
	if err := owner.SetPort(loIfindex, Port{IP4: c4, IP6: netip.Addr{}}); err != nil {
		t.Fatal(err)
	}
	in := frame{src: c4, dst: mustAddr("10.30.7.9")}.bytes()
	out := frame{src: c4, dst: mustAddr("10.30.8.9")}.bytes()
	run(t, port, port.PortProgram(), in, bpfXdpActionXDP_PASS, "redirect_failed")
	run(t, port, port.PortProgram(), out, bpfXdpActionXDP_PASS, "passed_not_service")
	// Setting through the sharer changes the owner's map too.
	if err := port.SetServiceRanges([]netip.Prefix{netip.MustParsePrefix("10.30.8.1/24")}); err != nil {
		t.Fatal(err)
	}
	run(t, owner, owner.PortProgram(), out, bpfXdpActionXDP_PASS, "redirect_failed")
	run(t, owner, owner.PortProgram(), in, bpfXdpActionXDP_PASS, "passed_not_service")
	// Counters stay per Objects.
	if c := counters(t, port)["redirect_failed"]; c != 1 {
		t.Errorf("port redirect_failed = %d, want 1", c)
	}
	// Limits.
	var many []netip.Prefix
	for i := range MaxServicePrefixes + 1 {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 30, byte(i), 0}), 24))
	}
	if err := owner.SetServiceRanges(many); err == nil {
		t.Error("too many prefixes: want error")
	}
	if err := owner.SetServiceRanges(many[:MaxServicePrefixes]); err != nil {
		t.Error(err)
	}
}

func TestPeerBookkeeping(t *testing.T) {
	o := load(t, Config{})
	if err := o.SetNode(node4, node6, tunnelPort); err != nil {
		t.Fatal(err)
	}
	from := func(sport uint16) []byte {
		return frame{src: peer4, dst: node4, sport: sport, dport: tunnelPort}.bytes()
	}
	up := o.UplinkProgram()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(o.ReplacePeers([]Peer{{Addr: peer4, Port: 1000}}))
	run(t, o, up, from(1000), bpfXdpActionXDP_PASS, "redirect_failed")
	run(t, o, up, from(1001), bpfXdpActionXDP_DROP, "not_peer")
	// Two nodes behind one NAT address: any source port from it.
	must(o.ReplacePeers([]Peer{{Addr: peer4, Port: 1000}, {Addr: peer4, Port: 2000}}))
	run(t, o, up, from(1001), bpfXdpActionXDP_PASS, "redirect_failed")
	must(o.ReplacePeers([]Peer{{Addr: peer4, Port: 2000}}))
	run(t, o, up, from(1000), bpfXdpActionXDP_DROP, "not_peer")
	run(t, o, up, from(2000), bpfXdpActionXDP_PASS, "redirect_failed")
	must(o.ReplacePeers(nil))
	run(t, o, up, from(2000), bpfXdpActionXDP_DROP, "not_peer")
	// IPv4-mapped addresses are the same peer.
	must(o.ReplacePeers([]Peer{{Addr: netip.AddrFrom16(peer4.As16())}}))
	run(t, o, up, from(7), bpfXdpActionXDP_PASS, "redirect_failed")
	must(o.ReplacePeers([]Peer{{Addr: peer6}}))
	run(t, o, up, from(7), bpfXdpActionXDP_DROP, "not_peer")
	if got := o.Peers(); len(got) != 1 || got[0] != (Peer{Addr: peer6}) {
		t.Errorf("peers %v", got)
	}
	n := 0
	var k bpfSteerPeerKey
	var v bpfSteerPeer
	it := o.objs.Peers.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if n != 1 {
		t.Errorf("peer map holds %d entries, want 1", n)
	}
}

func TestCountersSumCPUs(t *testing.T) {
	o := load(t, Config{})
	f := frame{etype: 0x0806, raw: arp}.bytes()
	ret, err := o.UplinkProgram().Run(&ebpf.RunOptions{Data: f, Repeat: 1000})
	if err != nil || bpfXdpAction(ret) != bpfXdpActionXDP_PASS {
		t.Fatalf("run: %v %v", ret, err)
	}
	c := counters(t, o)
	want := map[string]uint64{"passed_other": 1000}
	for _, name := range o.CounterNames() {
		if c[name] != want[name] {
			t.Errorf("%s = %d, want %d (all: %v)", name, c[name], want[name], maps.Clone(c))
		}
	}
}
