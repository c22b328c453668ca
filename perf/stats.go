//go:build linux

package perf

import (
	"math"
	"slices"
	"time"

	"github.com/oakwire/oakwire/internal/loadtool"
)

// Percentile returns the p-th percentile (0 ≤ p ≤ 100) of xs by the
// nearest-rank method on a sorted copy: the smallest value such that at
// least p % of the samples are ≤ it. NaN for no samples.
// It is the load tools' (rr's) own.
func Percentile(xs []float64, p float64) float64 { return loadtool.Percentile(xs, p) }

// DurationsMicros converts durations to microseconds.
func DurationsMicros(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d.Nanoseconds()) / 1e3
	}
	return out
}

// Median is the median of xs (the mean of the two middle values for an
// even count). NaN for no samples.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Summary is the median and spread (min–max) of one metric over rounds.
type Summary struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	N      int       `json:"n"`
	Values []float64 `json:"values"`
}

// Summarize summarizes xs; NaN values (a failed measurement) are left out
// and the zero Summary (N = 0) means no valid value.
func Summarize(xs []float64) Summary {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Summary{Values: []float64{}}
	}
	return Summary{Median: Median(v), Min: slices.Min(v), Max: slices.Max(v), N: len(v), Values: v}
}

// Valid reports whether s has at least one value.
func (s Summary) Valid() bool { return s.N > 0 }

// Ratio is a.Median / b.Median, or NaN when either is missing or b is 0.
func Ratio(a, b Summary) float64 {
	if !a.Valid() || !b.Valid() || b.Median == 0 {
		return math.NaN()
	}
	return a.Median / b.Median
}
