package main

import (
	"github.com/oakwire/oakwire/perf"
)

// oakwireOpts are the AF_XDP dataplane's settings for bench (flags
// --oakwire-mode, --oakwire-workers, --oakwire-cpus).
type oakwireOpts struct {
	mode    string
	workers int
	cpusA   []int // node A's engine (client, flood sender)
	cpusB   []int // node B's engine (server, sink)
	yield   string
}

// defaultOakwirePlacement is the worker placement (--oakwire-cpus, see
// perf.ParsePlacement) bench uses unless told otherwise: both engines'
// workers on CPU 1, the sink's CPU, away from the flood sender (CPU 0) and
// the request/response pair (CPU 0). Measured on the 2-vCPU machine,
// smoke mode with 2 s floods, medians of 3 interleaved rounds (delivered
// pps, loss, RR p50, TCP):
//
//	none (unpinned)  282 k  60 %  283 µs  2.51 Gbit/s
//	1 (both on 1)    316 k  54 %  242 µs  1.44 Gbit/s
//	0 (both on 0)    149 k  66 %  445 µs  1.62 Gbit/s
//	1/0 (A 1, B 0)   138 k  76 %  236 µs  2.52 Gbit/s
//	0/1 (A 0, B 1)   144 k  80 %  254 µs  2.67 Gbit/s
//
// CPU 1 delivers the most packets with the least loss and the best
// latency; the price is TCP (iperf3 is not pinned and shares CPU 1 with
// both workers), where unpinned does better.
const defaultOakwirePlacement = "1"

func init() {
	a, b, err := perf.ParsePlacement(defaultOakwirePlacement)
	if err != nil {
		panic(err)
	}
	registerOakwire(oakwireOpts{mode: "generic", cpusA: a, cpusB: b})
}

// registerOakwire (re-)registers the AF_XDP dataplane with opts; each round
// gets a fresh value that runs `netbench xdpnode` (this executable) in the
// node namespaces.
func registerOakwire(opts oakwireOpts) {
	perf.Register(perf.OakwireName, func() perf.Dataplane {
		return &perf.Oakwire{Mode: opts.mode, Workers: opts.workers, CPUsA: opts.cpusA, CPUsB: opts.cpusB, Yield: opts.yield}
	})
}
