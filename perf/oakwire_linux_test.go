//go:build linux

package perf

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oakwire/oakwire/internal/testenv"
)

// registerOakwireForTest registers the AF_XDP dataplane with the test
// binary as its xdpnode (TestMain) and removes it again at the end, so
// TestSmoke still sees it unregistered.
func registerOakwireForTest(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	Register(OakwireName, func() Dataplane {
		return &Oakwire{Cmd: []string{exe}, Env: []string{toolEnv + "=1"}}
	})
	t.Cleanup(func() {
		regMu.Lock()
		delete(registry, OakwireName)
		regMu.Unlock()
	})
}

// TestSmokeOakwire runs the smoke suite with the AF_XDP dataplane next to
// the kernel peers (tiny counts) and checks that the oakwire row has
// numbers, the ratios are present, the engines' counters were collected,
// and no namespace or XDP program is left behind (Teardown fails the round
// if a program stays attached).
func TestSmokeOakwire(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "iperf3")
	testenv.RequireBinary(t, "iptables-restore")
	testenv.RequireBinary(t, "ethtool")
	registerOakwireForTest(t)
	before := benchNamespaces(t)
	cfg := tinyConfig(t)
	cfg.Control = false
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Rounds {
		if len(r.Errors) > 0 {
			t.Errorf("%s: %v", r.Dataplane, r.Errors)
		}
	}
	if !rep.OakwireRegistered || len(rep.Missing) != 0 || len(rep.Summary) != 3 {
		t.Fatalf("registered %v, missing %v, summary %+v", rep.OakwireRegistered, rep.Missing, rep.Summary)
	}
	ow := rep.summaryOf(OakwireName)
	if ow.DeliveredPPS.Median <= 0 || ow.P50us.Median <= 0 || ow.TCPGbps.Median <= 0 {
		t.Errorf("oakwire: implausible numbers: %+v", ow)
	}
	if ow.Info["xdp_mode"] == "" || ow.Info["worker_placement"] == "" {
		t.Errorf("oakwire: settings %v", ow.Info)
	}
	if len(rep.Ratios) != 2 {
		t.Fatalf("ratios: %+v", rep.Ratios)
	}
	for _, r := range rep.Ratios {
		for name, v := range map[string]jsonFloat{"pps": r.DeliveredPPS, "p50": r.P50us, "p99": r.P99us, "tcp": r.TCPGbps} {
			if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
				t.Errorf("ratio oakwire/%s %s: %v", r.Baseline, name, f)
			}
		}
	}
	for _, r := range rep.Rounds {
		if r.Dataplane == OakwireName && (r.Counters["a.rx"] == 0 || r.Counters["b.rx"] == 0) {
			t.Errorf("oakwire counters: %v", r.Counters)
		}
	}
	md, _ := os.ReadFile(filepath.Join(rep.Dir, "report.md"))
	if strings.Contains(string(md), "not registered") {
		t.Error("report.md says oakwire is not registered")
	}
	if after := benchNamespaces(t); after != before {
		t.Errorf("namespaces left behind: %d before, %d after", before, after)
	}
}
