package xsk

import (
	"testing"
	"time"
)

// TestSpinnerAdapts: a worker whose work comes back quickly spins about
// twice the usual gap; one whose gaps outlast the cap sleeps at once; a
// fixed spinner always spins the cap.
func TestSpinnerAdapts(t *testing.T) {
	const us = int64(time.Microsecond)
	run := func(s *spinner, gap int64, bouts int) (now int64) {
		for range bouts {
			s.work(now)
			now += gap
			s.idle(now - gap + 1)
		}
		s.work(now)
		return now
	}
	fast := newSpinner(200*time.Microsecond, false)
	run(&fast, 20*us, 64)
	if b := fast.budget(); b < 30*us || b > 50*us {
		t.Errorf("20 µs gaps: spin %v, want about 40 µs", time.Duration(b))
	}
	sparse := newSpinner(200*time.Microsecond, false)
	run(&sparse, 400*us, 64)
	if b := sparse.budget(); b != 0 {
		t.Errorf("400 µs gaps: spin %v, want none", time.Duration(b))
	}
	// It sleeps at once: the first idle round says so.
	if sparse.idle(1 << 40) {
		t.Error("sparse worker spins")
	}
	// And comes back when the traffic does.
	run(&sparse, 5*us, 64)
	if b := sparse.budget(); b == 0 || b > 20*us {
		t.Errorf("5 µs gaps after sparse ones: spin %v", time.Duration(b))
	}
	fixed := newSpinner(200*time.Microsecond, true)
	run(&fixed, 400*us, 8)
	if b := fixed.budget(); b != 200*us {
		t.Errorf("fixed: spin %v", time.Duration(b))
	}
}
