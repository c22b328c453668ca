//go:build linux

package xsk

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// The benchmarks run their UDP client in a child process (this test binary
// re-executed into TestHelperPump), so the client's goroutines do not share
// the benchmark process's Ps with a worker that spins on a locked thread —
// as in production, where applications are other processes.

const pumpEnv = "OAKWIRE_XSK_PUMP"

// TestHelperPump is the child side; it does nothing in a normal test run.
func TestHelperPump(t *testing.T) {
	spec := os.Getenv(pumpEnv)
	if spec == "" {
		t.Skip("helper process for the benchmarks")
	}
	var nsName, laddr, raddr string
	var total, window, size int
	if _, err := fmt.Sscan(spec, &nsName, &laddr, &raddr, &total, &window, &size); err != nil {
		t.Fatalf("spec %q: %v", spec, err)
	}
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		t.Fatalf("netns %s: %v", nsName, err)
	}
	defer ns.Close()
	c := dialUDP(t, ns, netip.MustParseAddrPort(laddr), netip.MustParseAddrPort(raddr))
	got, elapsed := pump(t, c, total, window, size, 30*time.Second)
	fmt.Printf("PUMP %d %d\n", got, elapsed.Nanoseconds())
}

// pumpChild runs pump in a child process inside namespace nsName.
func pumpChild(tb testing.TB, nsName string, laddr, raddr netip.AddrPort, total, window, size int) (int, time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperPump$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s %d %d %d", pumpEnv, nsName, laddr, raddr, total, window, size))
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("pump child: %v\n%s", err, out)
	}
	i := bytes.Index(out, []byte("PUMP "))
	if i < 0 {
		tb.Fatalf("pump child said:\n%s", out)
	}
	f := bytes.Fields(out[i+5:])
	got, _ := strconv.Atoi(string(f[0]))
	ns, _ := strconv.ParseInt(string(f[1]), 10, 64)
	return got, time.Duration(ns)
}
