//go:build unix

package control

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"
)

// pauseRedis stops the redis-server behind rdb with SIGSTOP: it keeps its
// connections and data but answers nothing, like a hung server. resume
// (SIGCONT) is idempotent and also runs at cleanup.
func pauseRedis(t testing.TB, rdb redis.UniversalClient) (resume func()) {
	t.Helper()
	pid := redisPID(t, rdb)
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

// redisPID is the process id of the server behind rdb (ours: redistest
// started it).
func redisPID(t testing.TB, rdb redis.UniversalClient) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatalf("redis INFO: %v", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("redis process_id %q: %v", v, err)
			}
			return pid
		}
	}
	t.Fatal("redis INFO: no process_id")
	return 0
}
