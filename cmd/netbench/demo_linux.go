//go:build linux

package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/oakwire/oakwire/internal/deploy"
)

// demo is the main job (make demo, SPEC §8): three emulated nodes in two
// clusters with real redis-server, root and cluster service managers and
// netmanagers; a service with instances on two nodes, one in each cluster,
// reached through its service IPs from a client on the third. Ctrl-C
// cancels it and it still cleans up.
func demo(args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	dp := fs.String("dataplane", "xdp", "netmanager --dataplane: xdp (the AF_XDP fast path) or none (kernel routing only)")
	keep := fs.Bool("keep", false, "keep the work directory (process logs, state files) after the run")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "netbench demo: needs root (network namespaces, XDP)")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := deploy.RunDemoWith(ctx, os.Stdout, deploy.Options{Dataplane: *dp, KeepWorkDir: *keep}); err != nil {
		fmt.Fprintf(os.Stderr, "netbench demo: %v\n", err)
		return 1
	}
	return 0
}
