package xsk

import (
	"runtime"
	"testing"
)

func TestTopology(t *testing.T) {
	topo := DetectTopology()
	t.Log(topo)
	if topo.NumCPU != runtime.NumCPU() || topo.NumCPU < 1 {
		t.Fatalf("NumCPU %d, runtime says %d", topo.NumCPU, runtime.NumCPU())
	}
	if w := topo.SuggestWorkers(); w < 1 || w > topo.NumCPU {
		t.Fatalf("SuggestWorkers %d with %d CPUs", w, topo.NumCPU)
	}
	for _, c := range []struct {
		topo Topology
		want int
	}{
		{Topology{NumCPU: 1}, 1},
		{Topology{NumCPU: 2}, 1},
		{Topology{NumCPU: 8}, 4},
		{Topology{NumCPU: 16, LogicalCores: 16, PhysicalCores: 8, ThreadsPerCore: 2}, 4},
		{Topology{NumCPU: 4, LogicalCores: 16, PhysicalCores: 8, ThreadsPerCore: 2}, 2}, // affinity-limited
	} {
		if got := c.topo.SuggestWorkers(); got != c.want {
			t.Errorf("%+v: SuggestWorkers %d, want %d", c.topo, got, c.want)
		}
	}
}
