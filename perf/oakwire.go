//go:build linux

package perf

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/dataplane"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
	"github.com/oakwire/oakwire/internal/testbed"
)

// Oakwire is the AF_XDP dataplane (package dataplane) on the suite's
// topology: one engine per node, each a `netbench xdpnode` process started
// inside the node's namespace (the engine runs in its process's namespace,
// as the NetManager daemon does), fed the service table the cluster would
// push:
//
//   - service "bench.server" with service IP 10.30.0.1 (RR), instance 0 =
//     the server container on node B, instance IP 10.30.0.2;
//   - service "bench.client", instance 0 = the client container on node A,
//     instance IP 10.30.0.3, so the client's source becomes its instance
//     IP on egress and the echo server answers that address (an
//     instance-IP egress on node B);
//   - the other node's underlay address as the peer, tunnel port 50103.
//
// Ports map 1:1 (the service translates addresses only). The containers'
// TX checksum offload, TSO and GSO are turned off as the NetManager does
// when it creates a container interface (DESIGN.md: a partial checksum
// cannot be patched incrementally, and generic XDP stalls TCP with TSO/GSO
// on), and the ports use incremental checksums as the NetManager's do.
type Oakwire struct {
	// Cmd is the argv prefix that runs `xdpnode` (RunXDPNode); default:
	// this executable.
	Cmd []string
	// Env is added to the xdpnode processes' environment.
	Env []string
	// Mode is the XDP attach mode ("generic" or "native"; default
	// generic, the engine's default).
	Mode string
	// Workers per engine (0: the engine's default, half the CPUs).
	Workers int
	// CPUsA and CPUsB pin worker i of node A's and node B's engine to
	// CPUs[i % len]; empty: unpinned. The client (flood sender) runs on
	// node A, the server (sink) on node B.
	CPUsA, CPUsB []int
	// Yield is how spinning workers yield: "os" (sched_yield, the
	// engine's default), "go" (runtime.Gosched) or "none" (xsk.YieldMode).
	Yield string
	// Spin is how long an idle worker keeps spinning before it sleeps in
	// poll(2) (0: the engine's default, xsk.DefaultSpin).
	Spin time.Duration
	// Offload turns the kernel tier on; the containers then keep their
	// offloads (TSO, GSO, TX checksum), as the NetManager leaves them.
	Offload bool
	// Label, when set, is the dataplane's name in the report (default
	// OakwireName).
	Label string

	t        *Topology
	procs    []*xdpProc
	counters map[string]uint64
}

// Benchmark service table (SPEC §2 ranges; the first addresses a fresh
// root hands out).
const (
	oakServerJob = "bench.server"
	oakClientJob = "bench.client"
)

var (
	oakServerInst4 = netip.MustParseAddr("10.30.0.2")
	oakClientInst4 = netip.MustParseAddr("10.30.0.3")
	oakServiceV6   = netip.MustParseAddr("fdff:2000::1")
	oakServerInst6 = netip.MustParseAddr("fdff:2000::2")
	oakClientInst6 = netip.MustParseAddr("fdff:2000::3")
)

// XDPNodeSpec is what one `netbench xdpnode` process runs: the engine's
// configuration, its ports (by host-side interface name in the node's
// namespace) and the service view.
type XDPNodeSpec struct {
	Uplink     string
	NodeIP     netip.Addr
	TunnelPort uint16
	Mode       string
	Workers    int
	CPUs       []int
	Yield      string // "os" (default), "go" or "none"
	Spin       time.Duration
	Offload    bool
	Ports      []XDPNodePort
	Services   []fastpath.ServiceSpec
	Instances  []fastpath.InstanceSpec
	Peers      []netip.AddrPort
}

// XDPNodePort is one container port of an XDPNodeSpec.
type XDPNodePort struct {
	// HostIf is the host-side veth in the node's namespace; its ifindex
	// and MAC are looked up there.
	HostIf string
	// ContainerMAC is the container side's MAC (it lives in another
	// namespace, so the spec carries it).
	ContainerMAC string
	NS4, NS6     netip.Addr
	Job          string
	Instance     uint32
	// Incremental selects incremental checksum updates (TX checksum
	// offload is off in the container); false recomputes.
	Incremental bool
}

// Name implements Dataplane.
func (o *Oakwire) Name() string {
	if o.Label != "" {
		return o.Label
	}
	return OakwireName
}

// Target implements Dataplane: the service IP.
func (o *Oakwire) Target() netip.AddrPort {
	return netip.AddrPortFrom(o.t.ServiceIP, o.t.Ports.Flood)
}

// Describe implements Describer.
func (o *Oakwire) Describe() map[string]string {
	mode := o.Mode
	if mode == "" {
		mode = "generic"
	}
	workers := fmt.Sprintf("%d per node (engine default: half the CPUs)", xsk.DetectTopology().SuggestWorkers())
	if o.Workers > 0 {
		workers = strconv.Itoa(o.Workers) + " per node"
	}
	yield := o.Yield
	if yield == "" {
		yield = "os"
	}
	spin := xsk.DefaultSpin
	if o.Spin > 0 {
		spin = o.Spin
	}
	return map[string]string{
		"yield":            yield,
		"spin":             spin.String(),
		"xdp_mode":         mode,
		"workers":          workers,
		"worker_placement": PlacementString(o.CPUsA, o.CPUsB),
	}
}

// PlacementString renders a worker placement the way ParsePlacement
// reads it, with the nodes named: "A none, B cpu 1".
func PlacementString(a, b []int) string {
	one := func(cpus []int) string {
		if len(cpus) == 0 {
			return "unpinned"
		}
		s := make([]string, len(cpus))
		for i, c := range cpus {
			s[i] = strconv.Itoa(c)
		}
		return "cpu " + strings.Join(s, ",")
	}
	return "node A " + one(a) + " / node B " + one(b)
}

// ParsePlacement parses a worker placement: "none" (unpinned), a
// comma-separated CPU list for both nodes' engines ("1", "0,1"), or
// "A/B" with one such value per node ("1/0", "none/1").
func ParsePlacement(s string) (a, b []int, err error) {
	one := func(s string) ([]int, error) {
		s = strings.TrimSpace(s)
		if s == "" || s == "none" || s == "unpinned" {
			return nil, nil
		}
		var cpus []int
		for f := range strings.SplitSeq(s, ",") {
			c, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || c < 0 {
				return nil, fmt.Errorf("worker placement %q: want none, a CPU list like 0,1, or A/B (one per node)", s)
			}
			cpus = append(cpus, c)
		}
		return cpus, nil
	}
	sa, sb, split := strings.Cut(s, "/")
	if !split {
		sb = sa
	}
	if a, err = one(sa); err != nil {
		return nil, nil, err
	}
	if b, err = one(sb); err != nil {
		return nil, nil, err
	}
	return a, b, nil
}

// Counters implements Counterer: the engines' final counters, non-zero
// ones, prefixed with the node ("a." and "b.").
func (o *Oakwire) Counters() map[string]uint64 { return o.counters }

// spec builds node n's XDPNodeSpec from the topology.
func (o *Oakwire) spec(n *testbed.Node, ports ...XDPNodePort) XDPNodeSpec {
	t := o.t
	na := netip.AddrPortFrom(t.A.IP, dataplane.DefaultTunnelPort)
	nb := netip.AddrPortFrom(t.B.IP, dataplane.DefaultTunnelPort)
	peer, cpus := nb, o.CPUsA
	if n == t.B {
		peer, cpus = na, o.CPUsB
	}
	return XDPNodeSpec{
		Uplink: n.Uplink, NodeIP: n.IP, TunnelPort: dataplane.DefaultTunnelPort,
		Mode: o.Mode, Workers: o.Workers, CPUs: cpus, Yield: o.Yield, Spin: o.Spin, Offload: o.Offload, Ports: ports,
		Services: []fastpath.ServiceSpec{
			{Job: oakServerJob, IPs: []fastpath.PolicyIP{{Policy: "RR", V4: t.ServiceIP, V6: oakServiceV6}}},
			{Job: oakClientJob},
		},
		Instances: []fastpath.InstanceSpec{
			{Job: oakServerJob, Number: 0, IP4: oakServerInst4, IP6: oakServerInst6, NS4: t.ServerIP, NS6: t.ServerIP6, Node: nb},
			{Job: oakClientJob, Number: 0, IP4: oakClientInst4, IP6: oakClientInst6, NS4: t.ClientIP, NS6: t.ClientIP6, Node: na},
		},
		Peers: []netip.AddrPort{peer},
	}
}

// Setup implements Dataplane.
func (o *Oakwire) Setup(ctx context.Context, t *Topology) error {
	o.t = t
	if t.ServiceIP6.IsValid() && t.ServiceIP6 != oakServiceV6 {
		return fmt.Errorf("oakwire: topology service IP %v, table has %v", t.ServiceIP6, oakServiceV6)
	}
	if len(o.Cmd) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("oakwire: %w", err)
		}
		o.Cmd = []string{exe}
	}
	var ports [2]XDPNodePort
	for i, c := range []struct {
		ctr      *testbed.Container
		ns4, ns6 netip.Addr
		job      string
	}{{t.Client, t.ClientIP, t.ClientIP6, oakClientJob}, {t.Server, t.ServerIP, t.ServerIP6, oakServerJob}} {
		// What the NetManager does to a container interface it creates.
		if !o.Offload {
			if out, err := testbed.Run(10*time.Second, c.ctr.NS, "ethtool", "-K", c.ctr.IfName, "tx", "off", "tso", "off", "gso", "off"); err != nil {
				return fmt.Errorf("oakwire: offloads off: %w: %s", err, out)
			}
		}
		mac, err := linkMAC(c.ctr.NS, c.ctr.IfName)
		if err != nil {
			return fmt.Errorf("oakwire: %w", err)
		}
		ports[i] = XDPNodePort{HostIf: c.ctr.HostIf, ContainerMAC: mac.String(), NS4: c.ns4, NS6: c.ns6,
			Job: c.job, Instance: 0, Incremental: !o.Offload}
	}
	dir, err := os.MkdirTemp("", "oakwire-bench-")
	if err != nil {
		return fmt.Errorf("oakwire: %w", err)
	}
	defer os.RemoveAll(dir)
	for i, x := range []struct {
		node *testbed.Node
		port XDPNodePort
	}{{t.A, ports[0]}, {t.B, ports[1]}} {
		p, err := o.start(x.node, o.spec(x.node, x.port), filepath.Join(dir, fmt.Sprintf("spec-%d.json", i)))
		if err != nil {
			return fmt.Errorf("oakwire: node %s: %w", x.node.Name, err)
		}
		o.procs = append(o.procs, p)
	}
	// The engines learn the uplink neighbours through their slow path;
	// xdpnode already resolved the peers before "ready". Check that a
	// request through the service IP gets its answer back (the reply is an
	// instance-IP egress on node B), a few tries.
	r := &runner{cfg: &Config{Tool: o.Cmd, ToolEnv: o.Env}, topo: t}
	var perr error
	for range 3 {
		if perr = r.probe(ctx, t.ServiceIP); perr == nil {
			return nil
		}
	}
	return fmt.Errorf("oakwire: echo through %v: %w", t.ServiceIP, perr)
}

// xdpProc is a running `netbench xdpnode`.
type xdpProc struct {
	node  string
	cmd   *exec.Cmd
	stats string // file the process writes its final stats to
	errb  *readyWriter
	done  chan struct{}
	err   error // valid after done
}

func (o *Oakwire) start(n *testbed.Node, sp XDPNodeSpec, specPath string) (*xdpProc, error) {
	js, err := json.Marshal(sp)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(specPath, js, 0o600); err != nil {
		return nil, err
	}
	statsPath := filepath.Join(os.TempDir(), fmt.Sprintf("oakwire-stats-%s-%d.json", n.NS, os.Getpid()))
	_ = os.Remove(statsPath)
	argv := append(slices.Clone(o.Cmd), "xdpnode", "--spec", specPath, "--stats", statsPath)
	// No context: the process is stopped by Teardown (SIGTERM, then
	// SIGKILL by PID) or by the bed's Close.
	cmd := testbed.Command(context.Background(), n.NS, argv...)
	cmd.Env = append(os.Environ(), o.Env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &xdpProc{node: n.Name, cmd: cmd, stats: statsPath, errb: newReadyWriter(), done: make(chan struct{})}
	cmd.Stderr = p.errb
	if err := o.t.Bed.Start(cmd); err != nil {
		return nil, fmt.Errorf("start xdpnode: %w", err)
	}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	select {
	case l, ok := <-lines:
		if ok && l == "ready" {
			go func() { // keep draining
				for range lines {
				}
			}()
			return p, nil
		}
		p.kill()
		return nil, fmt.Errorf("xdpnode: %q: %s", l, p.errb.String())
	case <-time.After(20 * time.Second):
		p.kill()
		return nil, fmt.Errorf("xdpnode: not ready after 20 s: %s", p.errb.String())
	}
}

// kill stops the process by PID: SIGKILL, then reaps it.
func (p *xdpProc) kill() {
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// stop sends SIGTERM, waits up to 5 s for the engine to close, then
// SIGKILLs it (by PID).
func (p *xdpProc) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("xdpnode on %s: %w: %s", p.node, p.err, p.errb.String())
		}
		return nil
	case <-time.After(5 * time.Second):
	}
	p.kill()
	return fmt.Errorf("xdpnode on %s: no exit 5 s after SIGTERM; killed", p.node)
}

// Teardown implements Dataplane: stops both engines, collects their final
// counters and checks that no XDP program is left on the nodes'
// interfaces.
func (o *Oakwire) Teardown() error {
	var errs []error
	o.counters = map[string]uint64{}
	for _, p := range o.procs {
		errs = append(errs, p.stop())
		b, err := os.ReadFile(p.stats)
		_ = os.Remove(p.stats)
		if err != nil {
			continue
		}
		var st XDPNodeStats
		if err := json.Unmarshal(b, &st); err != nil {
			errs = append(errs, fmt.Errorf("xdpnode on %s: stats: %w", p.node, err))
			continue
		}
		for k, v := range st.Counters {
			if v != 0 {
				o.counters[p.node+"."+k] = v
			}
		}
	}
	o.procs = nil
	if o.t != nil {
		errs = append(errs, o.checkNoXDP())
	}
	return errors.Join(errs...)
}

// checkNoXDP fails if an XDP program is still attached to an interface of
// either node.
func (o *Oakwire) checkNoXDP() error {
	var left []string
	for _, n := range []*testbed.Node{o.t.A, o.t.B} {
		err := testbed.Handle(n.NS, func(h *netlink.Handle) error {
			links, err := h.LinkList()
			if err != nil {
				return err
			}
			for _, l := range links {
				if x := l.Attrs().Xdp; x != nil && (x.Attached || x.ProgId != 0) {
					left = append(left, n.Name+"/"+l.Attrs().Name)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("oakwire: check xdp: %w", err)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("oakwire: XDP program left attached on %v", left)
	}
	return nil
}

// XDPNodeStats is what xdpnode writes on exit: the engine's Stats with the
// fast path's drop reasons and events flattened into Counters
// ("drop_<reason>", "event_<event>").
type XDPNodeStats struct {
	Mode     string
	Workers  int
	CPUs     []int
	Topology string
	Counters map[string]uint64
}

func flattenStats(s dataplane.Stats) XDPNodeStats {
	out := XDPNodeStats{Mode: s.Mode, Workers: s.Workers, CPUs: s.CPUs, Topology: s.Topology, Counters: map[string]uint64{}}
	for k, v := range s.Counters {
		out.Counters[k] = v
	}
	for i, v := range s.Fast.Drops {
		if v != 0 {
			out.Counters["drop_"+fastpath.DropReason(i).String()] += v
		}
	}
	for i, v := range s.Fast.Events {
		if v != 0 {
			out.Counters["event_"+fastpath.Event(i).String()] += v
		}
	}
	return out
}

// RunXDPNode is `netbench xdpnode --spec FILE [--stats FILE]`: it runs one
// dataplane.Engine in the calling process's network namespace (a node's:
// start it with `ip netns exec`) as the spec says, prints "ready" on stdout
// once the ports and the service table are in, and serves until SIGTERM or
// SIGINT, or until its parent dies (PR_SET_PDEATHSIG delivers SIGTERM).
// On the way out it closes the engine (which
// detaches every program) and writes its final counters as JSON to the
// stats file (and to stderr).
func RunXDPNode(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("xdpnode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	specPath := fs.String("spec", "", "JSON XDPNodeSpec (required)")
	statsPath := fs.String("stats", "", "write the final stats as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "xdpnode: %v\n", err)
		return 1
	}
	// Die with the parent (the suite): nothing stays behind if it is
	// killed. The signal is caught below, so the engine still closes.
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGTERM), 0, 0, 0); err != nil {
		return fail(fmt.Errorf("prctl pdeathsig: %w", err))
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	if os.Getppid() != ppid { // the parent died before prctl
		return fail(errors.New("parent gone"))
	}
	b, err := os.ReadFile(*specPath)
	if err != nil {
		return fail(err)
	}
	var sp XDPNodeSpec
	if err := json.Unmarshal(b, &sp); err != nil {
		return fail(fmt.Errorf("spec: %w", err))
	}
	mode := bpfprog.ModeGeneric
	if sp.Mode != "" {
		if mode, err = bpfprog.ParseMode(sp.Mode); err != nil {
			return fail(err)
		}
	}
	yield, err := ParseYield(sp.Yield)
	if err != nil {
		return fail(err)
	}
	cfg := dataplane.Config{Uplink: sp.Uplink, NodeIP: sp.NodeIP, TunnelPort: sp.TunnelPort,
		Mode: mode, Workers: sp.Workers, CPUs: sp.CPUs, Offload: sp.Offload}
	cfg.Poller.Yield, cfg.Poller.Spin = yield, sp.Spin
	e, err := dataplane.New(cfg)
	if err != nil {
		return fail(fmt.Errorf("engine: %w", err))
	}
	var closeOnce sync.Once
	var closeErr error
	closeEngine := func() error {
		closeOnce.Do(func() { closeErr = e.Close() })
		return closeErr
	}
	defer closeEngine()
	for _, p := range sp.Ports {
		pc, err := portConfig(p)
		if err != nil {
			return fail(err)
		}
		if _, err := e.AddPort(pc); err != nil {
			return fail(fmt.Errorf("port %s: %w", p.HostIf, err))
		}
	}
	if err := e.SetServices(sp.Services, sp.Instances, sp.Peers); err != nil {
		return fail(fmt.Errorf("services: %w", err))
	}
	resolvePeers(sp, 2*time.Second)
	fmt.Fprintln(stdout, "ready")
	<-sigs
	st := flattenStats(e.Stats())
	err = closeEngine()
	js, _ := json.Marshal(st)
	// The file first (a dead parent's stderr pipe would end this process
	// with SIGPIPE), and only for a live parent: nobody else removes it.
	if *statsPath != "" && os.Getppid() == ppid {
		if werr := os.WriteFile(*statsPath, js, 0o600); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	fmt.Fprintf(stderr, "xdpnode stats: %s\n", js)
	if err != nil {
		return fail(fmt.Errorf("close: %w", err))
	}
	return 0
}

// ParseYield maps "os" (or ""), "go" and "none" to the poller's
// xsk.YieldMode.
func ParseYield(s string) (xsk.YieldMode, error) { return xsk.ParseYield(s) }

func portConfig(p XDPNodePort) (dataplane.PortConfig, error) {
	l, err := netlink.LinkByName(p.HostIf)
	if err != nil {
		return dataplane.PortConfig{}, fmt.Errorf("port %s: %w", p.HostIf, err)
	}
	mac, err := net.ParseMAC(p.ContainerMAC)
	if err != nil || len(mac) != 6 {
		return dataplane.PortConfig{}, fmt.Errorf("port %s: container mac %q: %v", p.HostIf, p.ContainerMAC, err)
	}
	pc := dataplane.PortConfig{Ifindex: l.Attrs().Index, ContainerMAC: [6]byte(mac), NS4: p.NS4, NS6: p.NS6,
		Job: p.Job, Instance: p.Instance}
	if hm := l.Attrs().HardwareAddr; len(hm) == 6 {
		pc.HostMAC = [6]byte(hm)
	}
	if p.Incremental {
		pc.Csum = fastpath.CsumIncremental
	}
	return pc, nil
}

// resolvePeers makes the kernel resolve the peers' MACs on the uplink
// before traffic starts, so the first packets need not take the slow path:
// one datagram from the node IP to each peer's discard port (the peer's
// kernel answers ICMP port unreachable; its ARP/ND cache learns this node
// from the request), then waits until the neighbours are usable, at most
// d. Best effort: the engine's slow path resolves them anyway.
func resolvePeers(sp XDPNodeSpec, d time.Duration) {
	l, err := netlink.LinkByName(sp.Uplink)
	if err != nil {
		return
	}
	laddr := &net.UDPAddr{IP: sp.NodeIP.AsSlice()}
	for _, p := range sp.Peers {
		c, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.Addr(), 9)))
		if err != nil {
			continue
		}
		_, _ = c.Write([]byte("oakwire neighbour warm-up"))
		_ = c.Close()
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		missing := 0
		for _, p := range sp.Peers {
			if !neighUsable(l.Attrs().Index, p.Addr()) {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func neighUsable(ifindex int, ip netip.Addr) bool {
	ns, err := netlink.NeighList(ifindex, netlink.FAMILY_ALL)
	if err != nil {
		return false
	}
	for _, n := range ns {
		a, ok := netip.AddrFromSlice(n.IP)
		if ok && a.Unmap() == ip.Unmap() && len(n.HardwareAddr) == 6 &&
			n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0 {
			return true
		}
	}
	return false
}
