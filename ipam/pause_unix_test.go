//go:build unix

package ipam

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"
)

// pauseRedis stops the redis-server behind c with SIGSTOP: it keeps its
// connections and data but answers nothing, like a hung server. resume
// (SIGCONT) is idempotent and also runs at cleanup.
func pauseRedis(t testing.TB, c redis.UniversalClient) (resume func()) {
	t.Helper()
	info, err := c.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatalf("redis INFO: %v", err)
	}
	pid := 0
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, _ = strconv.Atoi(v)
		}
	}
	if pid <= 0 {
		t.Fatal("redis INFO: no process_id")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP redis-server %d: %v", pid, err)
	}
	done := false
	resume = func() {
		if done {
			return
		}
		done = true
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT redis-server %d: %v", pid, err)
		}
	}
	t.Cleanup(resume)
	return resume
}
