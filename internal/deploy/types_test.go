package deploy

import (
	"errors"
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

func TestErrNotSupported(t *testing.T) {
	if !errors.Is(ErrNotSupported, errors.ErrUnsupported) {
		t.Error("ErrNotSupported is not an errors.ErrUnsupported")
	}
}
