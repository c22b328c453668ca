package main

import (
	"time"

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
	spin    time.Duration
}

// defaultOakwirePlacement is the worker placement (--oakwire-cpus, see
// perf.ParsePlacement) bench uses unless told otherwise: none, the
// engine's own default, so the suite measures what an operator runs.
// Measured on the 2-vCPU machine with sched_yield spinning and the
// RawSyscall load tools, 2 s floods, 3 rounds each (delivered pps, loss,
// RR p50, TCP):
//
//	none (unpinned)  108–144 k  49–60 %   62–63 µs  1.45–1.56 Gbit/s
//	1 (both on 1)    153–181 k  26–42 %  115–127 µs  0.91–0.99 Gbit/s
//	0 (both on 0)     36–37 k  83–85 %   48–77 µs  1.05–1.24 Gbit/s
//	1/0 (A 1, B 0)    43 k      82–85 %   39–54 µs  1.60–1.79 Gbit/s
//	0/1 (A 0, B 1)    43 k      84–85 %   40–47 µs  1.43–2.00 Gbit/s
//
// Pinning both workers to the sink's CPU delivers the most packets, but
// then every hop to and from the request/response pair (on CPU 0) wakes
// another CPU, and a halted vCPU takes tens of µs to wake (cpuidle
// haltpoll with guest_halt_poll_ns=0 here): p50 doubles. Unpinned, the
// scheduler keeps a worker near the application it serves.
const defaultOakwirePlacement = "none"

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
		return &perf.Oakwire{Mode: opts.mode, Workers: opts.workers, CPUsA: opts.cpusA, CPUsB: opts.cpusB, Yield: opts.yield, Spin: opts.spin}
	})
	perf.Register("oakwire-tier", func() perf.Dataplane {
		return &perf.Oakwire{Mode: opts.mode, Workers: opts.workers, CPUsA: opts.cpusA, CPUsB: opts.cpusB, Yield: opts.yield, Spin: opts.spin,
			Offload: true, Label: "oakwire-tier"}
	})
}
