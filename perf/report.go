//go:build linux

package perf

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Write writes report.json, report.md and chart.png into
// root/<timestamp>/ and copies them to root/latest/. It returns the
// timestamped directory.
func (rep *Report) Write(root string) (string, error) {
	dir := filepath.Join(root, rep.Started.UTC().Format("20060102T150405Z"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("results dir: %w", err)
	}
	files := map[string][]byte{}
	// The chart first, so that a failure to draw it is in the other files.
	if png, err := rep.ChartPNG(); err != nil {
		rep.Failures = append(rep.Failures, "chart: "+err.Error())
	} else {
		files["chart.png"] = png
	}
	j, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return "", fmt.Errorf("report json: %w", err)
	}
	files["report.json"] = append(j, '\n')
	var md strings.Builder
	if err := rep.WriteMarkdown(&md); err != nil {
		return "", err
	}
	files["report.md"] = []byte(md.String())
	latest := filepath.Join(root, "latest")
	if err := os.RemoveAll(latest); err != nil {
		return "", fmt.Errorf("results latest: %w", err)
	}
	if err := os.MkdirAll(latest, 0o755); err != nil {
		return "", fmt.Errorf("results latest: %w", err)
	}
	for name, b := range files {
		for _, d := range []string{dir, latest} {
			if err := os.WriteFile(filepath.Join(d, name), b, 0o644); err != nil {
				return "", fmt.Errorf("write %s: %w", name, err)
			}
		}
	}
	return dir, nil
}

// num formats v with prec decimals, or "—" for NaN.
func num(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// kpps formats packets/s in thousands.
func kpps(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return num(v/1e3, 1) + " k"
}

// cell formats a summary as "median (min–max)" with f, or "—" when empty.
// With one value it prints only the median.
func cell(s Summary, f func(float64) string) string {
	if !s.Valid() {
		return "—"
	}
	if s.N == 1 || s.Min == s.Max {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Median), f(s.Min), f(s.Max))
}

func ratioCell(v jsonFloat) string {
	if math.IsNaN(float64(v)) {
		return "— (not measured)"
	}
	return fmt.Sprintf("%.2f×", float64(v))
}

// writeRatios writes the ratios table: one column per oakwire dataplane
// and baseline.
func (rep *Report) writeRatios(p func(string, ...any)) {
	p("### Ratios")
	p("")
	if len(rep.Ratios) == 0 {
		p("No oakwire dataplane was measured: nothing to compare.")
		p("")
		return
	}
	head, rule := "| metric |", "|---|"
	for _, r := range rep.Ratios {
		head += " " + r.Dataplane + "/" + r.Baseline + " |"
		rule += "---|"
	}
	p("%s", head)
	p("%s", rule)
	for _, m := range []struct {
		name string
		get  func(Ratios) jsonFloat
	}{
		{"UDP pps delivered (higher is better)", func(r Ratios) jsonFloat { return r.DeliveredPPS }},
		{"UDP loss-free pps (higher is better)", func(r Ratios) jsonFloat { return r.LossFreePPS }},
		{"RR p50 latency (lower is better)", func(r Ratios) jsonFloat { return r.P50us }},
		{"RR p99 latency (lower is better)", func(r Ratios) jsonFloat { return r.P99us }},
		{"TCP throughput (higher is better)", func(r Ratios) jsonFloat { return r.TCPGbps }},
		{"CPU per packet (lower is better)", func(r Ratios) jsonFloat { return r.CPUNsPerPkt }},
	} {
		row := "| " + m.name + " |"
		for _, r := range rep.Ratios {
			row += " " + ratioCell(m.get(r)) + " |"
		}
		p("%s", row)
	}
	p("")
}

// WriteMarkdown writes the human-readable report.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	rep.writeHeader(p)
	rep.writeMachine(p)
	rep.writeEndToEnd(p)
	rep.writeRounds(p)
	rep.writeMicro(p)
	rep.writeControl(p)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeHeader writes the title, the run, and the failures and notes if any.
func (rep *Report) writeHeader(p func(string, ...any)) {
	mode := "full"
	if rep.Config.Smoke {
		mode = "smoke (short durations, small counts: for checking the suite, not for quoting)"
	}
	p("# Oakwire performance report")
	p("")
	p("Started %s, took %.0f s; mode: %s; %d round(s), dataplanes interleaved with their order rotated each round; medians with the spread (min–max) over the rounds.",
		rep.Started.UTC().Format(time.RFC3339), rep.Elapsed, mode, rep.Config.Rounds)
	p("")
	if len(rep.Failures) > 0 {
		p("## Failures")
		p("")
		for _, f := range rep.Failures {
			p("- **%s**", f)
		}
		p("")
	}
	if len(rep.Notes) > 0 {
		p("## Notes")
		p("")
		for _, n := range rep.Notes {
			p("- %s", n)
		}
		p("")
	}
}

// writeMachine writes the machine table.
func (rep *Report) writeMachine(p func(string, ...any)) {
	m := rep.Machine
	p("## Machine")
	p("")
	p("| | |")
	p("|---|---|")
	p("| CPU | %s (%s, family %d model %d)%s |", m.CPU, m.Vendor, m.Family, m.Model, map[bool]string{true: ", under a hypervisor"}[m.Hypervisor])
	p("| cores | %d logical, %d physical; %d usable |", m.LogicalCores, m.PhysicalCores, m.NumCPU)
	p("| CPU features (selected; all in report.json) | %s |", strings.Join(m.keyFeatures(), " "))
	p("| kernel | Linux %s (%s) |", m.Kernel, m.KernelVersion)
	p("| Go | %s %s |", m.Go, m.Arch)
	p("| load average at start | %s |", m.LoadAvg)
	p("| iperf3 | %s |", m.Iperf3)
	p("| XDP mode (oakwire) | %s |", m.XDPMode)
	p("")
}

// writeEndToEnd writes what the end-to-end runs do and their summary:
// medians with spreads, ratios, settings and the chart.
func (rep *Report) writeEndToEnd(p func(string, ...any)) {
	p("## End to end")
	p("")
	p("Two emulated nodes in network namespaces joined by one veth underlay (198.18.0.1/.2); client container 10.18.0.2 on node A, server container 10.18.0.66 on node B (/32 addresses, default route via the gateway on-link, static neighbours, MTU 1450). "+
		"UDP flood: 64-byte payloads, sendmmsg/recvmmsg batches of 64, warm-up packets and a pause before the clock, sender on CPU %d and sink on CPU %d, %v or %d packets per run. "+
		"Loss-free rate: when the flood loses more than %.1f %%, the highest paced rate losing no more, by binary search between 0 and the flood's offered rate (%d runs of %v, batches of 16); otherwise the flood's delivered rate. "+
		"Request/response: sequential 64-byte UDP ping-pong, client and server both on CPU %d, %d timed requests. TCP: iperf3, %v. Load tools run with GOMAXPROCS=1 and make their per-packet system calls raw (docs/design.md). "+
		"The oakwire dataplanes are the product as deployed: Redis and the service managers on node A, a netmanager with its defaults on each node, the containers attached by the netmanagers (addresses from the cluster's subnets), the client sending to the service's round-robin IP.",
		rep.Config.FloodCPU, rep.Config.SinkCPU, rep.Config.FloodDuration, rep.Config.FloodCount,
		rep.Config.LossFreeMaxPct, rep.Config.LossFreeSteps, rep.Config.LossFreeProbe,
		rep.Config.RRCPU, rep.Config.RRCount, rep.Config.TCPDuration)
	p("")
	p("CPU per packet: a flood paced at %s packets/s for %v; the CPU time of the sender and the sink (their system calls carry both nodes' kernel paths), every ksoftirqd thread and the dataplane's own processes (Oakwire's daemons, spinning included), per delivered packet. The rounds' table also gives the whole machine's busy time less a quiet window's (noisy when other work runs).",
		num(rep.Config.CPURate, 0), rep.Config.CPUDuration)
	p("")
	p("| dataplane | UDP pps delivered | UDP pps sent | loss %% | loss-free pps | RR p50 µs | RR p99 µs | RR p99.9 µs | RR lost | TCP Gbit/s | CPU ns/packet |")
	p("|---|---|---|---|---|---|---|---|---|---|---|")
	n0 := func(v float64) string { return num(v, 0) }
	for _, s := range rep.Summary {
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", s.Dataplane,
			cell(s.DeliveredPPS, kpps), cell(s.SentPPS, kpps), cell(s.LossPct, func(v float64) string { return num(v, 2) }),
			cell(s.LossFreePPS, kpps),
			cell(s.P50us, n0), cell(s.P99us, n0), cell(s.P999us, n0), cell(s.RRLost, n0),
			cell(s.TCPGbps, func(v float64) string { return num(v, 2) }), cell(s.CPUNsPerPkt, n0))
	}
	p("")
	rep.writeRatios(p)
	for _, s := range rep.Summary {
		if len(s.Info) > 0 {
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(s.Info)) {
				kv = append(kv, k+"="+s.Info[k])
			}
			p("%s settings: %s", s.Dataplane, strings.Join(kv, ", "))
			p("")
		}
	}
	p("![packets/s and latency per dataplane](chart.png)")
	p("")
	p("The load column is the machine's 1-minute load average when the round started; anything well above the tools' own share means other work competed for the %d CPUs and the spread will show it.", rep.Machine.NumCPU)
	p("")
}

// writeRounds writes every round's numbers and each round's non-zero counters.
func (rep *Report) writeRounds(p func(string, ...any)) {
	p("### Every round")
	p("")
	p("| round | # | dataplane | load | target | sent | received | pps delivered | loss %% | rcvbuf drops | loss-free pps (probes: rate → loss %%) | p50/p99/p99.9 µs | TCP Gbit/s | CPU ns/packet (tools + ksoftirqd + dataplane ms; machine ns/packet; loss %%) | errors |")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, x := range rep.Rounds {
		fl, lf, rr, tc, cp := "— | — | — | — | —", "—", "—", "—", "—"
		if l := x.LossFree; l != nil {
			lf = kpps(l.PPS)
			if l.FromFlood {
				lf += " (the flood)"
			}
			var ps []string
			for _, q := range l.Probes {
				ps = append(ps, fmt.Sprintf("%s → %s", kpps(q.RatePPS), num(q.LossPct, 2)))
			}
			if len(ps) > 0 {
				lf += " (" + strings.Join(ps, ", ") + ")"
			}
		}
		if f := x.Flood; f != nil {
			fl = fmt.Sprintf("%d | %d | %s | %s | %d", f.Sender.Sent, f.Sink.Received, kpps(f.DeliveredPPS), num(f.LossPct, 2), f.Sink.RcvbufErrors)
		}
		if q := x.RR; q != nil {
			rr = fmt.Sprintf("%s / %s / %s (%d lost)", num(q.P50us, 0), num(q.P99us, 0), num(q.P999us, 0), q.Lost)
		}
		if t := x.TCP; t != nil {
			tc = num(t.Gbps, 2)
		}
		if c := x.CPU; c != nil {
			cp = fmt.Sprintf("%s (%s + %s + %s; %s; %s)", num(c.NsPerPkt, 0), num(c.ToolsNs/1e6, 0), num(c.KsoftirqdNs/1e6, 0), num(c.DataplaneNs/1e6, 0),
				num(c.MachineNsPerPkt, 0), num(c.LossPct, 2))
		}
		errs := strings.ReplaceAll(strings.Join(x.Errors, "; "), "|", "/")
		p("| %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |", x.Round, x.Position, x.Dataplane, num(x.Load1, 2), x.Target, fl, lf, rr, tc, cp, errs)
	}
	p("")
	for _, x := range rep.Rounds {
		if len(x.Counters) == 0 {
			continue
		}
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(x.Counters)) {
			kv = append(kv, fmt.Sprintf("%s=%d", k, x.Counters[k]))
		}
		p("%s counters, round %d (whole round: probe, flood, request/response, TCP; non-zero only): %s", x.Dataplane, x.Round, strings.Join(kv, ", "))
		p("")
	}
}

// writeMicro writes the micro benchmarks, if they ran.
func (rep *Report) writeMicro(p func(string, ...any)) {
	if mi := rep.Micro; mi != nil && len(mi.Benchmarks) > 0 {
		p("## Micro: the per-packet pipeline")
		p("")
		p("`%s` (per-packet benchmarks process a batch per op; allocations per packet must be 0, SPEC §9.1).", mi.Command)
		p("")
		allocs := 0.0
		for _, x := range mi.Benchmarks {
			allocs += x.AllocsOp
		}
		if allocs > 0 {
			p("**Allocations found on the measured paths** (see allocs/op below).")
		} else {
			p("Zero allocations on every benchmarked path.")
		}
		p("")
		p("| benchmark | ns/packet | cpu-ns/packet | allocs/packet | ns/op | allocs/op | B/op |")
		p("|---|---|---|---|---|---|---|")
		for _, x := range mi.Benchmarks {
			nsp, cpu, app := "—", "—", "—"
			if x.PerPacket {
				nsp, cpu, app = num(x.NsPerPacket, 1), num(x.CPUNsPerPacket, 1), num(x.AllocsPerPacket, 2)
			}
			p("| %s | %s | %s | %s | %s | %s | %s |", x.Name, nsp, cpu, app, num(x.NsPerOp, 1), num(x.AllocsOp, 0), num(x.BytesPerOp, 0))
		}
		p("")
	}
}

// writeControl writes the control-plane results, if they ran.
func (rep *Report) writeControl(p func(string, ...any)) {
	c := rep.Control
	if c == nil {
		return
	}
	p("## Control plane")
	p("")
	p("A root servicemanager process (its CPU read from /proc) over real HTTP on loopback, %d concurrent connections, instance deploys spread over %d services; the clients, the root and Redis share the machine's CPUs. Raw EVALSHA is `redis-benchmark` running a one-key script against the same Redis (one master, for the cluster).", c.Conns, c.Services)
	p("")
	p("| store | operation | count | per second | p50 µs | p99 µs | root CPU µs/op |")
	p("|---|---|---|---|---|---|---|")
	row := func(store, name string, s OpStat) {
		cpu := "—"
		if s.RootCPUus > 0 {
			cpu = num(s.RootCPUus, 0)
		}
		p("| %s | %s | %d | %s | %s | %s | %s |", store, name, s.N, num(s.PerSec, 0), num(s.P50us, 0), num(s.P99us, 0), cpu)
	}
	single := "one Redis (" + c.Redis + ")"
	row(single, "instance deploy", c.Deploys)
	row(single, "table query (resolve)", c.Resolves)
	row(single, "raw PING (same concurrency)", c.RedisPing)
	if cl := c.Cluster; cl != nil {
		name := fmt.Sprintf("Redis Cluster, %d masters", len(cl.Masters))
		row(name, "instance deploy", cl.Deploys)
		row(name, "table query (resolve)", cl.Resolves)
	}
	p("")
	p("Deploys per second against raw EVALSHA: one Redis %s/s raw, deploys %.2f× of it.", num(c.RawEvalsha, 0), c.DeployRatio)
	if cl := c.Cluster; cl != nil {
		shares := make([]string, len(cl.Shares))
		for i, sh := range cl.Shares {
			shares[i] = fmt.Sprintf("%.0f %%", 100*sh)
		}
		p("Redis Cluster: %s/s raw EVALSHA on one master; each master's share of root's scripts during the deploy run: %s.", num(cl.RawEvalsha, 0), strings.Join(shares, ", "))
	}
	p("")
}
