//go:build linux

package perf

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/loadtool"
)

func sampleReport() *Report {
	rep := &Report{
		Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Elapsed: 42,
		Config:   SmokeConfig(),
		Machine:  Machine{CPU: "Test CPU", NumCPU: 2, Kernel: "6.18", Go: "go1.26", XDPMode: "n/a"},
		Measured: []string{"routed", "kernel"},
	}
	for i, name := range []string{"routed", "kernel", "routed", "kernel"} {
		k := float64(i/2 + 1)
		rep.Rounds = append(rep.Rounds, RoundResult{
			Dataplane: name, Round: i/2 + 1, Position: i%2 + 1, Target: "10.18.0.66:9000",
			Flood: &FloodMeasure{Sender: loadtool.FloodResult{Sent: 1000}, Sink: loadtool.SinkResult{Received: 990}, SentPPS: 100e3 * k, DeliveredPPS: 99e3 * k, LossPct: 1},
			RR:    &loadtool.RRResult{Count: 100, P50us: 30 * k, P99us: 80 * k, P999us: 120 * k},
			TCP:   &TCPMeasure{Gbps: 10 * k},
		})
	}
	rep.Rounds[3].Errors = []string{"tcp: a | pipe"}
	rep.summarize()
	return rep
}

func TestMarkdown(t *testing.T) {
	rep := sampleReport()
	rep.Failures = []string{"micro: BenchmarkX allocates (1 allocs/op; SPEC §9.1 wants 0)"}
	var b strings.Builder
	if err := rep.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"# Oakwire performance report",
		"| routed | 148.5 k (99.0 k–198.0 k) |",         // median and spread of two rounds
		"| 45 (30–60) | 120 (80–160) | 180 (120–240) |", // p50, p99, p99.9
		"No oakwire dataplane was measured",
		"Test CPU",
		"tcp: a / pipe", // a | in an error must not break the table
		"![packets/s and latency per dataplane](chart.png)",
		"## Failures\n\n- **micro: BenchmarkX allocates",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	// Every table row of a table has as many cells as its header.
	lines := strings.Split(md, "\n")
	for i := 1; i < len(lines); i++ {
		if strings.HasPrefix(lines[i], "|---") {
			cols := strings.Count(lines[i-1], "|")
			for j := i + 1; j < len(lines) && strings.HasPrefix(lines[j], "|"); j++ {
				if c := strings.Count(lines[j], "|"); c != cols {
					t.Errorf("line %d has %d bars, header %d: %s", j, c, cols, lines[j])
				}
			}
		}
	}
}

func TestMarkdownRatios(t *testing.T) {
	rep := sampleReport()
	rep.Measured = append(rep.Measured, OakwireName, OakwireAFXDPName)
	rep.Rounds = append(rep.Rounds, RoundResult{Dataplane: OakwireName, Round: 1, Position: 3,
		Flood: &FloodMeasure{DeliveredPPS: 297e3}, RR: &loadtool.RRResult{Count: 10, P50us: 45, P99us: 120}, TCP: &TCPMeasure{Gbps: 1.5}})
	rep.summarize()
	var b strings.Builder
	if err := rep.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"| metric | oakwire/kernel | oakwire/routed | oakwire-afxdp/kernel | oakwire-afxdp/routed |",
		"| UDP pps delivered (higher is better) | 2.00× | 2.00× | — (not measured) | — (not measured) |",
		"| TCP throughput (higher is better) | 0.10× | 0.10× |",
		"| CPU per packet (lower is better) | — (not measured) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("ratios lack %q:\n%s", want, md)
		}
	}
}

func TestMarkdownControl(t *testing.T) {
	rep := sampleReport()
	rep.Control = &ControlResult{Conns: 64, Services: 256, Root: "process", Redis: "redis-server 7.0.15",
		Deploys:  OpStat{N: 20000, PerSec: 4600, P50us: 12000, P99us: 47000, RootCPUus: 76},
		Resolves: OpStat{N: 50000, PerSec: 3700}, RedisPing: OpStat{N: 1000, PerSec: 56000},
		RawEvalsha: 35000, DeployRatio: 0.13,
		Cluster: &ControlClusterRun{Masters: []string{"a", "b", "c"}, Deploys: OpStat{N: 20000, PerSec: 2900, RootCPUus: 110},
			RawEvalsha: 30000, Shares: []float64{0.36, 0.31, 0.33}}}
	var b strings.Builder
	if err := rep.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"A root servicemanager process (its CPU read from /proc)",
		"| one Redis (redis-server 7.0.15) | instance deploy | 20000 | 4600 | 12000 | 47000 | 76 |",
		"| one Redis (redis-server 7.0.15) | raw PING (same concurrency) | 1000 | 56000 | 0 | 0 | — |",
		"| Redis Cluster, 3 masters | instance deploy | 20000 | 2900 | 0 | 0 | 110 |",
		"deploys 0.13× of it",
		"each master's share of root's scripts during the deploy run: 36 %, 31 %, 33 %.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("control section lacks %q:\n%s", want, md)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	rep := sampleReport()
	rep.Measured = append(rep.Measured, OakwireName) // no round: NaN ratios
	rep.summarize()
	root := t.TempDir()
	dir, err := rep.Write(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Join(root, "latest")} {
		for _, f := range []string{"report.md", "report.json", "chart.png"} {
			if st, err := os.Stat(filepath.Join(d, f)); err != nil || st.Size() == 0 {
				t.Errorf("%s/%s: %v", d, f, err)
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	if len(back.Summary) != 3 || back.Summary[0].DeliveredPPS.Median != 148.5e3 {
		t.Errorf("round trip: %+v", back.Summary)
	}
	if !strings.Contains(string(b), `"delivered_pps": null`) {
		t.Error("NaN ratios must be null in JSON")
	}
}

func TestParseBench(t *testing.T) {
	out := []byte(`goos: linux
BenchmarkEgressRemote-2              	   20330	      5893 ns/op	        92.10 cpu-ns/packet	        92.08 ns/packet	       0 B/op	       0 allocs/op
BenchmarkDecode-2                    	13154944	         9.019 ns/op	       0 B/op	       0 allocs/op
BenchmarkX-2 	 100	 6400 ns/op	 100 ns/packet	 128 B/op	 2 allocs/op
PASS
`)
	bs := ParseBench(out)
	if len(bs) != 3 {
		t.Fatalf("got %d benchmarks", len(bs))
	}
	if b := bs[0]; !b.PerPacket || b.NsPerPacket != 92.08 || b.CPUNsPerPacket != 92.10 || b.AllocsPerPacket != 0 || b.Iterations != 20330 {
		t.Errorf("%+v", b)
	}
	if b := bs[1]; b.PerPacket || b.NsPerOp != 9.019 {
		t.Errorf("%+v", b)
	}
	if b := bs[2]; b.AllocsPerPacket != 2.0/64 {
		t.Errorf("allocs/packet = %v, want 2/64", b.AllocsPerPacket)
	}
}

func TestKubeProxyRules(t *testing.T) {
	topo := &Topology{ServiceIP: serviceV4, ServerIP: nth(subnetB, 2), Ports: DefaultPorts}
	one := kubeProxyRules(topo, 1)
	two := kubeProxyRules(topo, 2)
	for _, want := range []string{"-A PREROUTING", "-j KUBE-SERVICES", "-d 10.30.0.1/32 -p udp", "--dport 9000",
		"DNAT --to-destination 10.18.0.66:9000", "--set-xmark 0x4000/0x4000", "MASQUERADE", "COMMIT"} {
		if !strings.Contains(one, want) {
			t.Errorf("rules lack %q", want)
		}
	}
	if strings.Contains(one, "statistic") {
		t.Error("one backend must not use -m statistic")
	}
	if strings.Count(two, "-m statistic --mode random --probability 0.50000000000") != 3 {
		t.Errorf("two backends: want one random jump per service port:\n%s", two)
	}
}
