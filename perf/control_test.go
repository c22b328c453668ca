package perf

import (
	"context"
	"encoding/json"
	"flag"
	"math"
	"testing"

	"github.com/oakwire/oakwire/internal/testenv"
)

// controlFull runs TestRunControl with the suite's full counts (the
// numbers in README and docs/design.md):
//
//	go test -count=1 -run TestRunControl -v ./perf/ -control-full
var controlFull = flag.Bool("control-full", false, "TestRunControl with the bench suite's counts, printing the result")

// TestRunControl runs the control section alone, against a single Redis
// and a three-master Redis Cluster (each a real redis-server), with small
// counts unless -control-full. It checks that every part was measured,
// not how fast.
func TestRunControl(t *testing.T) {
	testenv.RequireBinary(t, "redis-server")
	testenv.RequireBinary(t, "redis-cli")
	cfg := DefaultConfig()
	if !*controlFull {
		cfg.ControlDeploys, cfg.ControlQueries, cfg.ControlPings, cfg.ControlConns = 1000, 1000, 2000, 16
	}
	res, err := RunControl(context.Background(), cfg)
	if res != nil {
		b, _ := json.MarshalIndent(res, "", "  ")
		t.Logf("%s", b)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Deploys.N != cfg.ControlDeploys || res.Resolves.N != cfg.ControlQueries {
		t.Errorf("single Redis: %d deploys, %d resolves measured", res.Deploys.N, res.Resolves.N)
	}
	if res.Root == "process" && res.Deploys.RootCPUus <= 0 {
		t.Errorf("root's CPU per deploy not measured")
	}
	c := res.Cluster
	if c == nil {
		t.Fatal("no Redis Cluster run")
	}
	if c.Deploys.N != cfg.ControlDeploys || c.Resolves.N != cfg.ControlQueries {
		t.Errorf("cluster: %d deploys, %d resolves measured", c.Deploys.N, c.Resolves.N)
	}
	sum := 0.0
	for _, s := range c.Shares {
		sum += s
	}
	if len(c.Shares) != 3 || math.Abs(sum-1) > 1e-6 {
		t.Errorf("master shares %v", c.Shares)
	}
}
