package xsk

import (
	"fmt"
	"time"

	"github.com/oakwire/oakwire/internal/monotime"
)

// Defaults for PollerConfig.
const (
	DefaultSpin        = 200 * time.Microsecond
	DefaultPollTimeout = 100 * time.Millisecond
)

// PollerConfig tunes hybrid polling. Zero fields take the defaults.
type PollerConfig struct {
	// Spin is the longest the worker keeps polling its rings (yielding
	// between rounds) after the last round that found work, before it
	// blocks in poll(2). DESIGN.md: ~200 µs keeps p99 low without burning
	// an idle CPU. How long it really spins adapts to the traffic unless
	// FixedSpin is set (see spinBudget).
	Spin time.Duration
	// FixedSpin spins the whole Spin after every bout of work, as before
	// the spin adapted.
	FixedSpin bool
	// Timeout bounds one blocking poll(2), so the worker notices shutdown
	// even when nothing wakes it.
	Timeout time.Duration
	// Yield is what a spinning round does before it returns (default
	// YieldOS). See YieldMode.
	Yield YieldMode
	// Pending, if set, is called after the poller has announced that it is
	// going to sleep and before it blocks; returning true cancels the sleep.
	// Use it to re-check work that arrives without an fd event, e.g. an SPSC
	// ring filled by another worker that calls Notify: the announce/re-check
	// here and the enqueue/check-sleeping in Notify are ordered by sequentially
	// consistent atomics, so a wakeup cannot be lost.
	Pending func() bool
}

func (c PollerConfig) withDefaults() PollerConfig {
	if c.Spin <= 0 {
		c.Spin = DefaultSpin
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultPollTimeout
	}
	return c
}

// YieldMode is how a spinning worker yields between rounds.
type YieldMode uint8

const (
	// YieldOS calls sched_yield(2) (the default; ~1.3 µs when nothing else
	// wants the CPU): the CPU goes to any runnable thread — the other
	// node's worker, the application the packet is for — and the worker
	// keeps its P, so the Go scheduler is not involved. The call is a
	// RawSyscall: through Syscall, sysmon sees a P in a system call on
	// every round and keeps waking every 20 µs on the worker's CPU.
	// Request/response over two nodes (make bench, docs/design.md):
	// p50 43–56 µs unpinned, where YieldGo took 100–215 µs.
	YieldOS YieldMode = iota
	// YieldGo calls runtime.Gosched. On a goroutine locked to its thread —
	// a worker — Gosched hands the P to another thread and sleeps on a
	// futex until it is handed back: ~27 µs per yield measured on this
	// machine's kind (0.13 µs unlocked). The pause batches more packets per
	// sendto (BenchmarkXSKEcho flood: 0.2 % lost against YieldOS's 7–17 %
	// at about the same echo rate), but every hop of a request waits for it.
	YieldGo
	// YieldNone spins without yielding (starves co-located applications
	// on small machines: DESIGN.md measured p99 ≈ 5 ms).
	YieldNone
)

// ParseYield maps "os" (or ""), "go" and "none" to a YieldMode.
func ParseYield(s string) (YieldMode, error) {
	switch s {
	case "", "os":
		return YieldOS, nil
	case "go":
		return YieldGo, nil
	case "none":
		return YieldNone, nil
	}
	return 0, fmt.Errorf("yield %q: want os, go or none", s)
}

// String is the mode's name as ParseYield reads it.
func (y YieldMode) String() string {
	switch y {
	case YieldOS:
		return "os"
	case YieldGo:
		return "go"
	case YieldNone:
		return "none"
	}
	return fmt.Sprintf("YieldMode(%d)", uint8(y))
}

// PollerStats counts what a Poller did; owned by the worker.
type PollerStats struct {
	Sleeps     uint64 // blocking poll(2) calls
	Wakeups    uint64 // sleeps ended by an fd event or Notify (not by timeout)
	Notified   uint64 // sleeps ended by Notify
	Cancelled  uint64 // sleeps cancelled by Pending
	PollErrors uint64 // poll(2) errors other than EINTR
}

// spinner decides how long an idle worker spins before it sleeps. A
// spin pays off when work comes back before it ends: then the worker
// forwards at once instead of paying a sleep and a wake-up (tens of µs on
// a VM whose idle vCPUs halt). It is wasted when the next work is further
// away than the spin. So the worker keeps a moving average of how long
// its idle gaps last (from going idle to the next work, sleep included)
// and spins twice that, capped at max, when the average is below max; a
// worker whose gaps are longer than max (paced bursts, sparse traffic, or
// the kernel tier's occasional first packets) sleeps at once. Measured on
// the 2-vCPU VM at a paced 40 kpps, the fixed 200 µs spin was ~70 % of a
// worker's CPU (docs/design.md).
type spinner struct {
	max       int64 // cap, ns
	fixed     bool  // always spin max
	avg       int64 // moving average of idle gaps, ns
	idleStart int64 // when the current idle bout began, 0 while working
}

// spinAvgShift weights the average: each gap counts 1/8.
const spinAvgShift = 3

func newSpinner(max time.Duration, fixed bool) spinner {
	// Start as if gaps were half the cap: a fresh worker spins a while.
	return spinner{max: int64(max), fixed: fixed, avg: int64(max) / 2}
}

// work records a round that found work at now.
func (s *spinner) work(now int64) {
	if s.idleStart != 0 {
		gap := now - s.idleStart
		s.avg += (gap - s.avg) >> spinAvgShift
		s.idleStart = 0
	}
}

// idle records an idle round at now and reports whether the worker should
// keep spinning (false: sleep).
func (s *spinner) idle(now int64) bool {
	if s.idleStart == 0 {
		s.idleStart = now
	}
	return now-s.idleStart < s.budget()
}

// budget is how long to spin after work.
func (s *spinner) budget() int64 {
	if s.fixed {
		return s.max
	}
	if s.avg >= s.max {
		return 0
	}
	return min(2*s.avg, s.max)
}

// nanotime is the monotonic clock the poller reads, fastpath's too.
func nanotime() int64 { return monotime.Now() }
