package loadtool

import (
	"math"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestAskResultHelpers(t *testing.T) {
	r := &AskResult{Proto: "udp", Sent: 6, Answered: 5, Answers: []Answer{
		{Flow: 0, Seq: 0, OK: true, Tag: "web/0@b", Peer: "10.30.0.7:4000", From: "10.30.0.2:7000"},
		{Flow: 0, Seq: 1, OK: true, Tag: "web/0@b", Peer: "10.30.0.7:4000", From: "10.30.0.2:7000"},
		{Flow: 1, Seq: 0, OK: true, Tag: "web/1@c", Peer: "10.30.0.7:4001", From: "10.30.0.2:7000"},
		{Flow: 1, Seq: 1, OK: true, Tag: "web/0@b", Peer: "10.30.0.7:4001", From: "10.30.0.2:7000"},
		{Flow: 2, Seq: 0, OK: true, Tag: "web/1@c", Peer: "10.30.0.7:4002", From: "10.30.0.2:7000"},
		{Flow: 2, Seq: 1, Err: "i/o timeout"},
	}}
	if got, want := r.ByTag(), map[string]int{"web/0@b": 3, "web/1@c": 2}; !reflect.DeepEqual(got, want) {
		t.Errorf("ByTag %v, want %v", got, want)
	}
	if got, want := r.FlowsByTag(), map[string]int{"web/0@b": 2, "web/1@c": 2}; !reflect.DeepEqual(got, want) {
		t.Errorf("FlowsByTag %v, want %v", got, want)
	}
	if got := r.Sticky(); !reflect.DeepEqual(got, []int{1}) {
		t.Errorf("Sticky %v, want [1]", got)
	}
	if got := r.Peers(); !reflect.DeepEqual(got, []netip.Addr{netip.MustParseAddr("10.30.0.7")}) {
		t.Errorf("Peers %v", got)
	}
	if got := r.Froms(); !reflect.DeepEqual(got, []netip.Addr{netip.MustParseAddr("10.30.0.2")}) {
		t.Errorf("Froms %v", got)
	}
	if got := r.Failures(); !strings.Contains(got, "flow 2 seq 1: i/o timeout") || r.FirstError() != "i/o timeout" {
		t.Errorf("Failures %q, FirstError %q", got, r.FirstError())
	}
}

func TestPercentile(t *testing.T) {
	xs := make([]float64, 1000)
	for i := range xs {
		xs[i] = float64(1000 - i) // 1..1000, reversed: Percentile must sort
	}
	for _, c := range []struct{ p, want float64 }{
		{0, 1}, {50, 500}, {99, 990}, {99.9, 999}, {100, 1000}, {0.05, 1}, {0.1, 1}, {0.2, 2},
	} {
		if got := Percentile(xs, c.p); got != c.want {
			t.Errorf("Percentile(1..1000, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile([]float64{7}, 99.9); got != 7 {
		t.Errorf("one sample: %v", got)
	}
	if got := Percentile([]float64{1, 2}, 50); got != 1 {
		t.Errorf("nearest rank of two at p50: %v, want 1", got)
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("no samples: want NaN")
	}
	if xs[0] != 1000 {
		t.Error("Percentile sorted its input in place")
	}
}
