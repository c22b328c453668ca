//go:build linux

package perf

import (
	"math"
	"testing"
)

func TestMedianSummarize(t *testing.T) {
	if m := Median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("odd median %v", m)
	}
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("even median %v", m)
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("empty median: want NaN")
	}
	s := Summarize([]float64{10, math.NaN(), 30, 20, math.Inf(1)})
	if s.N != 3 || s.Median != 20 || s.Min != 10 || s.Max != 30 {
		t.Errorf("Summarize = %+v", s)
	}
	if e := Summarize([]float64{math.NaN()}); e.Valid() {
		t.Errorf("all NaN: %+v", e)
	}
	if r := Ratio(Summarize([]float64{50}), Summarize([]float64{100})); r != 0.5 {
		t.Errorf("Ratio = %v", r)
	}
	if r := Ratio(Summary{}, Summarize([]float64{100})); !math.IsNaN(r) {
		t.Errorf("Ratio without oakwire = %v, want NaN", r)
	}
	if r := Ratio(Summarize([]float64{1}), Summarize([]float64{0})); !math.IsNaN(r) {
		t.Errorf("Ratio by zero = %v, want NaN", r)
	}
}

func TestRotate(t *testing.T) {
	names := []string{"a", "b", "c"}
	for r, want := range []string{"abc", "bca", "cab", "abc"} {
		got := ""
		for _, n := range rotate(names, r) {
			got += n
		}
		if got != want {
			t.Errorf("rotate %d = %s, want %s", r, got, want)
		}
	}
}
