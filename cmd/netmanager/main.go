// Command netmanager is Oakwire's node daemon (SPEC §7, §8):
//
//	netmanager [--config FILE] --node-id ID --uplink IFACE --node-ip IP [--tunnel-port 50103]
//	  --cluster URL [--socket PATH] [--state-dir DIR] [--workers N] [...]
//	netmanager teardown [--config FILE] [--socket PATH] [--state-dir DIR]
//	netmanager status|flows|drops|services [--socket PATH | --config FILE] [--json] [...]
//	netmanager --version
//
// Every flag is also a key of the YAML file (configs/netmanager.yaml);
// flags win over the file. SIGTERM/SIGINT stop the API and the data plane
// and leave containers attached; a restart re-adopts them. `teardown`
// removes everything the daemon set up on the node. status, flows, drops
// and services ask the running daemon over its socket (cli.go). --version (or
// `version`) prints the build: version, commit, Go, and the SHA-256 of
// each embedded BPF object.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/dataplane"
	"github.com/oakwire/oakwire/internal/version"
	"github.com/oakwire/oakwire/netmanager"
)

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Print(build().Text("netmanager"))
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if args := os.Args[1:]; isCLI(args) {
		if err := runCLI(ctx, args[0], args[1:], os.Stdout, os.Stderr); err != nil {
			if !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintf(os.Stderr, "netmanager %s: %v\n", args[0], err)
			}
			stop()
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "netmanager:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	teardown := len(args) > 0 && args[0] == "teardown"
	if teardown {
		args = args[1:]
	}
	cfg, err := netmanager.LoadConfig(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	level, err := netmanager.ParseLogLevel(cfg.LogLevel)
	if err != nil {
		return fmt.Errorf("log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if teardown {
		return netmanager.Teardown(cfg, log, dataplane.Teardown)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	dp, err := newDataplane(cfg, log)
	if err != nil {
		return err
	}
	d, err := netmanager.New(netmanager.Options{
		Config:     cfg,
		Dataplane:  dp,
		NewCluster: netmanager.NodeClientCluster(cfg.ClusterToken()),
		Logger:     log,
		Build:      build(),
	})
	if err != nil {
		return err
	}
	return d.Run(ctx)
}

// build is this binary's version with the hashes of the BPF objects it
// carries, for --version, /status and /metrics.
func build() version.Info { return version.Get().WithBPF(bpfprog.ObjectHashes()) }
