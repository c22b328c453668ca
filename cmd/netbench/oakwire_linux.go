package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/oakwire/oakwire/fastpath/xsk"
	"github.com/oakwire/oakwire/perf"
)

// owFlags are bench's --oakwire-* flags: netmanager settings for the
// oakwire dataplanes. Their defaults are empty: the daemons then run with
// netmanager's own defaults, what an operator runs.
type owFlags struct {
	mode, cpus, yield *string
	workers           *int
	spin              *time.Duration
}

func oakwireFlags(fs *flag.FlagSet) owFlags {
	return owFlags{
		mode:    fs.String("oakwire-mode", "", "oakwire: netmanager --xdp-mode, generic or native (default: netmanager's)"),
		workers: fs.Int("oakwire-workers", 0, "oakwire: netmanager --workers (0: netmanager's default, half the CPUs)"),
		cpus:    fs.String("oakwire-cpus", "none", "oakwire: worker placement (netmanager --worker-cpus): none (unpinned), a CPU list for both nodes, or A/B per node (node A = client/sender, B = server/sink), e.g. 1/0"),
		yield:   fs.String("oakwire-yield", "", "oakwire: netmanager --worker-yield, os, go or none (default: netmanager's)"),
		spin:    fs.Duration("oakwire-spin", 0, "oakwire: netmanager --worker-spin, the adaptive spin's cap (0: netmanager's default)"),
	}
}

func (f owFlags) settings() (perf.OakwireSettings, error) {
	var s perf.OakwireSettings
	if *f.mode != "" && *f.mode != "generic" && *f.mode != "native" {
		return s, fmt.Errorf("--oakwire-mode %q: want generic or native", *f.mode)
	}
	if *f.yield != "" {
		if _, err := xsk.ParseYield(*f.yield); err != nil {
			return s, err
		}
	}
	if *f.spin < 0 || *f.spin > time.Second {
		return s, fmt.Errorf("--oakwire-spin %v out of range (0–1s)", *f.spin)
	}
	if *f.workers < 0 {
		return s, fmt.Errorf("--oakwire-workers %d: want ≥ 0", *f.workers)
	}
	a, b, err := perf.ParsePlacement(*f.cpus)
	if err != nil {
		return s, err
	}
	s = perf.OakwireSettings{Mode: *f.mode, Workers: *f.workers, CPUsA: a, CPUsB: b, Yield: *f.yield, Spin: *f.spin}
	return s, nil
}
