package fastpath

import "golang.org/x/sys/unix"

// threadCPU returns the calling thread's CPU time in ns (the benchmark
// locks its OS thread), so a busy shared machine does not inflate the
// per-packet cost the way wall time does.
func threadCPU() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return ts.Nano()
}
