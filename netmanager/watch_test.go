package netmanager

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
)

// runWatch runs the view's watch loop over src's script until the script
// is used up, then stops it. It returns the backoffs the loop waited.
func runWatch(t *testing.T, v *ServiceView, src *fakeSource) []time.Duration {
	t.Helper()
	var mu sync.Mutex
	var waits []time.Duration
	v.opt.after = func(d time.Duration) <-chan time.Time {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		c := make(chan time.Time, 1)
		c <- time.Time{}
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.RunWatch(ctx, src); close(done) }()
	select {
	case <-src.idle:
	case <-time.After(5 * time.Second):
		t.Fatal("watch loop did not use up its script")
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	return waits
}

func svcChange(ver uint64, e api.ServiceEntry) api.Change {
	return api.Change{Version: ver, Type: api.ChangeService, JobName: e.JobName, Service: &e}
}

func removed(ver uint64, job string) api.Change {
	return api.Change{Version: ver, Type: api.ChangeRemoved, JobName: job}
}

func TestWatchAppliesChangesInOrder(t *testing.T) {
	src := newFakeSource()
	a, b, c := "a.a.a.a", "b.b.b.b", "c.c.c.c"
	src.script = []watchStep{
		{resp: api.WatchResponse{Epoch: "e1", Version: 10, Resync: true,
			Services: []api.ServiceEntry{entry(a, 1, 0), entry(b, 2, 0)},
			Peers:    []api.Peer{{IP: netip.MustParseAddr("198.18.0.2"), Port: 50103}}}},
		{resp: api.WatchResponse{Epoch: "e1", Version: 10}}, // long poll timed out
		{resp: api.WatchResponse{Epoch: "e1", Version: 15, Changes: []api.Change{
			svcChange(11, entry(a, 1, 0, 1)),
			svcChange(12, entry(a, 1, 1, 2, 3)), // the later entry wins
			removed(13, b),
			svcChange(14, entry(c, 3, 0)),
			{Version: 15, Type: api.ChangePeers},
		}, Peers: []api.Peer{{IP: netip.MustParseAddr("198.18.0.3"), Port: 50103}, {IP: netip.MustParseAddr("198.18.0.4"), Port: 50104}}}},
		// A resent change (at or before our position) is skipped: a stale
		// entry of c must not come back.
		{resp: api.WatchResponse{Epoch: "e1", Version: 17, Changes: []api.Change{
			svcChange(14, entry(c, 3, 7)),
			removed(15, a), // not applied: 15 is ours already
			svcChange(16, entry(b, 2, 5)),
			{Version: 17, Type: api.ChangePeers}, // the peer set is now empty
		}}},
	}
	sink := &fakeSink{}
	v := NewServiceView(sink, ServiceOptions{Logger: quietLog})
	runWatch(t, v, src)

	wantCalls := []watchCall{{"", math.MaxUint64}, {"e1", 10}, {"e1", 10}, {"e1", 15}, {"e1", 17}}
	if !slices.Equal(src.calls, wantCalls) {
		t.Fatalf("watch calls %v, want %v", src.calls, wantCalls)
	}
	if got := sink.jobs(); !slices.Equal(got, []string{a, b, c}) {
		t.Fatalf("jobs %v", got)
	}
	if got := sink.instances(a); !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Fatalf("a's instances %v", got)
	}
	if got := sink.instances(b); !slices.Equal(got, []uint32{5}) {
		t.Fatalf("b's instances %v", got)
	}
	if got := sink.instances(c); !slices.Equal(got, []uint32{0}) {
		t.Fatalf("c's instances %v: a resent change was applied again", got)
	}
	if got := sink.peerSet(); len(got) != 0 {
		t.Fatalf("peers %v, want none", got)
	}
	s := v.Stats()
	if s.Resyncs != 1 || s.WatchChanges != 7 || s.Pushes != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestWatchResyncAndEpochChange(t *testing.T) {
	src := newFakeSource()
	a, b := "a.a.a.a", "b.b.b.b"
	src.script = []watchStep{
		{resp: api.WatchResponse{Epoch: "e1", Version: 3, Resync: true,
			Services: []api.ServiceEntry{entry(a, 1, 0), entry(b, 2, 0)}}},
		// The cluster lost its state: a new epoch. Its changes mean nothing
		// to us; the loop asks again without a position.
		{resp: api.WatchResponse{Epoch: "e2", Version: 1, Changes: []api.Change{removed(1, a)}}},
		{resp: api.WatchResponse{Epoch: "e2", Version: 1, Resync: true,
			Services: []api.ServiceEntry{entry(b, 2, 4)},
			Peers:    []api.Peer{{IP: netip.MustParseAddr("198.18.0.5"), Port: 50103}}}},
		// A gap in versions: resync again.
		{resp: api.WatchResponse{Epoch: "e2", Version: 5, Changes: []api.Change{removed(5, b)}}},
		{resp: api.WatchResponse{Epoch: "e2", Version: 5, Resync: true,
			Services: []api.ServiceEntry{entry(a, 1, 9)}}},
	}
	sink := &fakeSink{}
	v := NewServiceView(sink, ServiceOptions{Logger: quietLog})
	runWatch(t, v, src)
	wantCalls := []watchCall{{"", math.MaxUint64}, {"e1", 3}, {"", math.MaxUint64}, {"e2", 1}, {"", math.MaxUint64}, {"e2", 5}}
	if !slices.Equal(src.calls, wantCalls) {
		t.Fatalf("watch calls %v, want %v", src.calls, wantCalls)
	}
	if got := sink.jobs(); !slices.Equal(got, []string{a}) {
		t.Fatalf("jobs %v: a resync must replace everything", got)
	}
	if got := sink.instances(a); !slices.Equal(got, []uint32{9}) {
		t.Fatalf("a's instances %v", got)
	}
	if got := sink.peerSet(); len(got) != 0 {
		t.Fatalf("peers %v, want none", got)
	}
	if s := v.Stats(); s.Resyncs != 3 || s.WatchChanges != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestWatchBacksOffOnErrors(t *testing.T) {
	src := newFakeSource()
	down := watchStep{err: fmt.Errorf("GET /api/node/watch: %w", api.ErrUnavailable)}
	src.script = []watchStep{
		down, down, down, down, down, down, down, down,
		{resp: api.WatchResponse{Epoch: "e1", Version: 2, Resync: true,
			Services: []api.ServiceEntry{entry("a.a.a.a", 1, 0)}}},
		down, // back to 100 ms after a success
		{resp: api.WatchResponse{Epoch: "e1", Version: 3, Changes: []api.Change{removed(3, "a.a.a.a")}}},
	}
	sink := &fakeSink{}
	v := NewServiceView(sink, ServiceOptions{Logger: quietLog})
	waits := runWatch(t, v, src)
	ms := time.Millisecond
	want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 5000 * ms, 5000 * ms, 100 * ms}
	if !slices.Equal(waits, want) {
		t.Fatalf("backoffs %v, want %v", waits, want)
	}
	if s := v.Stats(); s.WatchErrors != 9 || s.Resyncs != 1 || s.WatchChanges != 1 || s.Services != 0 {
		t.Fatalf("stats %+v", s)
	}
	// The position survives a transient error.
	if last := src.calls[len(src.calls)-2]; last != (watchCall{"e1", 2}) {
		t.Fatalf("call after the error %v", last)
	}
}

func TestWatchStopsOnCancel(t *testing.T) {
	src := newFakeSource()
	v := NewServiceView(&fakeSink{}, ServiceOptions{Logger: quietLog})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.RunWatch(ctx, src); close(done) }()
	<-src.idle
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watch loop did not stop")
	}
}

func TestInterestExpiry(t *testing.T) {
	clk := newFakeClock()
	src := newFakeSource()
	sink := &fakeSink{}
	v := NewServiceView(sink, ServiceOptions{Now: clk.Now, IdleTimeout: 10 * time.Minute, Logger: quietLog})
	a, b, c, d := "a.a.a.a", "b.b.b.b", "c.c.c.c", "d.d.d.d"
	for i, j := range []string{a, b, c, d} {
		if err := v.mergeResolved(entry(j, i+1, 0), v.watchSeq()); err != nil {
			t.Fatal(err)
		}
	}
	v.SetLocal(b, true)
	v.SetLocalJobs([]string{b, d})
	ctx := context.Background()

	clk.Add(6 * time.Minute)
	v.TouchAddr(entry(c, 3, 0).InstanceList[0].InstanceIPv6)
	if n := v.ExpireIdle(ctx, src); n != 0 {
		t.Fatalf("%d expired after 6 min", n)
	}
	clk.Add(4 * time.Minute) // a idle for 10 min, c for 4 min
	if n := v.ExpireIdle(ctx, src); n != 1 {
		t.Fatalf("%d expired, want 1", n)
	}
	if got := sink.jobs(); !slices.Equal(got, []string{b, c, d}) {
		t.Fatalf("jobs %v", got)
	}
	if !slices.Equal(src.drops, []string{a}) {
		t.Fatalf("drops %v", src.drops)
	}

	// d loses its local instance: its idle clock starts now. The cluster
	// is down for the next drop, which is retried.
	v.SetLocalJobs([]string{b})
	src.dropErrs = 1
	clk.Add(6 * time.Minute)
	if n := v.ExpireIdle(ctx, src); n != 1 { // c
		t.Fatalf("%d expired, want 1 (c)", n)
	}
	if s := v.Stats(); s.DropErrors != 1 || len(src.drops) != 1 {
		t.Fatalf("stats %+v drops %v", s, src.drops)
	}
	clk.Add(4 * time.Minute)
	if n := v.ExpireIdle(ctx, src); n != 1 { // d; c's drop retried
		t.Fatalf("%d expired, want 1 (d)", n)
	}
	slices.Sort(src.drops)
	if !slices.Equal(src.drops, []string{a, c, d}) {
		t.Fatalf("drops %v", src.drops)
	}
	// b has a local instance: never expires.
	clk.Add(24 * time.Hour)
	if n := v.ExpireIdle(ctx, src); n != 0 {
		t.Fatalf("%d expired, want 0", n)
	}
	if got := sink.jobs(); !slices.Equal(got, []string{b}) {
		t.Fatalf("jobs %v", got)
	}
	if s := v.Stats(); s.Expiries != 3 || s.Local != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// A job resolved again before its drop went through keeps its interest.
func TestExpiryDoesNotDropReResolved(t *testing.T) {
	clk := newFakeClock()
	src := newFakeSource()
	src.dropErrs = 1
	v := NewServiceView(&fakeSink{}, ServiceOptions{Now: clk.Now, Logger: quietLog})
	_ = v.mergeResolved(entry("a.a.a.a", 1, 0), v.watchSeq())
	clk.Add(11 * time.Minute)
	v.ExpireIdle(context.Background(), src) // drop fails: pending
	_ = v.mergeResolved(entry("a.a.a.a", 1, 0), v.watchSeq())
	v.ExpireIdle(context.Background(), src)
	if len(src.drops) != 0 {
		t.Fatalf("dropped %v though in use again", src.drops)
	}
	if _, ok := v.Entry("a.a.a.a"); !ok {
		t.Fatal("entry gone")
	}
}

// Services.Run end to end over the fake: a miss resolves, the watch
// updates the entry, and everything stops on cancel.
func TestServicesRun(t *testing.T) {
	src := newFakeSource()
	job := "app.ns.svc.sns"
	src.resolve = func(context.Context, netip.Addr) (api.ServiceEntry, error) { return entry(job, 0, 0), nil }
	sink := &fakeSink{}
	s := NewServices(src, sink, ServiceOptions{Logger: quietLog})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	<-src.idle // the watch waits
	s.Miss(netip.MustParseAddr("10.30.0.1"))
	waitFor(t, "the resolve", func() bool { return slices.Equal(sink.jobs(), []string{job}) })
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
	if st := s.Stats(); st.Resolves != 1 || st.Services != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestWatchAppliesPeerDeltas: peers changes with a delta change only the
// peers they name (a peer set spans clusters; a change sends what
// changed); one without a delta replaces the set with the answer's.
func TestWatchAppliesPeerDeltas(t *testing.T) {
	src := newFakeSource()
	p := func(cid, node, ip string, port int) api.Peer {
		return api.Peer{ClusterID: cid, NodeID: node, IP: netip.MustParseAddr(ip), Port: port}
	}
	gone := func(cid, node string) api.Peer { return api.Peer{ClusterID: cid, NodeID: node} }
	delta := func(ver uint64, set, del []api.Peer) api.Change {
		return api.Change{Version: ver, Type: api.ChangePeers, PeerDelta: &api.PeerDelta{Set: set, Del: del}}
	}
	src.script = []watchStep{
		{resp: api.WatchResponse{Epoch: "e1", Version: 1, Resync: true,
			Peers: []api.Peer{p("c1", "n2", "198.18.0.2", 50103)}}},
		{resp: api.WatchResponse{Epoch: "e1", Version: 4, Changes: []api.Change{
			delta(2, []api.Peer{p("c2", "n3", "198.18.0.3", 50103), p("c2", "n4", "198.18.0.4", 50103)}, nil),
			delta(3, []api.Peer{p("c2", "n4", "198.18.0.44", 50200)}, nil), // n4 moved
			delta(4, nil, []api.Peer{gone("c2", "n3"), gone("c9", "n3")}),  // an unknown one: nothing
		}}},
	}
	sink := &fakeSink{}
	v := NewServiceView(sink, ServiceOptions{Logger: quietLog})
	runWatch(t, v, src)
	want := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:50103"), netip.MustParseAddrPort("198.18.0.44:50200")}
	if got := sink.peerSet(); !slices.Equal(got, want) {
		t.Fatalf("peers %v, want %v", got, want)
	}
	if s := v.Stats(); s.Peers != 2 || s.WatchChanges != 3 {
		t.Fatalf("stats %+v", s)
	}
}
