//go:build linux

package xsk

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func threadCPU(tb testing.TB) time.Duration {
	tb.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestPollerIdleCPU runs a worker loop with hybrid polling on an idle socket
// for 2 s and measures the worker thread's CPU time: after the spin window it
// must sleep in poll(2).
func TestPollerIdleCPU(t *testing.T) {
	b := newBed(t, 1)
	p := b.pairs[0]
	xsks := attachSteer(t, b.nsA, p.idxA, echoPort)
	s := newSocketIn(t, b.nsA, Config{Ifindex: p.idxA, Queue: 0, NumFrames: 512})
	if err := xsks.Put(uint32(0), uint32(s.Fd())); err != nil {
		t.Fatal(err)
	}
	pl, err := NewPoller(PollerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	pl.Add(s.Fd())

	const idle = 2 * time.Second
	type result struct {
		cpu, wall time.Duration
		rounds    int
	}
	res := make(chan result)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		descs := make([]Desc, 64)
		c0, w0 := threadCPU(t), time.Now()
		rounds := 0
		for time.Since(w0) < idle {
			s.Complete()
			s.FillFromFree(0)
			n := s.Receive(descs)
			for _, d := range descs[:n] {
				s.FreeFrame(d.Addr)
			}
			pl.Wait(n > 0)
			rounds++
		}
		res <- result{threadCPU(t) - c0, time.Since(w0), rounds}
	}()
	r := <-res
	pct := 100 * r.cpu.Seconds() / r.wall.Seconds()
	st := pl.Stats()
	t.Logf("idle worker: %v CPU in %v = %.3f%% (%d rounds, %d sleeps)", r.cpu, r.wall, pct, r.rounds, st.Sleeps)
	if pct >= 2 {
		t.Errorf("idle worker used %.2f%% CPU, want < 2%%", pct)
	}
	if st.Sleeps == 0 {
		t.Errorf("poller never slept")
	}
}

// TestPollerNotify checks that Notify wakes a sleeping worker well before
// its poll timeout, and that Pending cancels a sleep.
func TestPollerNotify(t *testing.T) {
	var pending atomic.Bool
	pl, err := NewPoller(PollerConfig{Spin: time.Microsecond, Timeout: 5 * time.Second,
		Pending: pending.Load})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	woke := make(chan time.Duration, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for pl.Stats().Sleeps == 0 { // spin out the 1 µs window, then sleep once
			t0 := time.Now()
			slept, err := pl.Wait(false)
			if err != nil {
				t.Error(err)
				break
			}
			if slept {
				woke <- time.Since(t0)
				return
			}
		}
		woke <- -1
	}()
	deadline := time.Now().Add(2 * time.Second)
	for !pl.sleeping.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let it enter poll(2)
	t0 := time.Now()
	if err := pl.Notify(); err != nil {
		t.Fatal(err)
	}
	d := <-woke
	t.Logf("slept %v; woken %v after Notify", d, time.Since(t0))
	if d < 0 || d > time.Second {
		t.Fatalf("Notify did not wake the poller (slept %v)", d)
	}
	if pl.Stats().Notified != 1 {
		t.Errorf("stats %+v", pl.Stats())
	}

	// Pending work cancels the sleep.
	pending.Store(true)
	time.Sleep(time.Millisecond)
	for i := 0; i < 1e6 && pl.Stats().Cancelled == 0; i++ {
		if slept, _ := pl.Wait(false); slept {
			t.Fatal("slept with work pending")
		}
	}
	if pl.Stats().Cancelled == 0 {
		t.Errorf("Pending never cancelled a sleep: %+v", pl.Stats())
	}
}
