package redistest

import (
	"strings"
	"testing"

	"github.com/oakwire/oakwire/internal/redisproc"
)

func TestStartStopRestart(t *testing.T) {
	t.Parallel()
	s := Start(t)
	if got, err := redisproc.Command(s.Addr, "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v", got, err)
	}
	if !strings.HasPrefix(s.URL(), "redis://127.0.0.1:") || !strings.HasSuffix(s.URL(), "/0") {
		t.Fatalf("URL = %q", s.URL())
	}
	s.Stop()
	if _, err := redisproc.Command(s.Addr, "PING"); err == nil {
		t.Fatal("PING answered after Stop")
	}
	s.Stop() // idempotent
	s.Restart()
	if got, err := redisproc.Command(s.Addr, "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING after Restart = %q, %v", got, err)
	}
}

func TestParallelServers(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 4 {
		s := Start(t)
		if seen[s.Addr] {
			t.Fatalf("address %s handed out twice", s.Addr)
		}
		seen[s.Addr] = true
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := StartCluster(t)
	if len(c.Addrs()) != 3 {
		t.Fatalf("Addrs = %v", c.Addrs())
	}
	for _, a := range c.Addrs() {
		info, err := redisproc.Command(a, "CLUSTER", "INFO")
		if err != nil || !strings.Contains(info, "cluster_state:ok") {
			t.Fatalf("%s: CLUSTER INFO = %q, %v", a, info, err)
		}
	}
}
