package loadtool

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Suite is the set of tools one binary exposes as subcommands. The two
// suites share udpflood and udpsink; "udpecho" is a different server in
// each, for history's sake (scripts and images call both by that name).
type Suite int

const (
	// Bench is netbench's tools, which the perf suite runs inside its
	// containers: udpflood, udpsink, udpecho (a raw echo) and rr.
	Bench Suite = iota
	// Workload is owload's tools, which internal/deploy, the e2e tests,
	// the demo and podman images run: udpecho and tcpecho (tagged JSON
	// replies), udpask, tcpask, udpsink and udpflood.
	Workload
)

// ReadyPrefix starts the line a server tool writes to stderr once its
// socket is bound ("listening ADDR"): start clients only after it.
const ReadyPrefix = "listening "

type toolFunc func(args []string, stdout, stderr io.Writer) error

// Names lists the suite's tools, for usage texts.
func (s Suite) Names() []string {
	if s == Workload {
		return []string{"udpecho", "tcpecho", "udpask", "tcpask", "udpsink", "udpflood"}
	}
	return []string{"udpflood", "udpsink", "udpecho", "rr"}
}

// Has reports whether name is one of the suite's tools.
func (s Suite) Has(name string) bool { return s.tool(name) != nil }

func (s Suite) tool(name string) toolFunc {
	switch name {
	case "udpflood":
		return runFlood
	case "udpsink":
		return runSink
	}
	if s == Workload {
		switch name {
		case "udpecho":
			return func(a []string, _, e io.Writer) error { return tagEchoUDP(a, e) }
		case "tcpecho":
			return func(a []string, _, e io.Writer) error { return tagEchoTCP(a, e) }
		case "udpask", "tcpask":
			return func(a []string, o, e io.Writer) error { return ask(strings.TrimSuffix(name, "ask"), a, o, e) }
		}
		return nil
	}
	switch name {
	case "udpecho":
		return func(a []string, _, e io.Writer) error { return runEcho(a, e) }
	case "rr":
		return runRR
	}
	return nil
}

// Run runs tool args[0] of the suite with flags args[1:], writing its JSON
// result to stdout and diagnostics to stderr; it returns the exit status
// (2: usage). Every tool is bounded in packets and seconds.
func (s Suite) Run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "tool: want one of %v\n", s.Names())
		return 2
	}
	run := s.tool(args[0])
	if run == nil {
		fmt.Fprintf(stderr, "tool %q: want one of %v\n", args[0], s.Names())
		return 2
	}
	if err := run(args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 2
		}
		fmt.Fprintf(stderr, "%s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// ready writes the ready line for a server bound to addr.
func ready(stderr io.Writer, addr string) {
	fmt.Fprintln(stderr, ReadyPrefix+addr)
}
