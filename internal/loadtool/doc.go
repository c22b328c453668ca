// Package loadtool is Oakwire's one set of load tools: the small programs
// that run inside emulated containers, bounded in packets and seconds,
// each printing one JSON result (results.go) on stdout. Two binaries
// expose them as subcommands (Suite): cmd/netbench the perf suite's
// (Bench), cmd/owload the deployment's and the tests' (Workload, a static
// binary that also runs in podman images).
//
// Server tools write "listening ADDR" (ReadyPrefix) to stderr once bound.
//
// The raw-socket tools (udpflood, udpsink, Bench's udpecho, rr) make their
// per-packet system calls with RawSyscall and expect GOMAXPROCS=1 (the
// perf suite sets it); see raw_linux.go for why. Their measured behaviour
// is the perf suite's method: change it only with a measurement.
package loadtool
