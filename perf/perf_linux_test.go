//go:build linux

package perf

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/oakwire/oakwire/internal/loadtool"
	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/internal/testenv"
)

// toolEnv makes the test binary act as the load tools (loadtool.Bench) when
// the suite runs it inside a namespace.
const toolEnv = "OAKWIRE_PERF_TOOL"

func TestMain(m *testing.M) {
	if os.Getenv(toolEnv) == "1" {
		os.Exit(loadtool.Bench.Run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// tinyConfig is a smoke run with tiny counts, the test binary as the tools.
func tinyConfig(t *testing.T) Config {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := SmokeConfig()
	cfg.Tool, cfg.ToolEnv = []string{exe}, []string{toolEnv + "=1"}
	cfg.Dataplanes = []string{"routed", "kernel"}
	cfg.Out = t.TempDir()
	cfg.FloodDuration, cfg.FloodCount = 500*time.Millisecond, 200_000
	cfg.RRCount = 300
	cfg.TCPDuration = time.Second
	cfg.CPURate, cfg.CPUDuration = 5000, 300*time.Millisecond
	cfg.Micro = false
	_, err = exec.LookPath("redis-server")
	cfg.Control = err == nil
	cfg.ControlDeploys, cfg.ControlQueries, cfg.ControlPings = 200, 500, 1000
	cfg.Progress = testWriter{t}
	return cfg
}

// benchNamespaces counts namespaces that look like ours.
func benchNamespaces(t *testing.T) map[string]bool {
	ents, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), "-a-cli") || strings.HasSuffix(e.Name(), "-b-srv") {
			out[e.Name()] = true
		}
	}
	return out
}

// leftBehind is every bench namespace in after that was not in before:
// what a run left (another suite running meanwhile may come and go).
func leftBehind(before, after map[string]bool) []string {
	var out []string
	for n := range after {
		if !before[n] {
			out = append(out, n)
		}
	}
	return out
}

// TestSmoke runs the routed and kernel peers in smoke mode with tiny
// counts and checks the report: files, numbers > 0, loss sane, no ratios
// without an oakwire dataplane, namespaces gone.
func TestSmoke(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "iperf3")
	testenv.RequireBinary(t, "iptables-restore")
	before := benchNamespaces(t)
	cfg := tinyConfig(t)
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"report.md", "report.json", "chart.png"} {
		for _, d := range []string{rep.Dir, filepath.Join(cfg.Out, "latest")} {
			if st, err := os.Stat(filepath.Join(d, f)); err != nil || st.Size() == 0 {
				t.Errorf("%s/%s: %v", d, f, err)
			}
		}
	}
	for _, r := range rep.Rounds {
		if len(r.Errors) > 0 {
			t.Errorf("%s: %v", r.Dataplane, r.Errors)
		}
	}
	if len(rep.Failures) > 0 {
		t.Errorf("failures: %v", rep.Failures)
	}
	if len(rep.Summary) != 2 {
		t.Fatalf("summary: %+v", rep.Summary)
	}
	for _, s := range rep.Summary {
		if s.DeliveredPPS.Median <= 0 || s.P50us.Median <= 0 || s.P99us.Median < s.P50us.Median || s.TCPGbps.Median <= 0 || s.CPUNsPerPkt.Median <= 0 {
			t.Errorf("%s: implausible numbers: %+v", s.Dataplane, s)
		}
		// The kernel paths run on the sender's CPU: sent ≈ received.
		if l := s.LossPct.Median; l < 0 || l > 20 {
			t.Errorf("%s: loss %.2f %%", s.Dataplane, l)
		}
	}
	if len(rep.Ratios) != 0 {
		t.Errorf("ratios without an oakwire dataplane: %+v", rep.Ratios)
	}
	md, _ := os.ReadFile(filepath.Join(rep.Dir, "report.md"))
	if !strings.Contains(string(md), "No oakwire dataplane was measured") {
		t.Error("report.md must say no oakwire dataplane was measured")
	}
	if cfg.Control {
		c := rep.Control
		if c == nil || c.Deploys.PerSec <= 0 || c.Resolves.P50us <= 0 || c.RedisPing.PerSec <= 0 {
			t.Errorf("control: %+v (notes %v)", c, rep.Notes)
		}
	}
	if left := leftBehind(before, benchNamespaces(t)); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
}

// TestKernelPeerShape checks that the kernel peer's traffic really goes
// through the kube-proxy DNAT chain and the VXLAN device, and the routed
// peer's through neither.
func TestKernelPeerShape(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "iptables-restore")
	cfg := tinyConfig(t)
	if err := cfg.fill(); err != nil {
		t.Fatal(err)
	}
	for _, dp := range []Dataplane{&Kernel{Backends: 2}, &Routed{}} {
		topo, err := NewTopology(t.Name())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = topo.Close() })
		if err := dp.Setup(context.Background(), topo); err != nil {
			t.Fatal(err)
		}
		r := &runner{cfg: &cfg, topo: topo}
		if err := r.probe(context.Background(), dp.Target().Addr()); err != nil {
			t.Fatalf("%s: %v", dp.Name(), err)
		}
		var vxTx uint64
		_ = testbed.Handle(topo.A.NS, func(h *netlink.Handle) error {
			if l, err := h.LinkByName(vxlanName); err == nil {
				vxTx = l.Attrs().Statistics.TxPackets
			}
			return nil
		})
		nat, err := testbed.Run(10*time.Second, topo.A.NS, "iptables", "-w", "5", "-t", "nat", "-S")
		if dp.Name() == "routed" {
			if vxTx != 0 || err == nil && strings.Contains(string(nat), "KUBE") {
				t.Errorf("routed: vxlan tx %d, nat rules %s", vxTx, nat)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if vxTx < 5 {
			t.Errorf("kernel: vxlan tx packets %d, want ≥ 5", vxTx)
		}
		if !strings.Contains(string(nat), "statistic --mode random") {
			t.Errorf("kernel: two backends without -m statistic:\n%s", nat)
		}
		out, err := testbed.Run(10*time.Second, topo.A.NS, "iptables", "-w", "5", "-t", "nat", "-L", "KUBE-SERVICES", "-n", "-v", "-x")
		if err != nil {
			t.Fatal(err)
		}
		hit := false
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) > 2 && strings.HasPrefix(f[2], "KUBE-SVC-") && f[0] != "0" {
				hit = true
			}
		}
		if !hit {
			t.Errorf("kernel: no packet went through a KUBE-SVC chain:\n%s", out)
		}
	}
}
