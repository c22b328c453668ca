// Command owload is the small workload program the emulated deployment
// (internal/deploy), the e2e tests, the demo and podman images run inside
// container namespaces: the Workload suite of internal/loadtool.
//
//	owload udpecho --listen :7000 --tag NAME [--max-seconds 600]
//	owload tcpecho --listen :7001 --tag NAME [--max-seconds 600]
//	owload udpask  --addr IP:PORT [--flows 1] [--per-flow 1] [--timeout 1s] [--max-fail 0]
//	owload tcpask  --addr IP:PORT [--flows 1] [--per-flow 1] [--timeout 1s] [--max-fail 0]
//	owload udpsink --listen :7002 [--seconds 10] [--idle 1s]
//	owload udpflood --addr IP:PORT [--seconds 5] [--size 64] [--max-packets 2000000]
//
// Servers answer every request with one JSON line naming themselves (tag),
// the peer address they saw and the request's id, write "listening ADDR" to
// stderr once bound and exit after --max-seconds. Clients open a new socket
// (a new flow) per flow, send --per-flow requests on it one at a time and
// print a JSON report (loadtool.AskResult). udpsink and udpflood are the
// perf suite's (netbench's) tools; --addr, --seconds and --max-packets are
// owload's names for its --dst, --duration and --count. Every loop is
// bounded in count and time. It is built static and links nothing else.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/oakwire/oakwire/internal/loadtool"
	"github.com/oakwire/oakwire/internal/version"
)

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Print(version.Get().Text("owload"))
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintf(os.Stderr, "usage: owload %s [flags]\n", strings.Join(loadtool.Workload.Names(), "|"))
		os.Exit(2)
	}
	os.Exit(loadtool.Workload.Run(os.Args[1:], os.Stdout, os.Stderr))
}
