package netmanager

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/internal/ethtool"
	"github.com/oakwire/oakwire/internal/raceflag"
	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/internal/testbed/bedtest"
	"github.com/oakwire/oakwire/internal/testenv"
)

// These tests run the real cmd/netmanager binary inside an emulated node's
// namespace (`ip netns exec`), so everything the daemon sets up (gateway,
// sysctls, routes, nftables) lives in namespaces the test made.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func daemonBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "netmanager-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "netmanager")
		gobin, err := exec.LookPath("go")
		if err != nil {
			buildErr = err
			return
		}
		args := []string{"build", "-o", binPath}
		if raceflag.Enabled {
			// The daemon under test is checked for races too (Deploy
			// drops d.mu across the cluster call); a race makes it exit
			// non-zero, which stop reports.
			args = append(args, "-race")
		}
		out, err := exec.Command(gobin, append(args, "../cmd/netmanager")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// fakeCluster is the cluster's node-facing API (the part the daemon uses),
// served from inside the node namespace on 127.0.0.1.
type fakeCluster struct {
	addr string
	// beforeReport, when set before listen, runs first in every report
	// handler (it may block: a slow cluster).
	beforeReport func(r *http.Request, rep api.InstanceReport)

	mu   sync.Mutex
	regs []api.RegisterRequest
	deps []api.InstanceReport
	unds []api.InstanceReport
}

func startFakeCluster(t *testing.T, ns string) *fakeCluster {
	t.Helper()
	return startFakeClusterWith(t, ns, nil)
}

// startFakeClusterWith serves a fake cluster whose report handlers call
// before first (nil: none).
func startFakeClusterWith(t *testing.T, ns string, before func(*http.Request, api.InstanceReport)) *fakeCluster {
	t.Helper()
	fc := &fakeCluster{beforeReport: before}
	if err := testbed.Do(ns, func() error { return fc.listen(t, "127.0.0.1:0") }); err != nil {
		t.Fatal(err)
	}
	return fc
}

// listen serves the fake cluster on addr; call it inside the node
// namespace (the socket stays there).
func (fc *fakeCluster) listen(t *testing.T, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fc.addr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/node/register", func(w http.ResponseWriter, r *http.Request) {
		var req api.RegisterRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		fc.mu.Lock()
		fc.regs = append(fc.regs, req)
		fc.mu.Unlock()
		_ = json.NewEncoder(w).Encode(api.RegisterResponse{NodeID: req.NodeID,
			SubnetAddr: netip.MustParseAddr("10.18.0.0"), SubnetAddrV6: netip.MustParseAddr("fc00::"), Subnet: netip.MustParsePrefix("10.18.0.0/26"), SubnetV6: netip.MustParsePrefix("fc00::/120")})
	})
	report := func(list *[]api.InstanceReport) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var rep api.InstanceReport
			_ = json.NewDecoder(r.Body).Decode(&rep)
			if fc.beforeReport != nil {
				fc.beforeReport(r, rep)
			}
			if rep.JobName == "app.ns.fail.sns" || rep.JobName == "app.ns.hang.sns" {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"error":"redis down","code":"unavailable"}`))
				return
			}
			fc.mu.Lock()
			*list = append(*list, rep)
			fc.mu.Unlock()
			_, _ = w.Write([]byte("{}"))
		}
	}
	mux.HandleFunc("POST /api/node/instance/deployed", report(&fc.deps))
	mux.HandleFunc("POST /api/node/instance/undeployed", report(&fc.unds))
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return nil
}

// daemon is one run of the binary in a node namespace.
type daemon struct {
	t      *testing.T
	bed    *testbed.Bed
	node   *testbed.Node
	dir    string
	sock   string
	proc   *testbed.Proc
	out    *bytes.Buffer
	client *http.Client
	extra  []string // more flags
}

func (d *daemon) args() []string {
	return append([]string{"--uplink", d.node.Uplink, "--node-ip", d.node.IP.String(),
		"--socket", d.sock, "--state-dir", filepath.Join(d.dir, "state"),
		"--insecure", "--dataplane", "none", "--quarantine", "0s", "--log-level", "debug"}, d.extra...)
}

func newDaemon(t *testing.T, bed *testbed.Bed, node *testbed.Node) *daemon {
	dir := t.TempDir()
	d := &daemon{t: t, bed: bed, node: node, dir: dir, sock: filepath.Join(dir, "nm.sock")}
	d.client = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.sock)
		}}}
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	d.out = &bytes.Buffer{}
	cmd := testbed.Command(context.Background(), d.node.NS, append([]string{daemonBinary(d.t)}, d.args()...)...)
	cmd.Stdout, cmd.Stderr = d.out, d.out
	p, err := d.bed.Launch(cmd)
	if err != nil {
		d.t.Fatal(err)
	}
	d.proc = p
	deadline := time.Now().Add(10 * time.Second)
	for !socketAnswers(d.sock) {
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon did not serve on %s:\n%s", d.sock, d.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Cleanup(func() {
		if d.t.Failed() {
			d.t.Logf("daemon log:\n%s", d.out)
		}
	})
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	d.t.Helper()
	if err := d.proc.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.proc.Done():
		if err := d.proc.Err(); err != nil {
			d.t.Fatalf("daemon exit: %v\n%s", err, d.out)
		}
	case <-time.After(10 * time.Second):
		d.t.Fatalf("daemon did not stop on SIGTERM:\n%s", d.out)
	}
	if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
		d.t.Errorf("socket %s left after shutdown: %v", d.sock, err)
	}
}

// call POSTs (or GETs with body nil) and returns status and body.
func (d *daemon) call(method, path string, body string) (int, string) {
	d.t.Helper()
	var rd io.Reader
	if method == http.MethodPost {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://netmanager"+path, rd)
	resp, err := d.client.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (d *daemon) status() Status {
	d.t.Helper()
	code, body := d.call(http.MethodGet, "/status", "")
	if code != 200 {
		d.t.Fatalf("status: %d %s", code, body)
	}
	var s Status
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		d.t.Fatalf("status: %v: %s", err, body)
	}
	return s
}

func (d *daemon) stateFile() string { return filepath.Join(d.dir, "state", "state.json") }

// emptyContainer makes a container namespace through the testbed and
// removes the veth the testbed gives it, so the daemon attaches its own.
func emptyContainer(t *testing.T, n *testbed.Node, name string) *testbed.Container {
	t.Helper()
	c, err := n.AddContainer(name, testbed.ContainerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	err = testbed.Handle(c.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.IfName)
		if err != nil {
			return err
		}
		return h.LinkDel(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func linkNames(t *testing.T, ns string) []string {
	t.Helper()
	var names []string
	err := testbed.Handle(ns, func(h *netlink.Handle) error {
		ls, err := h.LinkList()
		for _, l := range ls {
			names = append(names, fmt.Sprintf("%s/%s/%s", l.Attrs().Name, l.Type(), l.Attrs().HardwareAddr))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func nftTableText(t *testing.T, ns string) string {
	t.Helper()
	// -s: without counters, which the traffic of other subtests moves.
	out, err := testbed.Run(5*time.Second, ns, "nft", "-s", "list", "table", "inet", "oakwire")
	if err != nil {
		return ""
	}
	return string(out)
}

type addrInfo struct {
	addrs []string
	mtu   int
	mac   string
	up    bool
}

func containerIf(t *testing.T, ns, name string) (addrInfo, []netlink.Route) {
	t.Helper()
	var ai addrInfo
	var routes []netlink.Route
	err := testbed.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		ai.mtu, ai.mac, ai.up = l.Attrs().MTU, l.Attrs().HardwareAddr.String(), l.Attrs().Flags&net.FlagUp != 0
		as, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range as {
			if !a.IP.IsLinkLocalUnicast() {
				ai.addrs = append(ai.addrs, a.IPNet.String())
			}
		}
		slices.Sort(ai.addrs)
		routes, err = h.RouteList(l, netlink.FAMILY_ALL)
		return err
	})
	if err != nil {
		t.Fatalf("%s in %s: %v", name, ns, err)
	}
	return ai, routes
}

// daemonNode is a bed with one node, a, for the daemon (which needs nft).
func daemonNode(t *testing.T) (*testbed.Bed, *testbed.Node) {
	t.Helper()
	bed := bedtest.New(t)
	testenv.RequireBinary(t, "nft")
	node, err := bed.AddNode("a")
	if err != nil {
		t.Fatal(err)
	}
	return bed, node
}

// daemonEnv is one node (a) running the daemon with --dataplane none, a
// second node (b) on the same link, three empty container namespaces on a
// (c2 also has a process, c2pid, for deploys by pid) and a fake cluster.
// Every TestDaemon* test makes its own and brings it to the state it needs
// with the steps below.
type daemonEnv struct {
	bed          *testbed.Bed
	nodeA, nodeB *testbed.Node
	c1, c2, c3   *testbed.Container
	c2pid        int
	fc           *fakeCluster
	d            *daemon
}

func newDaemonEnv(t *testing.T) *daemonEnv {
	t.Helper()
	bed, nodeA := daemonNode(t)
	e := &daemonEnv{bed: bed, nodeA: nodeA}
	var err error
	if e.nodeB, err = bed.AddNode("b"); err != nil {
		t.Fatal(err)
	}
	e.c1 = emptyContainer(t, e.nodeA, "c1")
	e.c2 = emptyContainer(t, e.nodeA, "c2")
	e.c3 = emptyContainer(t, e.nodeA, "c3")
	sleeper := testbed.Command(context.Background(), e.c2.NS, "sleep", "300")
	if err := bed.Start(sleeper); err != nil {
		t.Fatal(err)
	}
	e.c2pid = sleeper.Process.Pid
	e.fc = startFakeCluster(t, e.nodeA.NS)
	e.d = newDaemon(t, bed, e.nodeA)
	e.d.start()
	return e
}

// snapshot is what a refused call must not change: the state file, the
// nft table and the links of the node and the containers.
func (e *daemonEnv) snapshot(t *testing.T) string {
	st, _ := os.ReadFile(e.d.stateFile())
	parts := []string{string(st), nftTableText(t, e.nodeA.NS)}
	for _, ns := range []string{e.nodeA.NS, e.c1.NS, e.c2.NS, e.c3.NS} {
		parts = append(parts, strings.Join(linkNames(t, ns), ","))
	}
	return strings.Join(parts, "\n")
}

func (e *daemonEnv) registerBody(id string) string {
	return fmt.Sprintf(`{"client_id":%q,"cluster_address":%q}`, id, e.fc.addr)
}

// register registers node a as nodeA with the fake cluster.
func (e *daemonEnv) register(t *testing.T) {
	t.Helper()
	if code, body := e.d.call("POST", "/register", e.registerBody("nodeA")); code != 200 || !strings.Contains(body, "10.18.0.0/26") {
		t.Fatalf("register: %d %s", code, body)
	}
}

func (e *daemonEnv) deployC1Body() string {
	return fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc1.sns","instanceNumber":0,"portMappings":"8080:80/tcp;5353:53/udp"}`, e.c1.NS)
}

func (e *daemonEnv) deployC2Body() string {
	return fmt.Sprintf(`{"pid":%d,"serviceName":"app_ns_svc2_sns","instanceNumber":1,"portMappings":""}`, e.c2pid)
}

func (e *daemonEnv) deployC3Body() string {
	return fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc3.sns","instanceNumber":0}`, e.c3.NS)
}

// deploy POSTs a deploy and wants 200 with nsAddress want.
func (e *daemonEnv) deploy(t *testing.T, body, want string) string {
	t.Helper()
	code, got := e.d.call("POST", "/container/deploy", body)
	if code != 200 || !strings.Contains(got, `"nsAddress":"`+want+`"`) {
		t.Fatalf("deploy %s: %d %s, want nsAddress %s", body, code, got, want)
	}
	return got
}

// deployC1C2 registers and deploys c1 (10.18.0.2, by netns, two port
// mappings) and c2 (10.18.0.3, by pid).
func (e *daemonEnv) deployC1C2(t *testing.T) {
	t.Helper()
	e.register(t)
	e.deploy(t, e.deployC1Body(), "10.18.0.2")
	e.deploy(t, e.deployC2Body(), "10.18.0.3")
}

// waitUndeployReports waits until the fake cluster holds n undeploy reports.
func (e *daemonEnv) waitUndeployReports(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.fc.mu.Lock()
		got := len(e.fc.unds)
		e.fc.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster got %d undeploy reports, want %d", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDaemonDeployBeforeRegister(t *testing.T) {
	e := newDaemonEnv(t)
	before := e.snapshot(t)
	code, body := e.d.call("POST", "/container/deploy", e.deployC3Body())
	if code != http.StatusConflict || !strings.Contains(body, "register") {
		t.Fatalf("%d %s", code, body)
	}
	if s := e.d.status(); s.Registered {
		t.Fatal("registered before /register")
	}
	if after := e.snapshot(t); after != before {
		t.Fatalf("changed:\n%s\n%s", before, after)
	}
}

func TestDaemonRegister(t *testing.T) {
	e := newDaemonEnv(t)
	d, fc, nodeA := e.d, e.fc, e.nodeA
	e.register(t)
	if code, body := d.call("POST", "/register", e.registerBody("nodeA")); code != 200 {
		t.Fatalf("same id again: %d %s", code, body)
	}
	if code, body := d.call("POST", "/register", e.registerBody("nodeX")); code != http.StatusConflict || !strings.Contains(body, "nodeA") {
		t.Fatalf("other id: %d %s", code, body)
	}
	s := d.status()
	if !s.Registered || s.NodeID != "nodeA" || s.Subnet != "10.18.0.0/26" || s.SubnetV6 != "fc00::/120" || s.Uplink != "ul0" {
		t.Fatalf("status %+v", s)
	}
	fc.mu.Lock()
	if len(fc.regs) != 1 || fc.regs[0].NodeIP != nodeA.IP || fc.regs[0].TunnelPort != 50103 {
		t.Errorf("cluster saw %+v", fc.regs)
	}
	fc.mu.Unlock()
	// The gateway and forwarding exist in the node namespace.
	ai, _ := containerIf(t, nodeA.NS, "ow0")
	if !slices.Equal(ai.addrs, []string{"10.18.0.1/26", "fc00::1/120"}) {
		t.Errorf("gateway addrs %v", ai.addrs)
	}
	out, err := testbed.Run(5*time.Second, nodeA.NS, "sh", "-c", "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding")
	if err != nil || strings.Fields(string(out))[0] != "1" || strings.Fields(string(out))[1] != "1" {
		t.Errorf("forwarding: %q %v", out, err)
	}
	out, err = testbed.Run(5*time.Second, nodeA.NS, "sh", "-c", "ip route show 10.16.0.0/12; ip -6 route show fc00::/7")
	if err != nil || !strings.Contains(string(out), "10.16.0.0/12 dev ow0") || !strings.Contains(string(out), "fc00::/7 dev ow0") {
		t.Errorf("platform routes: %q %v", out, err)
	}
	if tbl := nftTableText(t, nodeA.NS); !strings.Contains(tbl, `oifname "ul0" ip saddr 10.18.0.0/26 ip daddr != 10.16.0.0/12 masquerade`) {
		t.Errorf("no masquerade rule:\n%s", tbl)
	}
}

func TestDaemonDeploy(t *testing.T) {
	e := newDaemonEnv(t)
	d, fc := e.d, e.fc
	e.register(t)
	var r1 DeployResponse
	if err := json.Unmarshal([]byte(e.deploy(t, e.deployC1Body(), "10.18.0.2")), &r1); err != nil {
		t.Fatal(err)
	}
	if r1.NsAddress != "10.18.0.2" || r1.NsAddressV6 != "fc00::2" || r1.ServiceName != "app.ns.svc1.sns" {
		t.Fatalf("c1: %+v", r1)
	}
	if body := e.deploy(t, e.deployC2Body(), "10.18.0.3"); !strings.Contains(body, `"nsAddressv6":"fc00::3"`) {
		t.Fatalf("deploy c2: %s", body)
	}
	ai, routes := containerIf(t, e.c1.NS, "eth0")
	if !slices.Equal(ai.addrs, []string{"10.18.0.2/32", "fc00::2/128"}) || ai.mtu != 1450 || !ai.up ||
		ai.mac != containerMAC(netip.MustParseAddr("10.18.0.2")).String() {
		t.Errorf("c1 eth0: %+v", ai)
	}
	var gws []string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			gws = append(gws, r.Gw.String())
		}
	}
	slices.Sort(gws)
	if !slices.Equal(gws, []string{"10.18.0.1", "fc00::1"}) {
		t.Errorf("c1 default routes via %v, want 10.18.0.1 and fc00::1 (routes %v)", gws, routes)
	}
	err := testbed.Do(e.c1.NS, func() error {
		for _, cmd := range []uint32{unix.ETHTOOL_GTXCSUM, unix.ETHTOOL_GTSO, unix.ETHTOOL_GGSO} {
			v, err := ethtool.Get("eth0", cmd)
			if err != nil {
				return err
			}
			// Kernel routing only (--dataplane none): no worker
			// needs them off; the AF_XDP-only path turns them off
			// (TestDaemonXDPRollback).
			if v == 0 {
				return fmt.Errorf("ethtool cmd %#x: off, want on", cmd)
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("c1 offloads: %v", err)
	}
	fc.mu.Lock()
	if len(fc.deps) != 2 || fc.deps[0].JobName != "app.ns.svc1.sns" || fc.deps[0].NamespaceIP != netip.MustParseAddr("10.18.0.2") || fc.deps[0].NamespaceIPv6 != netip.MustParseAddr("fc00::2") {
		t.Errorf("cluster reports %+v", fc.deps)
	}
	fc.mu.Unlock()
	if s := d.status(); len(s.Containers) != 2 || s.Dataplane.Tables["ports"] != 2 || s.Dataplane.Mode != "none" {
		t.Errorf("status lists %d containers, data plane %+v", len(s.Containers), s.Dataplane)
	}
	_, metrics := d.call("GET", "/metrics", "")
	if !strings.Contains(metrics, "oakwire_netmanager_deploys_total 2") || !strings.Contains(metrics, "oakwire_netmanager_containers 2") {
		t.Errorf("metrics:\n%s", metrics)
	}
}

func TestDaemonSameNodePing(t *testing.T) {
	e := newDaemonEnv(t)
	e.deployC1C2(t)
	for _, dst := range []string{"10.18.0.3", "fc00::3"} {
		if err := testbed.Ping(e.c1.NS, netip.MustParseAddr(dst), 5, time.Second); err != nil {
			t.Error(err)
		}
	}
	for _, dst := range []string{"10.18.0.2", "fc00::2", "10.18.0.1", "fc00::1"} {
		if err := testbed.Ping(e.c2.NS, netip.MustParseAddr(dst), 5, time.Second); err != nil {
			t.Error(err)
		}
	}
}

func TestDaemonPortMapping(t *testing.T) {
	e := newDaemonEnv(t)
	e.deployC1C2(t)
	tbl := nftTableText(t, e.nodeA.NS)
	rule := "ip daddr 198.18.0.1 tcp dport 8080 dnat ip to 10.18.0.2:80"
	if !strings.Contains(tbl, rule) || !strings.Contains(tbl, "ip daddr 198.18.0.1 udp dport 5353 dnat ip to 10.18.0.2:53") {
		t.Fatalf("no DNAT rule %q:\n%s", rule, tbl)
	}
	if n := strings.Count(tbl, " dnat ip to "); n != 4 { // prerouting and output, two mappings
		t.Errorf("%d dnat rules, want 4:\n%s", n, tbl)
	}
	var ln net.Listener
	if err := testbed.Do(e.c1.NS, func() (err error) { ln, err = net.Listen("tcp", ":80"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = fmt.Fprintf(c, "hello from %s\n", c.LocalAddr())
			c.Close()
		}
	}()
	var got string
	err := testbed.Do(e.nodeB.NS, func() error {
		c, err := net.DialTimeout("tcp", "198.18.0.1:8080", 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	if err != nil || !strings.Contains(got, "hello from 10.18.0.2:80") {
		t.Fatalf("connect from node b to 198.18.0.1:8080: %q %v", got, err)
	}
}

func TestDaemonBadCallsChangeNothing(t *testing.T) {
	e := newDaemonEnv(t)
	e.deployC1C2(t)
	c1, c3, deployC3 := e.c1, e.c3, e.deployC3Body()
	deployC1Again := fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc1.sns","instanceNumber":0}`, c1.NS)
	for _, tc := range []struct {
		name, path, body string
		status           int
		want             string
	}{
		{"malformed JSON", "/container/deploy", `{"pid":`, 400, "malformed JSON"},
		{"not an object", "/container/deploy", `[1,2]`, 400, "want"},
		{"pid as string", "/container/deploy", `{"pid":"12","serviceName":"a.b.c.d"}`, 400, "pid"},
		{"instance as string", "/container/deploy", deployC3[:len(deployC3)-len(`0}`)] + `"0"}`, 400, "instanceNumber"},
		{"bad service name", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc-3.sns"}`, c3.NS), 400, "serviceName"},
		{"three-part name", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc3"}`, c3.NS), 400, "serviceName"},
		{"no pid nor netns", "/container/deploy", `{"serviceName":"app.ns.svc3.sns"}`, 400, "pid"},
		{"unknown pid", "/container/deploy", `{"pid":99999999,"serviceName":"app.ns.svc3.sns"}`, 400, "pid"},
		{"unknown netns", "/container/deploy", `{"netns":"/run/netns/nonexistent-ow","serviceName":"app.ns.svc3.sns"}`, 400, "netns"},
		{"netns not a netns", "/container/deploy", `{"netns":"/etc/hostname","serviceName":"app.ns.svc3.sns"}`, 400, "netns"},
		{"node's own netns", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc3.sns"}`, e.nodeA.NS), 400, "own network namespace"},
		{"bad port mapping", "/container/deploy", deployC3[:len(deployC3)-1] + `,"portMappings":"80:x/tcp"}`, 400, "portMappings"},
		{"host port in use", "/container/deploy", deployC3[:len(deployC3)-1] + `,"portMappings":"8080:81/tcp"}`, 409, "8080"},
		{"double deploy", "/container/deploy", deployC1Again, 409, "already deployed"},
		{"netns already attached", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc9.sns"}`, c1.NS), 409, "eth0"},
		{"cluster refuses the report", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.fail.sns","portMappings":"9999:99"}`, c3.NS), 502, "redis down"},
		{"undeploy unknown", "/container/undeploy", `{"serviceName":"app.ns.svc3.sns","instanceNumber":0}`, 404, "not deployed"},
		{"undeploy bad name", "/docker/undeploy", `{"serviceName":"x","instanceNumber":0}`, 400, "serviceName"},
		{"register bad id", "/register", `{"client_id":"a b","cluster_address":"x"}`, 400, "client_id"},
	} {
		before := e.snapshot(t)
		code, body := e.d.call("POST", tc.path, tc.body)
		if code != tc.status || !strings.Contains(body, tc.want) || !strings.Contains(body, `"code"`) {
			t.Errorf("%s: %d %s, want %d naming %q", tc.name, code, body, tc.status, tc.want)
		}
		if after := e.snapshot(t); after != before {
			t.Errorf("%s changed the node:\nbefore %s\nafter  %s", tc.name, before, after)
		}
	}
}

func TestDaemonRestartReadopts(t *testing.T) {
	e := newDaemonEnv(t)
	d, fc, c1, nodeA := e.d, e.fc, e.c1, e.nodeA
	e.deployC1C2(t)
	hostIf1 := hostIfName("app.ns.svc1.sns", 0)
	before, _ := containerIf(t, c1.NS, "eth0")
	hostBefore, _ := containerIf(t, nodeA.NS, hostIf1)
	d.stop()
	after, _ := containerIf(t, c1.NS, "eth0")
	if !slices.Equal(after.addrs, before.addrs) || after.mac != before.mac {
		t.Fatalf("stopped daemon changed the container: %+v -> %+v", before, after)
	}
	// Still reachable with the daemon down (kernel routing).
	if err := testbed.Ping(e.c2.NS, netip.MustParseAddr("10.18.0.2"), 3, time.Second); err != nil {
		t.Error(err)
	}
	// A stale socket (no one listening) is replaced.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: d.sock}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	d.start()
	if fi, err := os.Stat(d.sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v %v", fi.Mode(), err)
	}
	s := d.status()
	if !s.Registered || len(s.Containers) != 2 || s.Dataplane.Tables["ports"] != 2 {
		t.Fatalf("after restart: %+v", s)
	}
	for _, c := range s.Containers {
		if c.Job == "app.ns.svc1.sns" && (c.NSIP4.String() != "10.18.0.2" || c.NSIP6.String() != "fc00::2" || c.HostIf != hostIf1) {
			t.Errorf("re-adopted %+v", c)
		}
	}
	after, _ = containerIf(t, c1.NS, "eth0")
	hostAfter, _ := containerIf(t, nodeA.NS, hostIf1)
	if !slices.Equal(after.addrs, before.addrs) || after.mac != before.mac || hostAfter.mac != hostBefore.mac {
		t.Errorf("re-adopt changed addresses or MACs: %+v/%s -> %+v/%s", before, hostBefore.mac, after, hostAfter.mac)
	}
	if err := testbed.Ping(c1.NS, netip.MustParseAddr("fc00::3"), 3, time.Second); err != nil {
		t.Error(err)
	}
	// It re-registers with the cluster it registered with (state file).
	deadline := time.Now().Add(5 * time.Second)
	for !d.status().Confirmed {
		if time.Now().After(deadline) {
			t.Fatal("no re-registration after restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
	fc.mu.Lock()
	if n := len(fc.regs); n != 2 || fc.regs[1].NodeID != "nodeA" {
		t.Errorf("cluster saw registrations %+v", fc.regs)
	}
	fc.mu.Unlock()
	// A new deploy after the restart gets the next free address.
	e.deploy(t, e.deployC3Body(), "10.18.0.4")
}

func TestDaemonUndeploy(t *testing.T) {
	e := newDaemonEnv(t)
	d, fc, nodeA := e.d, e.fc, e.nodeA
	e.deployC1C2(t)
	e.deploy(t, e.deployC3Body(), "10.18.0.4")
	hostIf2 := hostIfName("app.ns.svc2.sns", 1)
	code, body := d.call("POST", "/docker/undeploy", `{"serviceName":"app.ns.svc2.sns","instanceNumber":1}`)
	if code != 200 {
		t.Fatalf("undeploy: %d %s", code, body)
	}
	for _, l := range linkNames(t, nodeA.NS) {
		if strings.HasPrefix(l, hostIf2+"/") {
			t.Errorf("veth %s left", l)
		}
	}
	if ls := linkNames(t, e.c2.NS); len(ls) != 1 { // lo only
		t.Errorf("container c2 still has %v", ls)
	}
	st, err := loadState(d.stateFile())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Subnets.Lookup("app.ns.svc2.sns/1"); err == nil {
		t.Error("nsIP of c2 still held")
	}
	if len(st.Containers) != 2 {
		t.Errorf("state lists %d containers", len(st.Containers))
	}
	fc.mu.Lock()
	if len(fc.unds) != 1 || fc.unds[0].JobName != "app.ns.svc2.sns" || fc.unds[0].InstanceNumber != 1 {
		t.Errorf("cluster undeploy reports %+v", fc.unds)
	}
	fc.mu.Unlock()
	// Undeploying c1 removes its port mappings.
	if code, body := d.call("POST", "/container/undeploy", `{"serviceName":"app.ns.svc1.sns","instanceNumber":0}`); code != 200 {
		t.Fatalf("undeploy c1: %d %s", code, body)
	}
	if tbl := nftTableText(t, nodeA.NS); strings.Contains(tbl, " dnat ip") {
		t.Errorf("DNAT left after undeploy:\n%s", tbl)
	}
	// The freed address comes back (after never-used ones).
	e.deploy(t, fmt.Sprintf(`{"pid":%d,"serviceName":"app.ns.svc2.sns","instanceNumber":1}`, e.c2pid), "10.18.0.5")
}

func TestDaemonRestartDropsVanished(t *testing.T) {
	e := newDaemonEnv(t)
	d := e.d
	e.register(t)
	e.deploy(t, e.deployC2Body(), "10.18.0.2")
	e.deploy(t, e.deployC3Body(), "10.18.0.3")
	d.stop()
	hostIf3 := hostIfName("app.ns.svc3.sns", 0)
	err := testbed.Handle(e.nodeA.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(hostIf3)
		if err != nil {
			return err
		}
		return h.LinkDel(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	d.start()
	s := d.status()
	if len(s.Containers) != 1 || s.Containers[0].Job != "app.ns.svc2.sns" {
		t.Fatalf("after restart: %+v", s.Containers)
	}
	st, err := loadState(d.stateFile())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Subnets.Lookup("app.ns.svc3.sns/0"); err == nil {
		t.Error("vanished container's nsIP still held")
	}
	e.waitUndeployReports(t, 1)
}

func TestDaemonTeardown(t *testing.T) {
	e := newDaemonEnv(t)
	d, nodeA := e.d, e.nodeA
	e.deployC1C2(t)
	d.stop()
	out, err := testbed.Run(20*time.Second, nodeA.NS, append([]string{daemonBinary(t), "teardown"}, d.args()...)...)
	if err != nil {
		t.Fatalf("teardown: %v", err)
	}
	for _, l := range linkNames(t, nodeA.NS) {
		if strings.HasPrefix(l, "ow") {
			t.Errorf("link %s left after teardown", l)
		}
	}
	for _, c := range []*testbed.Container{e.c1, e.c2, e.c3} {
		if ls := linkNames(t, c.NS); len(ls) != 1 {
			t.Errorf("container %s still has %v", c.Name, ls)
		}
	}
	if _, err := testbed.Run(5*time.Second, nodeA.NS, "nft", "list", "table", "inet", "oakwire"); err == nil {
		t.Error("nft table oakwire left after teardown")
	}
	if _, err := os.Stat(d.stateFile()); !os.IsNotExist(err) {
		t.Errorf("state file left: %v", err)
	}
	fw, _ := testbed.Run(5*time.Second, nodeA.NS, "cat", "/proc/sys/net/ipv4/ip_forward")
	if strings.TrimSpace(string(fw)) != "0" {
		t.Errorf("ip_forward %q not restored", fw)
	}
	t.Logf("teardown output: %s", out)
}

// TestDaemonClusterFlag: with --node-id and --cluster the daemon registers
// by itself at start, retrying until the cluster answers.
func TestDaemonClusterFlag(t *testing.T) {
	bed, node := daemonNode(t)
	c := emptyContainer(t, node, "c1")
	// Reserve a port in the node namespace, start the daemon, then the
	// cluster: the first attempts fail and are retried.
	var addr string
	if err := testbed.Do(node.NS, func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		addr = ln.Addr().String()
		return ln.Close()
	}); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, bed, node)
	d.extra = []string{"--node-id", "n1", "--cluster", addr}
	d.start()
	deadline := time.Now().Add(5 * time.Second)
	for d.status().LastError == "" {
		if time.Now().After(deadline) {
			t.Fatal("no failed registration attempt reported in /status")
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, body := d.call("POST", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"a.b.c.d"}`, c.NS))
	if code != http.StatusConflict || !strings.Contains(body, "connection refused") {
		t.Errorf("deploy while the cluster is down: %d %s", code, body)
	}
	fc := &fakeCluster{}
	if err := testbed.Do(node.NS, func() error { return fc.listen(t, addr) }); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(8 * time.Second)
	for !d.status().Confirmed {
		if time.Now().After(deadline) {
			t.Fatalf("not registered: %+v", d.status())
		}
		time.Sleep(100 * time.Millisecond)
	}
	code, body = d.call("POST", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"a.b.c.d"}`, c.NS))
	if code != 200 || !strings.Contains(body, "10.18.0.2") {
		t.Fatalf("deploy: %d %s", code, body)
	}
	if code, body := d.call("POST", "/register", fmt.Sprintf(`{"client_id":"n2","cluster_address":%q}`, addr)); code != http.StatusConflict {
		t.Errorf("register as another node: %d %s", code, body)
	}
	d.stop()
	if _, err := testbed.Run(20*time.Second, node.NS, append([]string{daemonBinary(t), "teardown"}, d.args()...)...); err != nil {
		t.Fatal(err)
	}
	for _, l := range linkNames(t, node.NS) {
		if strings.HasPrefix(l, "ow") {
			t.Errorf("link %s left after teardown", l)
		}
	}
}

// gate holds the fake cluster's answer to a report back until the test
// opens it.
type gate struct{ arrived, opened chan struct{} }

func newGate() *gate { return &gate{arrived: make(chan struct{}, 1), opened: make(chan struct{})} }

func (g *gate) hold(r *http.Request) {
	select {
	case g.arrived <- struct{}{}:
	default:
	}
	select {
	case <-g.opened:
	case <-r.Context().Done():
	}
}

func (g *gate) open() {
	select {
	case <-g.opened:
	default:
		close(g.opened)
	}
}

type callResult struct {
	code int
	body string
	err  error
}

// callAsync runs a POST in the background (no t.Fatal off the test
// goroutine).
func (d *daemon) callAsync(path, body string) <-chan callResult {
	ch := make(chan callResult, 1)
	go func() {
		resp, err := d.client.Post("http://netmanager"+path, "application/json", strings.NewReader(body))
		if err != nil {
			ch <- callResult{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		ch <- callResult{code: resp.StatusCode, body: string(b)}
	}()
	return ch
}

// TestDaemonSlowCluster: while a deploy waits for a cluster that does not
// answer, the daemon is not stalled: /status answers (and lists the deploy
// as in flight), another deploy goes through, and the waiting deploy's
// instance and host port stay reserved. When the cluster finally refuses
// the report, the deploy is rolled back completely although another
// deploy saved the state meanwhile. An undeploy waiting for the cluster
// does not stall the daemon either, and keeps its instance from being
// deployed again until its report is out.
func TestDaemonSlowCluster(t *testing.T) {
	bed, node := daemonNode(t)
	c1 := emptyContainer(t, node, "c1")
	c2 := emptyContainer(t, node, "c2")
	// The deploy report of app.ns.hang.sns hangs, then fails (503); so
	// does the undeploy report of app.ns.ok.sns, then succeeds.
	slowDeploy, slowUndeploy := newGate(), newGate()
	defer slowDeploy.open()
	defer slowUndeploy.open()
	fc := startFakeClusterWith(t, node.NS, func(r *http.Request, rep api.InstanceReport) {
		switch {
		case rep.JobName == "app.ns.hang.sns":
			slowDeploy.hold(r)
		case rep.JobName == "app.ns.ok.sns" && strings.HasSuffix(r.URL.Path, "/undeployed"):
			slowUndeploy.hold(r)
		}
	})
	d := newDaemon(t, bed, node)
	d.start()
	if code, body := d.call("POST", "/register", fmt.Sprintf(`{"client_id":"n1","cluster_address":%q}`, fc.addr)); code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	links := strings.Join(linkNames(t, node.NS), ",")

	hung := d.callAsync("/container/deploy",
		fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.hang.sns","instanceNumber":0,"portMappings":"7070:70/tcp"}`, c1.NS))
	select {
	case <-slowDeploy.arrived:
	case r := <-hung:
		t.Fatalf("deploy ended before the cluster got its report: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the cluster never got the report")
	}

	// Generous bounds: what is asserted is that the daemon answers at all
	// while its deploy waits (the report's timeout is 10 s).
	quick := &http.Client{Timeout: 5 * time.Second, Transport: d.client.Transport}
	get := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://netmanager"+path, strings.NewReader(body))
		resp, err := quick.Do(req)
		if err != nil {
			t.Fatalf("%s %s while a deploy waits for the cluster: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("GET", "/status", "")
	var s Status
	if code != 200 || json.Unmarshal([]byte(body), &s) != nil {
		t.Fatalf("status: %d %s", code, body)
	}
	if !slices.Equal(s.Deploying, []string{"app.ns.hang.sns/0"}) || len(s.Containers) != 0 {
		t.Errorf("status while the deploy waits: deploying %v, containers %v", s.Deploying, s.Containers)
	}
	if code, body := get("GET", "/metrics", ""); code != 200 || !strings.Contains(body, "oakwire_netmanager_containers 0") {
		t.Errorf("metrics: %d %s", code, body)
	}
	if tbl := nftTableText(t, node.NS); !strings.Contains(tbl, "tcp dport 7070 dnat") {
		t.Errorf("the waiting deploy's port mapping is not live:\n%s", tbl)
	}
	for _, tc := range []struct{ name, path, body, want string }{
		{"same instance", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.hang.sns","instanceNumber":0}`, c2.NS), "in progress"},
		{"same host port", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.ok.sns","portMappings":"7070:71/tcp"}`, c2.NS), "app.ns.hang.sns/0"},
		{"undeploy it", "/container/undeploy", `{"serviceName":"app.ns.hang.sns","instanceNumber":0}`, "in progress"},
	} {
		if code, body := get("POST", tc.path, tc.body); code != http.StatusConflict || !strings.Contains(body, tc.want) {
			t.Errorf("%s while its deploy waits: %d %s, want 409 naming %q", tc.name, code, body, tc.want)
		}
	}
	code, body = get("POST", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.ok.sns","portMappings":"8080:80/tcp"}`, c2.NS))
	if code != 200 || !strings.Contains(body, `"10.18.0.3"`) {
		t.Fatalf("another deploy while one waits: %d %s", code, body)
	}

	slowDeploy.open()
	var r callResult
	select {
	case r = <-hung:
	case <-time.After(15 * time.Second):
		t.Fatal("the waiting deploy did not end after the cluster answered")
	}
	if r.err != nil || r.code != http.StatusBadGateway || !strings.Contains(r.body, "redis down") {
		t.Fatalf("waiting deploy: %+v, want 502 naming the cluster's error", r)
	}
	st, err := loadState(d.stateFile())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Containers) != 1 || st.Containers[0].Job != "app.ns.ok.sns" {
		t.Errorf("state lists %+v, want app.ns.ok.sns only", st.Containers)
	}
	if _, err := st.Subnets.Lookup("app.ns.hang.sns/0"); err == nil {
		t.Error("state file still holds the rolled-back deploy's nsIPs")
	}
	hostOK := hostIfName("app.ns.ok.sns", 0)
	var want []string
	for _, l := range linkNames(t, node.NS) {
		if !strings.HasPrefix(l, hostOK+"/") {
			want = append(want, l)
		}
	}
	if got := strings.Join(want, ","); got != links {
		t.Errorf("node links after the rollback (the new deploy's aside):\n%s\nwant\n%s", got, links)
	}
	if ls := linkNames(t, c1.NS); len(ls) != 1 {
		t.Errorf("container c1 still has %v", ls)
	}
	if tbl := nftTableText(t, node.NS); strings.Contains(tbl, "7070") || !strings.Contains(tbl, "tcp dport 8080 dnat") {
		t.Errorf("nft after the rollback:\n%s", tbl)
	}
	if s := d.status(); len(s.Deploying) != 0 || len(s.Containers) != 1 {
		t.Errorf("status after the rollback: deploying %v, %d containers", s.Deploying, len(s.Containers))
	}

	undeploy := d.callAsync("/container/undeploy", `{"serviceName":"app.ns.ok.sns","instanceNumber":0}`)
	select {
	case <-slowUndeploy.arrived:
	case r := <-undeploy:
		t.Fatalf("undeploy ended before the cluster got its report: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the cluster never got the undeploy report")
	}
	if code, body := get("GET", "/status", ""); code != 200 || !strings.Contains(body, `"containers":[]`) {
		t.Errorf("status while an undeploy waits: %d %s", code, body)
	}
	redeploy := fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.ok.sns"}`, c2.NS)
	if code, body := get("POST", "/container/deploy", redeploy); code != http.StatusConflict || !strings.Contains(body, "undeploy") {
		t.Errorf("deploy while its undeploy waits: %d %s, want 409", code, body)
	}
	slowUndeploy.open()
	select {
	case r = <-undeploy:
	case <-time.After(15 * time.Second):
		t.Fatal("the undeploy did not end after the cluster answered")
	}
	if r.err != nil || r.code != 200 {
		t.Fatalf("undeploy: %+v", r)
	}
	if code, body := d.call("POST", "/container/deploy", redeploy); code != 200 {
		t.Errorf("deploy after its undeploy: %d %s", code, body)
	}
	d.stop() // a clean exit (under -race: no race in the daemon)

	// A daemon that died while a deploy waited, after another change had
	// saved the state, left nsIPs held by no container: a restart frees
	// them.
	st, err = loadState(d.stateFile())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Subnets.Alloc("app.ns.cut.sns/0"); err != nil {
		t.Fatal(err)
	}
	if err := saveState(d.stateFile(), st); err != nil {
		t.Fatal(err)
	}
	d.start()
	if st, err = loadState(d.stateFile()); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Subnets.Lookup("app.ns.cut.sns/0"); err == nil {
		t.Error("restart kept nsIPs held by no container")
	}
	if _, err := st.Subnets.Lookup("app.ns.ok.sns/0"); err != nil || len(st.Containers) != 1 {
		t.Errorf("restart dropped the attached container's nsIPs: %v, containers %+v", err, st.Containers)
	}
	d.stop()
}

// bpfLinks reads the bpf link count of an xdpView.
func bpfLinks(view string) int {
	var n int
	if i := strings.Index(view, "bpf links "); i >= 0 {
		fmt.Sscanf(view[i:], "bpf links %d", &n)
	}
	return n
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// offloadState is "on" when eth0 in ns has TX checksum offload, TSO and GSO
// on, "off" when all are off, else "mixed".
func offloadState(t *testing.T, ns string) string {
	t.Helper()
	on := 0
	err := testbed.Do(ns, func() error {
		for _, cmd := range []uint32{unix.ETHTOOL_GTXCSUM, unix.ETHTOOL_GTSO, unix.ETHTOOL_GGSO} {
			v, err := ethtool.Get("eth0", cmd)
			if err != nil {
				return err
			}
			if v != 0 {
				on++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	switch on {
	case 0:
		return "off"
	case 3:
		return "on"
	}
	return "mixed"
}

// xdpView is what a refused deploy must leave as it was on a node running
// the AF_XDP data plane: the node's links with their XDP state, its AF_XDP
// sockets, the daemon's bpf_link and program fds and the engine's own
// counts.
func xdpView(t *testing.T, ns string, pid int, s DataplaneStats) string {
	t.Helper()
	v, err := xdpViewErr(ns, pid, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func xdpViewErr(ns string, pid int, s DataplaneStats) (string, error) {
	var links []string
	err := testbed.Handle(ns, func(h *netlink.Handle) error {
		ls, err := h.LinkList()
		for _, l := range ls {
			x := l.Attrs().Xdp
			links = append(links, fmt.Sprintf("%s/%s/xdp=%v", l.Attrs().Name, l.Type(), x != nil && x.Attached))
		}
		return err
	})
	if err != nil {
		return "", err
	}
	slices.Sort(links)
	// AF_XDP sockets are the daemon's sockets with rings mapped (ss
	// --xdp needs CONFIG_XDP_SOCKETS_DIAG, which kernels may lack).
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return "", err
	}
	xsks := map[string]bool{}
	for _, l := range strings.Split(string(maps), "\n") {
		if f := strings.Fields(l); len(f) == 6 && strings.HasPrefix(f[5], "socket:[") {
			xsks[f[5]] = true
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return "", err
	}
	bpf := map[string]int{}
	for _, f := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, f.Name())); err == nil && strings.HasPrefix(l, "anon_inode:bpf") {
			bpf[l]++
		}
	}
	return fmt.Sprintf("links %s\nAF_XDP sockets %d\nbpf links %d, programs %d\nengine sockets %d ports %d",
		strings.Join(links, ","), len(xsks), bpf["anon_inode:bpf_link"], bpf["anon_inode:bpf-prog"], s.Sockets, s.Tables["ports"]), nil
}

// TestDaemonXDPRollback: with the AF_XDP data plane, kernel tier on or
// off, a deploy that the cluster refuses after the data plane attached the
// port is rolled back completely: no veth, no XDP or TC link, no AF_XDP
// socket left, and the engine's sockets and ports are as before.
func TestDaemonXDPRollback(t *testing.T) {
	for _, offload := range []string{"off", "on"} {
		t.Run("offload="+offload, func(t *testing.T) { testDaemonXDPRollback(t, offload) })
	}
}

func testDaemonXDPRollback(t *testing.T, offload string) {
	tier := offload == "on"
	bed, node := daemonNode(t)
	c1 := emptyContainer(t, node, "c1")
	c3 := emptyContainer(t, node, "c3")
	var daemonPID atomic.Int64
	during := make(chan string, 1)
	fc := startFakeClusterWith(t, node.NS, func(_ *http.Request, rep api.InstanceReport) {
		if rep.JobName == "app.ns.fail.sns" {
			// The port is attached when the report goes out: the view
			// here shows what the rollback has to undo. (No call to
			// the daemon: the test goroutine is waiting on it.)
			v, err := xdpViewErr(node.NS, int(daemonPID.Load()), DataplaneStats{})
			if err != nil {
				v = "error: " + err.Error()
			}
			during <- v
		}
	})
	d := newDaemon(t, bed, node)
	// The worker keys reach the engine (and /status says what runs).
	d.extra = []string{"--dataplane", "xdp", "--worker-cpus", "0", "--worker-yield", "go", "--worker-spin", "150us", "--offload", offload}
	d.start()
	daemonPID.Store(int64(d.proc.Pid()))
	if code, body := d.call("POST", "/register", fmt.Sprintf(`{"client_id":"n1","cluster_address":%q}`, fc.addr)); code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	code, body := d.call("POST", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc1.sns"}`, c1.NS))
	if code != 200 {
		t.Fatalf("deploy c1: %d %s", code, body)
	}
	// Sockets: the uplink's and the port's; with the kernel tier the one
	// worker's punt socket only.
	s := d.status()
	wantSockets, wantMode := 2, "xdp-generic"
	if tier {
		wantSockets, wantMode = 1, "kernel-tier"
	}
	if s.Dataplane.Mode != wantMode || s.Dataplane.Sockets != wantSockets || s.Dataplane.Tables["ports"] != 1 {
		t.Fatalf("data plane after one deploy: %+v", s.Dataplane)
	}
	c1Offloads := "off"
	if tier {
		c1Offloads = "on" // the tier keeps TSO/GSO/TX checksum
	}
	if got := offloadState(t, c1.NS); got != c1Offloads {
		t.Errorf("c1 offloads %s, want %s", got, c1Offloads)
	}
	if !slices.Equal(s.Dataplane.CPUs, []int{0}) || s.Dataplane.Yield != "go" || s.Workers != s.Dataplane.Workers {
		t.Errorf("worker settings in /status: cpus %v yield %q workers %d (data plane %d)", s.Dataplane.CPUs, s.Dataplane.Yield, s.Workers, s.Dataplane.Workers)
	}
	pid := d.proc.Pid()
	before := xdpView(t, node.NS, pid, s.Dataplane)

	code, body = d.call("POST", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.fail.sns","portMappings":"9999:99"}`, c3.NS))
	if code != http.StatusBadGateway || !strings.Contains(body, "redis down") {
		t.Fatalf("refused deploy: %d %s, want 502", code, body)
	}
	var mid string
	select {
	case mid = <-during:
	default:
		t.Fatal("the cluster never saw the refused report")
	}
	s = d.status()
	after := xdpView(t, node.NS, pid, s.Dataplane)
	t.Logf("before:\n%s\nwhile the report was out:\n%s", before, mid)
	if after != before {
		t.Errorf("a refused deploy changed the node:\nbefore %s\nafter  %s", before, after)
	}
	// The rollback had something to undo: the failed port was attached.
	hostIf := hostIfName("app.ns.fail.sns", 0)
	if !tier && (!strings.Contains(mid, hostIf+"/veth/xdp=true") || !strings.Contains(mid, "AF_XDP sockets 3")) {
		t.Errorf("%s not attached (XDP, a third AF_XDP socket) while its report was out:\n%s", hostIf, mid)
	}
	if tier && (!strings.Contains(mid, hostIf+"/veth/xdp=false") || bpfLinks(mid) != bpfLinks(before)+1) {
		t.Errorf("%s not attached (tc_port: one more bpf link) while its report was out:\n%s", hostIf, mid)
	}
	if ls := linkNames(t, c3.NS); len(ls) != 1 {
		t.Errorf("container c3 still has %v", ls)
	}
	if s.Counters["deploy_errors"] != 1 || len(s.Containers) != 1 {
		t.Errorf("status: deploy_errors %d, %d containers", s.Counters["deploy_errors"], len(s.Containers))
	}
	// And the data plane still works for the next deploy into c3.
	code, body = d.call("POST", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"app.ns.svc3.sns"}`, c3.NS))
	if code != 200 {
		t.Fatalf("deploy c3 after the refused one: %d %s", code, body)
	}
	if s := d.status(); s.Dataplane.Sockets != wantSockets+btoi(!tier) || s.Dataplane.Tables["ports"] != 2 {
		t.Errorf("data plane after the second deploy: %+v", s.Dataplane)
	}
	d.stop()
}
