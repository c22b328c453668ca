package netmanager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/fastpath"
)

// Unit tests of the service view, the resolver, the watch loop and
// interest expiry, against a fake cluster and a fake data plane. No
// privileges needed.

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeSink records every spec set pushed.
type fakeSink struct {
	mu     sync.Mutex
	pushes int
	svcs   []fastpath.ServiceSpec
	insts  []fastpath.InstanceSpec
	peers  []netip.AddrPort
	err    error
}

func (s *fakeSink) SetServices(svcs []fastpath.ServiceSpec, insts []fastpath.InstanceSpec, peers []netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pushes++
	s.svcs, s.insts, s.peers = svcs, insts, peers
	return s.err
}

func (s *fakeSink) jobs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var jobs []string
	for _, sv := range s.svcs {
		jobs = append(jobs, sv.Job)
	}
	return jobs
}

func (s *fakeSink) instances(job string) []uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ns []uint32
	for _, in := range s.insts {
		if in.Job == job {
			ns = append(ns, in.Number)
		}
	}
	return ns
}

func (s *fakeSink) peerSet() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.peers)
}

// watchStep is one scripted answer of the fake's Watch.
type watchStep struct {
	resp api.WatchResponse
	err  error
}

type watchCall struct {
	epoch string
	since uint64
}

// fakeSource is a scripted cluster.
type fakeSource struct {
	mu       sync.Mutex
	resolve  func(ctx context.Context, a netip.Addr) (api.ServiceEntry, error)
	queries  map[netip.Addr]int
	script   []watchStep
	calls    []watchCall
	idle     chan struct{} // closed when Watch finds the script empty
	drops    []string
	dropErrs int // fail this many DropInterest calls first
}

func newFakeSource() *fakeSource {
	return &fakeSource{queries: map[netip.Addr]int{}, idle: make(chan struct{})}
}

func (f *fakeSource) ResolveIP(ctx context.Context, a netip.Addr) (api.ServiceEntry, error) {
	f.mu.Lock()
	f.queries[a]++
	fn := f.resolve
	f.mu.Unlock()
	if fn == nil {
		return api.ServiceEntry{}, notFound()
	}
	return fn(ctx, a)
}

func (f *fakeSource) Watch(ctx context.Context, epoch string, since uint64) (api.WatchResponse, error) {
	f.mu.Lock()
	f.calls = append(f.calls, watchCall{epoch, since})
	if len(f.script) == 0 {
		select {
		case <-f.idle:
		default:
			close(f.idle)
		}
		f.mu.Unlock()
		<-ctx.Done()
		return api.WatchResponse{}, ctx.Err()
	}
	st := f.script[0]
	f.script = f.script[1:]
	f.mu.Unlock()
	return st.resp, st.err
}

func (f *fakeSource) DropInterest(_ context.Context, job string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dropErrs > 0 {
		f.dropErrs--
		return fmt.Errorf("DELETE interest: %w", api.ErrUnavailable)
	}
	f.drops = append(f.drops, job)
	return nil
}

func (f *fakeSource) queryCount(a netip.Addr) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.queries[a]
}

func notFound() error {
	return fmt.Errorf("GET /api/node/resolve: %w", &nodeclient.APIError{Status: http.StatusNotFound, Code: "not_found", Message: "unknown"})
}

// entry makes a running two-instance service with RR and Closest IPs;
// base picks distinct addresses.
func entry(job string, base int, instances ...int) api.ServiceEntry {
	e := api.ServiceEntry{
		ID: "id-" + job, JobName: job,
		ServiceIPList: []api.ServiceIP{
			{IpType: "RR", Address: netip.MustParseAddr(fmt.Sprintf("10.30.%d.1", base)), AddressV6: netip.MustParseAddr(fmt.Sprintf("fdff:2000::%x:1", base))},
			{IpType: "Closest", Address: netip.MustParseAddr(fmt.Sprintf("10.30.%d.2", base)), AddressV6: netip.MustParseAddr(fmt.Sprintf("fdff:1000::%x:2", base))},
		},
	}
	for _, n := range instances {
		e.InstanceList = append(e.InstanceList, api.Instance{
			InstanceNumber: n,
			InstanceIP:     netip.MustParseAddr(fmt.Sprintf("10.30.%d.%d", base, 10+n)), InstanceIPv6: netip.MustParseAddr(fmt.Sprintf("fdff::%x:%x", base, 10+n)),
			ClusterID:   "c1",
			NamespaceIP: netip.MustParseAddr(fmt.Sprintf("10.18.0.%d", 2+n)), NamespaceIPv6: netip.MustParseAddr(fmt.Sprintf("fc00::%x", 2+n)),
			HostIP: netip.MustParseAddr("198.18.0.2"), HostPort: 50103,
		})
	}
	return e
}

func TestConvertGolden(t *testing.T) {
	e := api.ServiceEntry{
		ID: "s1", JobName: "app.ns.svc.sns",
		ServiceIPList: []api.ServiceIP{
			{IpType: "RR", Address: netip.MustParseAddr("10.30.0.1"), AddressV6: netip.MustParseAddr("fdff:2000::1")},
			{IpType: "closest", Address: netip.MustParseAddr("10.30.0.4"), AddressV6: netip.MustParseAddr("fdff:1000::4")}, // Oakestra spells it lower-case
			{IpType: "Geo", Address: netip.MustParseAddr("10.30.0.5"), AddressV6: netip.MustParseAddr("fdff:3000::5")},     // unknown policy: ignored
		},
		InstanceList: []api.Instance{
			{InstanceNumber: 1, InstanceIP: netip.MustParseAddr("10.30.0.3"), InstanceIPv6: netip.MustParseAddr("fdff::3"), ClusterID: "c1",
				NamespaceIP: netip.MustParseAddr("10.18.0.66"), NamespaceIPv6: netip.MustParseAddr("fc00::102"), HostIP: netip.MustParseAddr("198.18.0.2"), HostPort: 50104},
			{InstanceNumber: 0, InstanceIP: netip.MustParseAddr("10.30.0.2"), InstanceIPv6: netip.MustParseAddr("fdff::2"), ClusterID: "c1",
				NamespaceIP: netip.MustParseAddr("10.18.0.2"), NamespaceIPv6: netip.MustParseAddr("fc00::2"), HostIP: netip.MustParseAddr("198.18.0.1"), HostPort: 50103},
			// Placed but not running: no namespace IP, no host.
			{InstanceNumber: 2, InstanceIP: netip.MustParseAddr("10.30.0.6"), InstanceIPv6: netip.MustParseAddr("fdff::6"), ClusterID: "c1"},
			// Namespace IPs but no host: not running either.
			{InstanceNumber: 3, InstanceIP: netip.MustParseAddr("10.30.0.7"), InstanceIPv6: netip.MustParseAddr("fdff::7"), NamespaceIP: netip.MustParseAddr("10.18.0.3")},
		},
	}
	set, st := ConvertEntries([]api.ServiceEntry{e})
	a := netip.MustParseAddr
	want := SpecSet{
		Services: []fastpath.ServiceSpec{{Job: "app.ns.svc.sns", IPs: []fastpath.PolicyIP{
			{Policy: "RR", V4: a("10.30.0.1"), V6: a("fdff:2000::1")},
			{Policy: "Closest", V4: a("10.30.0.4"), V6: a("fdff:1000::4")},
		}}},
		Instances: []fastpath.InstanceSpec{
			{Job: "app.ns.svc.sns", Number: 0, IP4: a("10.30.0.2"), IP6: a("fdff::2"), NS4: a("10.18.0.2"), NS6: a("fc00::2"),
				Node: netip.MustParseAddrPort("198.18.0.1:50103")},
			{Job: "app.ns.svc.sns", Number: 1, IP4: a("10.30.0.3"), IP6: a("fdff::3"), NS4: a("10.18.0.66"), NS6: a("fc00::102"),
				Node: netip.MustParseAddrPort("198.18.0.2:50104")},
		},
	}
	if !reflect.DeepEqual(set, want) {
		t.Fatalf("specs:\n got %+v\nwant %+v", set, want)
	}
	if st != (ConvertStats{IgnoredIPTypes: 1, NotRunning: 2}) {
		t.Fatalf("stats %+v", st)
	}

	// The same through the view: the sink gets exactly these specs, and
	// the fastpath accepts them.
	sink := &fakeSink{}
	v := NewServiceView(sink, ServiceOptions{Logger: quietLog})
	if err := v.Apply(e); err != nil {
		t.Fatal(err)
	}
	if err := v.SetPeers([]api.Peer{{IP: netip.MustParseAddr("198.18.0.2"), Port: 50104}, {IP: netip.MustParseAddr("198.18.0.3")}, {Port: 1}}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sink.svcs, want.Services) || !reflect.DeepEqual(sink.insts, want.Instances) {
		t.Fatalf("sink got %+v %+v", sink.svcs, sink.insts)
	}
	wantPeers := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:50104"), netip.MustParseAddrPort("198.18.0.3:50103")}
	if !reflect.DeepEqual(sink.peers, wantPeers) {
		t.Fatalf("peers %v", sink.peers)
	}
	b := fastpath.Builder{Node: fastpath.NodeSpec{Addr: netip.MustParseAddrPort("198.18.0.9:50103")},
		Services: sink.svcs, Instances: sink.insts, Peers: sink.peers}
	if _, err := b.Build(); err != nil {
		t.Fatalf("fastpath rejects the specs: %v", err)
	}
	s := v.Stats()
	if s.IgnoredIPTypes != 1 || s.BadAddresses != 1 || s.Services != 1 || s.Instances != 2 || s.Peers != 3 || s.Pushes != 2 {
		t.Fatalf("stats %+v", s)
	}
	for _, ip := range []string{"10.30.0.1", "fdff:1000::4", "10.30.0.6", "fdff::2"} {
		if job, ok := v.Lookup(a(ip)); !ok || job != e.JobName {
			t.Errorf("Lookup(%s) = %q, %v", ip, job, ok)
		}
	}
}

func TestConvertSkipsDuplicateAddresses(t *testing.T) {
	// A stale entry claiming another service's address must not make the
	// whole table invalid: the first owner in job order keeps it.
	x, y := entry("a.a.a.a", 1, 0), entry("b.b.b.b", 2, 0)
	y.ServiceIPList[0].Address = x.ServiceIPList[0].Address
	y.InstanceList[0].InstanceIP = x.InstanceList[0].InstanceIP
	set, st := ConvertEntries([]api.ServiceEntry{y, x})
	if st.BadAddresses != 2 {
		t.Fatalf("stats %+v", st)
	}
	b := fastpath.Builder{Node: fastpath.NodeSpec{Addr: netip.MustParseAddrPort("198.18.0.9:50103")},
		Services: set.Services, Instances: set.Instances}
	if _, err := b.Build(); err != nil {
		t.Fatal(err)
	}
	if set.Services[0].Job != "a.a.a.a" || set.Services[0].IPs[0].V4 != x.ServiceIPList[0].Address {
		t.Fatalf("first owner lost its address: %+v", set.Services)
	}
}

// startResolver runs a resolver until the test ends.
func startResolver(t *testing.T, src *fakeSource, o ServiceOptions) (*Resolver, *fakeSink) {
	t.Helper()
	sink := &fakeSink{}
	if o.Logger == nil {
		o.Logger = quietLog
	}
	r := NewResolver(NewServiceView(sink, o), src)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, sink
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMissNeverBlocks(t *testing.T) {
	src := newFakeSource()
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	src.resolve = func(ctx context.Context, a netip.Addr) (api.ServiceEntry, error) {
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return api.ServiceEntry{}, notFound()
	}
	r, _ := startResolver(t, src, ServiceOptions{QueueLen: 4})
	defer close(release)
	r.Miss(netip.MustParseAddr("10.30.9.0"))
	<-entered // the resolver is stuck in the cluster call

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			r.Miss(netip.AddrFrom4([4]byte{10, 30, byte(i >> 8), byte(i)}))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Miss blocked")
	}
	s := r.view.Stats()
	if s.Misses != 1001 || s.MissesDropped != 1000-4 {
		t.Fatalf("misses %d, dropped %d; want 1001, 996", s.Misses, s.MissesDropped)
	}
	// A dropped address can be asked about again.
	r.mu.Lock()
	n := len(r.inflight)
	r.mu.Unlock()
	if n != 5 {
		t.Fatalf("%d lookups in flight, want 5", n)
	}
}

func TestNegativeCacheBoundsQueries(t *testing.T) {
	src := newFakeSource() // every address unknown
	clk := newFakeClock()
	r, _ := startResolver(t, src, ServiceOptions{Now: clk.Now, NegativeTTL: 5 * time.Second})
	ip := netip.MustParseAddr("10.30.7.7")
	for range 1000 {
		r.Miss(ip)
	}
	waitFor(t, "the query", func() bool { return r.view.Stats().ResolveNotFound == 1 })
	for range 1000 {
		r.Miss(ip)
	}
	if n := src.queryCount(ip); n != 1 {
		t.Fatalf("%d queries for 2000 misses within the TTL, want 1", n)
	}
	s := r.view.Stats()
	if s.NegativeHits+s.MissesDeduped != 1999 {
		t.Fatalf("stats %+v", s)
	}
	clk.Add(5 * time.Second) // expired: one more query
	for range 1000 {
		r.Miss(ip)
	}
	waitFor(t, "the second query", func() bool { return r.view.Stats().ResolveNotFound == 2 })
	if n := src.queryCount(ip); n != 2 {
		t.Fatalf("%d queries after the TTL, want 2", n)
	}
	// IPv4-mapped IPv6 is the same address.
	r.Miss(netip.AddrFrom16(ip.As16()))
	if n := src.queryCount(ip); n != 2 {
		t.Fatalf("mapped address queried again")
	}
}

func TestResolveMergesAndPushes(t *testing.T) {
	src := newFakeSource()
	e := entry("app.ns.svc.sns", 0, 0, 1)
	src.resolve = func(context.Context, netip.Addr) (api.ServiceEntry, error) { return e, nil }
	r, sink := startResolver(t, src, ServiceOptions{})
	svcIP := e.ServiceIPList[0].AddressV6
	r.Miss(svcIP)
	waitFor(t, "the tables", func() bool { return len(sink.instances(e.JobName)) == 2 })
	// Another address of the same service is known: no query.
	inst := e.InstanceList[1].InstanceIP
	r.Miss(inst)
	waitFor(t, "the second miss", func() bool { return r.view.Stats().ResolveKnown == 1 })
	if n := src.queryCount(inst); n != 0 {
		t.Fatalf("known address queried %d times", n)
	}
	if s := r.view.Stats(); s.Resolves != 1 || s.Services != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestResolveErrorsBackOffAndRetry(t *testing.T) {
	src := newFakeSource()
	e := entry("app.ns.svc.sns", 0, 0)
	fails := 3
	src.resolve = func(context.Context, netip.Addr) (api.ServiceEntry, error) {
		src.mu.Lock()
		defer src.mu.Unlock()
		if fails > 0 {
			fails--
			return api.ServiceEntry{}, fmt.Errorf("GET: %w", api.ErrUnavailable)
		}
		return e, nil
	}
	var mu sync.Mutex
	var waits []time.Duration
	o := ServiceOptions{after: func(d time.Duration) <-chan time.Time {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		c := make(chan time.Time, 1)
		c <- time.Time{}
		return c
	}}
	r, sink := startResolver(t, src, o)
	ip := e.ServiceIPList[0].Address
	r.Miss(ip)
	waitFor(t, "the tables", func() bool { return len(sink.jobs()) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}; !slices.Equal(waits, want) {
		t.Fatalf("backoffs %v, want %v", waits, want)
	}
	if s := r.view.Stats(); s.ResolveErrors != 3 || s.Resolves != 1 || src.queryCount(ip) != 4 {
		t.Fatalf("stats %+v, queries %d", s, src.queryCount(ip))
	}
	if nextBackoff(4*time.Second) != 5*time.Second || nextBackoff(5*time.Second) != 5*time.Second {
		t.Fatal("backoff not capped at 5 s")
	}
}

func TestResolveGivesUpAfterAttempts(t *testing.T) {
	src := newFakeSource()
	src.resolve = func(context.Context, netip.Addr) (api.ServiceEntry, error) {
		return api.ServiceEntry{}, errors.New("connection refused")
	}
	o := ServiceOptions{after: func(time.Duration) <-chan time.Time {
		c := make(chan time.Time, 1)
		c <- time.Time{}
		return c
	}}
	r, _ := startResolver(t, src, o)
	ip := netip.MustParseAddr("10.30.1.1")
	r.Miss(ip)
	waitFor(t, "the attempts", func() bool { return r.view.Stats().ResolveErrors == resolveAttempts })
	waitFor(t, "the lookup to end", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.inflight) == 0
	})
	r.Miss(ip) // within the last backoff: a negative hit, no query
	if n := src.queryCount(ip); n != resolveAttempts {
		t.Fatalf("%d queries, want %d", n, resolveAttempts)
	}
}

// A resolve answer that raced with a newer watch change of the same job
// does not overwrite it.
func TestStaleResolveLosesToWatch(t *testing.T) {
	sink := &fakeSink{}
	v := NewServiceView(sink, ServiceOptions{Logger: quietLog})
	seq := v.watchSeq()
	_ = v.ApplyWatch(api.WatchResponse{Epoch: "e", Version: 1, Changes: []api.Change{
		{Version: 1, Type: api.ChangeService, JobName: "a.a.a.a", Service: ptr(entry("a.a.a.a", 1, 0, 1))}}})
	_ = v.mergeResolved(entry("a.a.a.a", 1, 0), seq)
	if got := sink.instances("a.a.a.a"); !slices.Equal(got, []uint32{0, 1}) {
		t.Fatalf("instances %v: stale resolve won", got)
	}
	_ = v.mergeResolved(entry("a.a.a.a", 1, 2), v.watchSeq())
	if got := sink.instances("a.a.a.a"); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("instances %v: fresh resolve lost", got)
	}
}

func ptr[T any](v T) *T { return &v }
