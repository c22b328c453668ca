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

// TestSmokeOakwire runs the smoke suite with both oakwire dataplanes (the
// real daemons) next to the kernel overlay (tiny counts) and checks that
// their rows have numbers, the ratios are present, the daemons' counters
// were collected and show which tier carried the packets, and no
// namespace is left behind.
func TestSmokeOakwire(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "iperf3")
	testenv.RequireBinary(t, "iptables-restore")
	testenv.RequireBinary(t, "redis-server")
	before := benchNamespaces(t)
	cfg := tinyConfig(t)
	cfg.Control = false
	cfg.Dataplanes = []string{"kernel", OakwireName, OakwireAFXDPName}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Rounds {
		if len(r.Errors) > 0 {
			t.Errorf("%s: %v", r.Dataplane, r.Errors)
		}
	}
	if len(rep.Summary) != 3 {
		t.Fatalf("summary %+v", rep.Summary)
	}
	for _, name := range []string{OakwireName, OakwireAFXDPName} {
		ow := rep.summaryOf(name)
		if ow.DeliveredPPS.Median <= 0 || ow.P50us.Median <= 0 || ow.TCPGbps.Median <= 0 || ow.CPUNsPerPkt.Median <= 0 {
			t.Errorf("%s: implausible numbers: %+v", name, ow)
		}
		if ow.Info["worker_placement"] == "" || ow.Info["offload"] == "" {
			t.Errorf("%s: settings %v", name, ow.Info)
		}
	}
	if len(rep.Ratios) != 4 {
		t.Fatalf("ratios: %+v", rep.Ratios)
	}
	for _, r := range rep.Ratios {
		if r.Baseline == "routed" {
			continue // not measured here
		}
		for name, v := range map[string]jsonFloat{"pps": r.DeliveredPPS, "p50": r.P50us, "p99": r.P99us, "tcp": r.TCPGbps, "cpu": r.CPUNsPerPkt} {
			if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
				t.Errorf("ratio %s/%s %s: %v", r.Dataplane, r.Baseline, name, f)
			}
		}
	}
	for _, r := range rep.Rounds {
		c := r.Counters
		switch r.Dataplane {
		case OakwireName:
			// The kernel tier took the flows over: TCP's segments went
			// through it, and the workers saw the first packets.
			if c["a.tier_opened"] == 0 || c["a.rx"] == 0 {
				t.Errorf("oakwire counters: %v", c)
			}
		case OakwireAFXDPName:
			if c["a.rx"] == 0 || c["b.rx"] == 0 || c["a.tier_opened"] != 0 {
				t.Errorf("oakwire-afxdp counters: %v", c)
			}
		}
	}
	md, _ := os.ReadFile(filepath.Join(rep.Dir, "report.md"))
	if !strings.Contains(string(md), "oakwire-afxdp/kernel") {
		t.Error("report.md lacks the oakwire-afxdp/kernel ratios")
	}
	if left := leftBehind(before, benchNamespaces(t)); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
}
