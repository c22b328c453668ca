//go:build linux

package dataplane

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/internal/testbed/bedtest"
	"github.com/oakwire/oakwire/internal/testenv"
)

var (
	mustAddr = netip.MustParseAddr
	// Service IPs (SPEC §2 ranges) and instance IPs.
	svcRemote4, svcRemote6 = mustAddr("10.30.0.10"), mustAddr("fdff:2000::10")
	svcLocal4, svcLocal6   = mustAddr("10.30.0.11"), mustAddr("fdff:2000::11")
	svcClient4             = mustAddr("10.30.0.12")
	instServer4, instSrv6  = mustAddr("10.30.128.1"), mustAddr("fdff:1000::1")
	instClient4, instCli6  = mustAddr("10.30.128.2"), mustAddr("fdff:1000::2")
	instLocal4, instLoc6   = mustAddr("10.30.128.3"), mustAddr("fdff:1000::3")
)

// ctr is an emulated container set up the way the NetManager does it: /32
// and /128 nsIPs, default routes via the gateway on-link with permanent
// neighbour entries for it, TX checksum/TSO/GSO off; on the node side a
// /32 route and a permanent neighbour entry (routed baseline).
type ctr struct {
	*testbed.Container
	ns4, ns6 netip.Addr
	mac      net.HardwareAddr
	job      string
}

// topo is the acceptance topology: nodes A and B joined by one veth
// underlay, a client and a local server on A, a server on B; the nodes
// also route the container subnets to each other (the routed baseline).
type topo struct {
	bed                   *testbed.Bed
	a, b                  *testbed.Node
	client, local, server *ctr
	exe                   string
}

func newTopo(tb testing.TB) *topo {
	tb.Helper()
	return newTopoOpts(tb, testbed.Options{Underlay: testbed.Direct})
}

// newTopoOpts is newTopo on a bed with opts (the underlay must be Direct).
func newTopoOpts(tb testing.TB, opts testbed.Options) *topo {
	tb.Helper()
	testenv.RequireRoot(tb)
	testenv.RequireBinary(tb, "ethtool")
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	bed := bedtest.New(tb, opts)
	t := &topo{bed: bed, exe: exe}
	if t.a, err = bed.AddNode("a"); err != nil {
		tb.Fatal(err)
	}
	if t.b, err = bed.AddNode("b"); err != nil {
		tb.Fatal(err)
	}
	t.client = addCtr(tb, t.a, "cli", "app.client", "10.18.0.2", "fc00::2", "10.18.0.1", "fc00::1")
	t.local = addCtr(tb, t.a, "loc", "app.local", "10.18.0.3", "fc00::3", "10.18.0.1", "fc00::1")
	t.server = addCtr(tb, t.b, "srv", "app.server", "10.18.0.66", "fc00::102", "10.18.0.65", "fc00::101")
	route := func(n, peer *testbed.Node, sub4, sub6 string) {
		for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"},
			{"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.default.rp_filter", "0"}} {
			if err := testbed.Sysctl(n.NS, kv[0], kv[1]); err != nil {
				tb.Fatal(err)
			}
		}
		err := testbed.Handle(n.NS, func(h *netlink.Handle) error {
			for _, r := range []struct {
				dst string
				gw  netip.Addr
			}{{sub4, peer.IP}, {sub6, peer.IP6}} {
				p := netip.MustParsePrefix(r.dst)
				if err := h.RouteReplace(&netlink.Route{Dst: prefixNet(p), Gw: r.gw.AsSlice()}); err != nil {
					return fmt.Errorf("route %s: %w", p, err)
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	route(t.a, t.b, "10.18.0.64/26", "fc00::100/120")
	route(t.b, t.a, "10.18.0.0/26", "fc00::/120")
	return t
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func addCtr(tb testing.TB, n *testbed.Node, name, job, v4, v6, gw4, gw6 string) *ctr {
	tb.Helper()
	c := &ctr{ns4: mustAddr(v4), ns6: mustAddr(v6), job: job}
	g4, g6 := mustAddr(gw4), mustAddr(gw6)
	var err error
	if c.Container, err = n.AddContainer(name, testbed.ContainerConfig{GW4: g4, GW6: g6}); err != nil {
		tb.Fatal(err)
	}
	var hostMAC net.HardwareAddr
	err = testbed.Handle(n.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.HostIf)
		hostMAC = l.Attrs().HardwareAddr
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	err = testbed.Handle(c.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.IfName)
		if err != nil {
			return err
		}
		c.mac = l.Attrs().HardwareAddr
		for _, p := range []netip.Prefix{netip.PrefixFrom(c.ns4, 32), netip.PrefixFrom(c.ns6, 128)} {
			a := &netlink.Addr{IPNet: prefixNet(p), Flags: unix.IFA_F_NODAD}
			if err := h.AddrAdd(l, a); err != nil {
				return fmt.Errorf("addr %s: %w", p, err)
			}
		}
		for _, g := range []netip.Addr{g4, g6} {
			fam := netlink.FAMILY_V4
			if g.Is6() {
				fam = netlink.FAMILY_V6
			}
			if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: g.AsSlice(), HardwareAddr: hostMAC,
				State: netlink.NUD_PERMANENT, Family: fam}); err != nil {
				return fmt.Errorf("neighbour %s: %w", g, err)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	if out, err := testbed.Run(5*time.Second, c.NS, "ethtool", "-K", c.IfName, "tx", "off", "tso", "off", "gso", "off"); err != nil {
		tb.Fatalf("ethtool: %v: %s", err, out)
	}
	err = testbed.Handle(n.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.HostIf)
		if err != nil {
			return err
		}
		for _, a := range []netip.Addr{c.ns4, c.ns6} {
			fam := netlink.FAMILY_V4
			if a.Is6() {
				fam = netlink.FAMILY_V6
			}
			if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: a.AsSlice(), HardwareAddr: c.mac,
				State: netlink.NUD_PERMANENT, Family: fam}); err != nil {
				return err
			}
			if err := h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(netip.PrefixFrom(a, a.BitLen())),
				Scope: netlink.SCOPE_LINK}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// table is the service table both nodes get (what the cluster would push).
func (t *topo) table() ([]fastpath.ServiceSpec, []fastpath.InstanceSpec) {
	na := netip.AddrPortFrom(t.a.IP, DefaultTunnelPort)
	nb := netip.AddrPortFrom(t.b.IP, DefaultTunnelPort)
	svcs := []fastpath.ServiceSpec{
		{Job: "app.server", IPs: []fastpath.PolicyIP{{Policy: "RR", V4: svcRemote4, V6: svcRemote6}}},
		{Job: "app.local", IPs: []fastpath.PolicyIP{{Policy: "RR", V4: svcLocal4, V6: svcLocal6}}},
		{Job: "app.client", IPs: []fastpath.PolicyIP{{Policy: "RR", V4: svcClient4}}},
	}
	insts := []fastpath.InstanceSpec{
		{Job: "app.server", Number: 1, IP4: instServer4, IP6: instSrv6, NS4: t.server.ns4, NS6: t.server.ns6, Node: nb},
		{Job: "app.client", Number: 1, IP4: instClient4, IP6: instCli6, NS4: t.client.ns4, NS6: t.client.ns6, Node: na},
		{Job: "app.local", Number: 1, IP4: instLocal4, IP6: instLoc6, NS4: t.local.ns4, NS6: t.local.ns6, Node: na},
	}
	return svcs, insts
}

func (t *topo) spec(n *testbed.Node, workers int, ctrs ...*ctr) helperSpec {
	svcs, insts := t.table()
	peer := t.b
	if n == t.b {
		peer = t.a
	}
	sp := helperSpec{Uplink: n.Uplink, NodeIP: n.IP, Workers: workers, Services: svcs, Instances: insts,
		Peers: []netip.AddrPort{netip.AddrPortFrom(peer.IP, DefaultTunnelPort)}}
	for _, c := range ctrs {
		sp.Ports = append(sp.Ports, helperPort{HostIf: c.HostIf, ContMAC: c.mac.String(), NS4: c.ns4, NS6: c.ns6, Job: c.job, Instance: 1})
	}
	return sp
}

// engineProc is an Engine running as a child process in a node namespace.
type engineProc struct {
	proc  *testbed.Proc
	stdin io.WriteCloser
	lines chan string
}

func (t *topo) startEngine(tb testing.TB, n *testbed.Node, sp helperSpec) *engineProc {
	tb.Helper()
	js, _ := json.Marshal(sp)
	cmd := testbed.Command(context.Background(), n.NS, t.exe)
	cmd.Env = append(os.Environ(), "OAKWIRE_DP_HELPER="+string(js))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	// The engine's output is read while it runs; what it writes after
	// stdin closes is not needed, so the background reaping may close the
	// pipe under the reader.
	proc, err := t.bed.Launch(cmd)
	if err != nil {
		tb.Fatal(err)
	}
	p := &engineProc{proc: proc, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	tb.Cleanup(func() { p.stop(tb) })
	select {
	case l, ok := <-p.lines:
		if !ok || l != "ready" {
			tb.Fatalf("engine on %s: %q", n.Name, l)
		}
	case <-time.After(20 * time.Second):
		tb.Fatalf("engine on %s: not ready after 20 s", n.Name)
	}
	return p
}

func (p *engineProc) stats(tb testing.TB) Stats {
	tb.Helper()
	if _, err := io.WriteString(p.stdin, "stats\n"); err != nil {
		tb.Fatal(err)
	}
	select {
	case l := <-p.lines:
		var s Stats
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			tb.Fatalf("stats %q: %v", l, err)
		}
		return s
	case <-time.After(10 * time.Second):
		tb.Fatal("stats: no answer")
	}
	return Stats{}
}

func (p *engineProc) flows(tb testing.TB) []FlowInfo {
	tb.Helper()
	if _, err := io.WriteString(p.stdin, "flows\n"); err != nil {
		tb.Fatal(err)
	}
	select {
	case l := <-p.lines:
		var f []FlowInfo
		if err := json.Unmarshal([]byte(l), &f); err != nil {
			tb.Fatalf("flows %q: %v", l, err)
		}
		return f
	case <-time.After(10 * time.Second):
		tb.Fatal("flows: no answer")
	}
	return nil
}

// stop closes stdin (the engine closes and exits) and kills it by PID if
// it does not exit within 5 s.
func (p *engineProc) stop(tb testing.TB) {
	if p.proc.Exited() {
		return
	}
	_ = p.stdin.Close()
	if err := p.proc.Wait(5 * time.Second); err != nil {
		tb.Errorf("engine exit (stdin closed): %v", err)
	}
}

// tool runs the flood or sink tool in ns pinned to cpu and returns the
// process and its stdout lines.
func (t *topo) tool(tb testing.TB, ns string, cpu int, env ...string) (*exec.Cmd, chan string) {
	tb.Helper()
	cmd := testbed.Command(context.Background(), ns, "taskset", "-c", strconv.Itoa(cpu), t.exe)
	cmd.Env = append(append(os.Environ(), "GOMAXPROCS=1"), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := t.bed.Start(cmd); err != nil {
		tb.Fatal(err)
	}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return cmd, lines
}

func readResult(tb testing.TB, lines chan string, within time.Duration) toolResult {
	tb.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			tb.Fatal("tool: no output")
		}
		var r toolResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			tb.Fatalf("tool output %q: %v", l, err)
		}
		if r.Error != "" {
			tb.Fatalf("tool: %s", r.Error)
		}
		return r
	case <-time.After(within):
		tb.Fatal("tool: no result in time")
	}
	return toolResult{}
}

// udpFlood runs a sink in the server container and a flood (count packets,
// rate pps or 0 for as fast as possible) from the client to dst, pinned to
// different CPUs, and returns what was sent and received.
func (t *topo) udpFlood(tb testing.TB, dst netip.AddrPort, count, rate int) (sent, recv toolResult) {
	tb.Helper()
	scmd, slines := t.tool(tb, t.server.NS, 1, "OAKWIRE_DP_TOOL=sink", fmt.Sprintf("LISTEN=[::]:%d", dst.Port()),
		fmt.Sprintf("EXPECT=%d", count+16), "MAXMS=20000")
	if l := <-slines; !strings.Contains(l, "ready") {
		tb.Fatalf("sink: %q", l)
	}
	fcmd, flines := t.tool(tb, t.client.NS, 0, "OAKWIRE_DP_TOOL=flood", "DST="+dst.String(),
		fmt.Sprintf("COUNT=%d", count), fmt.Sprintf("RATE=%d", rate))
	sent = readResult(tb, flines, 40*time.Second)
	recv = readResult(tb, slines, 25*time.Second)
	_ = fcmd.Wait()
	_ = scmd.Wait()
	return sent, recv
}
