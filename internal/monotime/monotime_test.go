package monotime

import (
	"testing"
	"time"
)

func TestNow(t *testing.T) {
	a := Now()
	time.Sleep(time.Millisecond)
	if b := Now(); b-a < int64(time.Millisecond) || a < 0 {
		t.Fatalf("Now went from %d to %d over a 1 ms sleep", a, b)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Now() }); n != 0 {
		t.Fatalf("%v allocations per Now", n)
	}
}
