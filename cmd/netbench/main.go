//go:build linux

// Command netbench is Oakwire's performance suite (SPEC §9) and the load
// tools it runs inside emulated containers (internal/loadtool's Bench
// suite).
//
//	netbench demo  [--dataplane xdp|none] [--keep]
//	netbench bench [--smoke] [--rounds 3] [--out results] [--dataplanes routed,kernel,oakwire,oakwire-afxdp]
//	               [--oakwire-mode generic|native] [--oakwire-workers N] [--oakwire-cpus none|LIST|A/B]
//	               [--oakwire-yield os|go|none] [--oakwire-spin 200µs] [--cpu-rate 40000]
//	netbench udpflood --dst IP:PORT [--size 64] [--count N] [--duration D] [--batch 64] [--rate PPS] [--cpu C]
//	netbench udpsink  --listen IP:PORT [--duration D] [--idle D] [--cpu C]
//	netbench udpecho  --listen IP:PORT [--duration D] [--cpu C]
//	netbench rr       --dst IP:PORT [--count N] [--cpu C]
//
// bench needs root (network namespaces); it builds its own emulated nodes
// and removes them at the end, on failure and on Ctrl-C.
//
// The oakwire dataplanes (perf.Oakwire) run the real daemons: Redis and
// the service managers on node A, a netmanager on each node, with
// netmanager's defaults unless an --oakwire-* flag says otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/oakwire/oakwire/internal/loadtool"
	"github.com/oakwire/oakwire/internal/version"
	"github.com/oakwire/oakwire/perf"
)

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Print(version.Get().Text("netbench"))
		return
	}
	os.Exit(run(os.Args[1:]))
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: netbench demo [flags] | netbench bench [flags] | netbench {%s} [flags]\n", strings.Join(loadtool.Bench.Names(), ","))
}

func run(args []string) int {
	if len(args) == 0 {
		usage()
		return 2
	}
	switch args[0] {
	case "bench":
		return bench(args[1:])
	case "demo":
		return demo(args[1:])
	case "-h", "--help", "help":
		usage()
		return 0
	}
	if loadtool.Bench.Has(args[0]) {
		return loadtool.Bench.Run(args, os.Stdout, os.Stderr)
	}
	usage()
	return 2
}

func bench(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	smoke := fs.Bool("smoke", false, "short durations, small counts, 1 round (under 2 minutes)")
	rounds := fs.Int("rounds", 0, "interleaved rounds (default 3; 1 with --smoke)")
	out := fs.String("out", "results", "results root: writes OUT/<timestamp>/ and OUT/latest/")
	dps := fs.String("dataplanes", strings.Join(perf.DefaultConfig().Dataplanes, ","), "dataplanes to measure, comma-separated (of "+strings.Join(perf.Dataplanes, ",")+")")
	floodDur := fs.Duration("flood-duration", 0, "UDP flood length per run (default 5s; 1s with --smoke)")
	tcpDur := fs.Duration("tcp-duration", 0, "iperf3 length per run (default 5s; 1s with --smoke)")
	rrCount := fs.Int("rr-count", 0, "timed request/response exchanges per run (default 20000; 2000 with --smoke)")
	rrCPU := fs.Int("rr-cpu", perf.DefaultConfig().RRCPU, "CPU the request/response client and server are pinned to (-1: unpinned)")
	cpuRate := fs.Float64("cpu-rate", perf.DefaultConfig().CPURate, "paced rate (packets/s) of the CPU-per-packet run; 0 skips it")
	noMicro := fs.Bool("no-micro", false, "skip the fastpath micro benchmarks")
	noControl := fs.Bool("no-control", false, "skip the control-plane measurement")
	ow := oakwireFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	settings, err := ow.settings()
	if err != nil {
		fmt.Fprintf(os.Stderr, "netbench bench: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "netbench bench: needs root (network namespaces)")
		return 1
	}
	cfg := perf.DefaultConfig()
	if *smoke {
		cfg = perf.SmokeConfig()
	}
	if *rounds > 0 {
		cfg.Rounds = *rounds
	}
	cfg.Out = *out
	cfg.Dataplanes = nil
	for d := range strings.SplitSeq(*dps, ",") {
		if d = strings.TrimSpace(d); d != "" {
			cfg.Dataplanes = append(cfg.Dataplanes, d)
		}
	}
	if *floodDur > 0 {
		cfg.FloodDuration = *floodDur
	}
	if *tcpDur > 0 {
		cfg.TCPDuration = *tcpDur
	}
	if *rrCount > 0 {
		cfg.RRCount = *rrCount
	}
	cfg.Micro, cfg.Control = !*noMicro, !*noControl
	cfg.Oakwire, cfg.CPURate, cfg.RRCPU = settings, *cpuRate, *rrCPU
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	rep, err := perf.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "netbench bench: %v\n", err)
		return 1
	}
	failed := 0
	for _, r := range rep.Rounds {
		failed += len(r.Errors)
	}
	fmt.Printf("report: %s/report.md (and report.json, chart.png; copied to %s/latest)\n", rep.Dir, cfg.Out)
	for _, f := range rep.Failures {
		fmt.Fprintf(os.Stderr, "netbench bench: %s\n", f)
	}
	if failed > 0 || len(rep.Failures) > 0 {
		fmt.Fprintf(os.Stderr, "netbench bench: %d measurement(s) and %d section(s) failed; see the report\n", failed, len(rep.Failures))
		return 1
	}
	return 0
}
