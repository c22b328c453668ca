package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/oakwire/oakwire/internal/redistest"
)

// The client library logs every failed dial; TestRedisDown makes many.
func init() { redis.SetLogger(quietLogger{}) }

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// quickClient gives up fast, so tests with a stopped server stay short.
func quickClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:         addr,
		DialTimeout:  200 * time.Millisecond,
		ReadTimeout:  200 * time.Millisecond,
		WriteTimeout: 200 * time.Millisecond,
		MaxRetries:   -1,
		PoolSize:     32,
		// One dial, no retry: a killed server fails a call at once.
		DialerRetries:      1,
		DialerRetryTimeout: 10 * time.Millisecond,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// allocators returns a fresh in-memory and a fresh Redis allocator (on a
// private server) for cfg.
func allocators(t *testing.T, cfg Config, now func() time.Time) map[string]Allocator {
	t.Helper()
	m, err := NewMemory(cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRedis(testClient(t), cfg, t.Name()+":")
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Allocator{"memory": m, "redis": r}
}

// testClient starts a private redis-server for the test.
func testClient(t testing.TB) *redis.Client {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 32})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFirstAllocations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, a := range allocators(t, Config{}, nil) {
		t.Run(name, func(t *testing.T) {
			if p, err := a.Peek(ctx, kindRR, 4); err != nil || p.String() != "10.30.0.1" {
				t.Errorf("Peek v4 = %v, %v", p, err)
			}
			if p, err := a.Peek(ctx, kindRR, 6); err != nil || p.String() != "fdff:2000::1" {
				t.Errorf("Peek RR v6 = %v, %v", p, err)
			}
			for _, c := range []struct {
				owner  string
				kind   Kind
				v4, v6 string
			}{
				{"svc/S/RR", kindRR, "10.30.0.1", "fdff:2000::1"},
				{"inst/S/1", KindInstance, "10.30.0.2", "fdff::1"},
				{"inst/S/2", KindInstance, "10.30.0.3", "fdff::2"},
				{"svc/S/Closest", kindClosest, "10.30.0.4", "fdff:1000::1"},
			} {
				p, err := a.Alloc(ctx, []Request{{Owner: c.owner, Kind: c.kind}})
				if err != nil || p[0].V4.String() != c.v4 || p[0].V6.String() != c.v6 {
					t.Errorf("Alloc %s = %v, %v; want %s %s", c.owner, p, err, c.v4, c.v6)
				}
			}
			// Idempotent per owner.
			p, err := a.Alloc(ctx, []Request{{Owner: "inst/S/1"}})
			if err != nil || p[0].V4.String() != "10.30.0.2" {
				t.Errorf("re-Alloc inst/S/1 = %v, %v", p, err)
			}
			for _, addr := range []string{"10.30.0.1", "fdff:2000::1"} {
				if o, err := a.Owner(ctx, netip.MustParseAddr(addr)); err != nil || o != "svc/S/RR" {
					t.Errorf("Owner %s = %q, %v", addr, o, err)
				}
			}
			if _, err := a.Owner(ctx, netip.MustParseAddr("10.30.0.9")); !errors.Is(err, ErrNotFound) {
				t.Errorf("Owner free address: %v", err)
			}

			s, err := a.AllocSubnet(ctx, "node-a")
			if err != nil || s.V4.String() != "10.18.0.0/26" || s.V6.String() != "fc00::/120" {
				t.Fatalf("first subnet = %v, %v", s, err)
			}
			s2, err := a.AllocSubnet(ctx, "node-b")
			if err != nil || s2.V4.String() != "10.18.0.64/26" || s2.V6.String() != "fc00::100/120" {
				t.Fatalf("second subnet = %v, %v", s2, err)
			}
			if again, err := a.AllocSubnet(ctx, "node-a"); err != nil || again != s {
				t.Errorf("re-register = %v, %v; want %v", again, err, s)
			}
			if err := a.ReleaseSubnet(ctx, "node-a"); err != nil {
				t.Fatal(err)
			}
			if _, err := a.LookupSubnet(ctx, "node-a"); !errors.Is(err, ErrNotFound) {
				t.Errorf("lookup released: %v", err)
			}
			if other, err := a.AllocSubnet(ctx, "node-c"); err != nil || other.V4.String() != "10.18.0.128/26" {
				t.Errorf("other node during quarantine = %v, %v", other, err)
			}
			if again, err := a.AllocSubnet(ctx, "node-a"); err != nil || again != s {
				t.Errorf("re-register in quarantine = %v, %v; want %v", again, err, s)
			}
			if got, err := a.LookupSubnet(ctx, "node-a"); err != nil || got != s {
				t.Errorf("lookup = %v, %v", got, err)
			}
			if err := a.ReleaseSubnet(ctx, "node-z"); !errors.Is(err, ErrNotFound) {
				t.Errorf("release unknown node: %v", err)
			}
		})
	}
}

func TestCustomRequests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, a := range allocators(t, Config{}, nil) {
		t.Run(name, func(t *testing.T) {
			ip := netip.MustParseAddr
			p, err := a.Alloc(ctx, []Request{{Owner: "a", Kind: kindRR, Custom4: ip("10.30.7.7"), Custom6: ip("fdff:2000::77")}})
			if err != nil || p[0].V4 != ip("10.30.7.7") || p[0].V6 != ip("fdff:2000::77") {
				t.Fatalf("custom = %v, %v", p, err)
			}
			for _, c := range []struct {
				req  Request
				want error
			}{
				{Request{Owner: "b", Custom4: ip("10.30.7.7")}, ErrConflict},
				{Request{Owner: "a", Kind: kindRR, Custom4: ip("10.30.7.8")}, ErrConflict},
				{Request{Owner: "a", Kind: kindClosest}, ErrConflict},
				{Request{Owner: "b", Custom4: ip("10.30.0.0")}, ErrOutOfPool},
				{Request{Owner: "b", Custom4: ip("10.30.255.255")}, ErrOutOfPool},
				{Request{Owner: "b", Custom4: ip("10.31.0.1")}, ErrOutOfPool},
				{Request{Owner: "b", Custom6: ip("fdff:1000::5")}, ErrOutOfPool}, // Closest range, kind 0
				{Request{Owner: "b", Custom6: ip("fdff::")}, ErrOutOfPool},
				{Request{Owner: "b", Custom6: ip("fdff:0:0:1::1")}, ErrOutOfPool}, // beyond V6IndexCap
				{Request{Owner: "b", Custom4: ip("fdff::5")}, ErrBadRequest},
				{Request{Owner: "b", Custom6: ip("10.30.0.5")}, ErrBadRequest},
				{Request{Owner: ""}, ErrBadRequest},
				{Request{Owner: "b", Kind: MaxKinds}, ErrBadRequest},
			} {
				if _, err := a.Alloc(ctx, []Request{c.req}); !errors.Is(err, c.want) {
					t.Errorf("Alloc %+v: %v, want %v", c.req, err, c.want)
				}
			}
			// The never-used addresses skip the custom one.
			if _, err := a.Alloc(ctx, []Request{{Owner: "c", Custom4: ip("10.30.0.2")}}); err != nil {
				t.Fatal(err)
			}
			p, err = a.Alloc(ctx, []Request{{Owner: "d"}, {Owner: "e"}})
			if err != nil || p[0].V4 != ip("10.30.0.1") || p[1].V4 != ip("10.30.0.3") {
				t.Fatalf("after custom = %v, %v", p, err)
			}
			// A failing batch changes nothing.
			if _, err := a.Alloc(ctx, []Request{{Owner: "f"}, {Owner: "g", Custom4: ip("10.30.7.7")}}); !errors.Is(err, ErrConflict) {
				t.Fatalf("batch: %v", err)
			}
			if _, err := a.Owner(ctx, ip("10.30.0.4")); !errors.Is(err, ErrNotFound) {
				t.Fatalf("failed batch left 10.30.0.4 allocated: %v", err)
			}
			if got, err := a.Peek(ctx, 0, 4); err != nil || got != ip("10.30.0.4") {
				t.Fatalf("Peek after failed batch = %v, %v", got, err)
			}
		})
	}
}

func TestExhaustionAndQuarantine(t *testing.T) {
	t.Parallel()
	const q = 300 * time.Millisecond
	clock := newFakeClock()
	ctx := context.Background()
	impls := allocators(t, smallCfg(q), clock.Now)
	for name, a := range impls {
		wait := func() { time.Sleep(q + 50*time.Millisecond) }
		if name == "memory" {
			wait = func() { clock.Advance(q) }
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for i := range 6 {
				if _, err := a.Alloc(ctx, []Request{{Owner: fmt.Sprint("o", i)}}); err != nil {
					t.Fatal(err)
				}
			}
			_, err := a.Alloc(ctx, []Request{{Owner: "x/RR", Kind: kindRR}})
			if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "x/RR v4") {
				t.Fatalf("7th alloc: %v", err)
			}
			if _, err := a.Peek(ctx, 0, 4); !errors.Is(err, ErrExhausted) {
				t.Fatalf("Peek: %v", err)
			}
			for i := range 4 {
				if _, err := a.AllocSubnet(ctx, fmt.Sprint("n", i)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := a.AllocSubnet(ctx, "n4"); !errors.Is(err, ErrExhausted) {
				t.Fatalf("5th subnet: %v", err)
			}
			// Released, but quarantined for others.
			if err := a.Release(ctx, []string{"o2", "nobody"}); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Alloc(ctx, []Request{{Owner: "x"}}); !errors.Is(err, ErrExhausted) {
				t.Fatalf("alloc during quarantine: %v", err)
			}
			if _, err := a.Alloc(ctx, []Request{{Owner: "x", Custom4: netip.MustParseAddr("10.30.0.3")}}); !errors.Is(err, ErrConflict) {
				t.Fatalf("custom quarantined: %v", err)
			}
			if err := a.ReleaseSubnet(ctx, "n1"); err != nil {
				t.Fatal(err)
			}
			if _, err := a.AllocSubnet(ctx, "n9"); !errors.Is(err, ErrExhausted) {
				t.Fatalf("subnet during quarantine: %v", err)
			}
			wait()
			p, err := a.Alloc(ctx, []Request{{Owner: "x"}})
			if err != nil || p[0].V4.String() != "10.30.0.3" {
				t.Fatalf("after quarantine = %v, %v", p, err)
			}
			s, err := a.AllocSubnet(ctx, "n9")
			if err != nil || s.V4.String() != "10.18.0.64/26" {
				t.Fatalf("subnet after quarantine = %v, %v", s, err)
			}
		})
	}
}

// TestConcurrentReplicas: two clients (two control-service replicas), 16
// goroutines, 5000 allocations on one server; no address twice.
func TestConcurrentReplicas(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c1 := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 16})
	c2 := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 16})
	t.Cleanup(func() { c1.Close(); c2.Close() })
	concurrentAllocs(t, []redis.UniversalClient{c1, c2})
}

func TestConcurrentCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t)
	c1 := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), PoolSize: 16})
	c2 := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), PoolSize: 16})
	t.Cleanup(func() { c1.Close(); c2.Close() })
	concurrentAllocs(t, []redis.UniversalClient{c1, c2})
}

func concurrentAllocs(t *testing.T, clients []redis.UniversalClient) {
	const workers, total = 16, 5000
	ctx := context.Background()
	var allocs []*RedisAllocator
	for _, c := range clients {
		a, err := NewRedis(c, Config{}, "conc:")
		if err != nil {
			t.Fatal(err)
		}
		allocs = append(allocs, a)
	}
	type got struct {
		owner string
		p     Pair
	}
	results := make([][]got, workers)
	subnets := make([][]SubnetPair, workers)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			a := allocs[w%len(allocs)]
			n := total / workers
			if w < total%workers {
				n++
			}
			for i := range n {
				owner := fmt.Sprintf("w%d/%d", w, i)
				p, err := a.Alloc(ctx, []Request{{Owner: owner, Kind: Kind(i % 3)}})
				if err != nil {
					errc <- err
					return
				}
				results[w] = append(results[w], got{owner, p[0]})
				if i%25 == 0 {
					s, err := a.AllocSubnet(ctx, owner)
					if err != nil {
						errc <- err
						return
					}
					subnets[w] = append(subnets[w], s)
				}
				if i%10 == 9 { // releases in the mix: quarantined, never reused here
					if err := a.Release(ctx, []string{fmt.Sprintf("w%d/%d", w, i-5)}); err != nil {
						errc <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	seen := map[netip.Addr]string{}
	n := 0
	for _, rs := range results {
		for _, r := range rs {
			n++
			for _, a := range []netip.Addr{r.p.V4, r.p.V6} {
				if o, dup := seen[a]; dup {
					t.Fatalf("%s handed to %s and %s", a, o, r.owner)
				}
				seen[a] = r.owner
			}
		}
	}
	seenSub := map[netip.Prefix]bool{}
	for _, ss := range subnets {
		for _, s := range ss {
			if seenSub[s.V4] || seenSub[s.V6] {
				t.Fatalf("subnet %v handed out twice", s)
			}
			seenSub[s.V4], seenSub[s.V6] = true, true
		}
	}
	if n != total {
		t.Fatalf("%d allocations, want %d", n, total)
	}
	checkInvariants(t, clients[0], allocs[0])
}

// checkInvariants reads every pool of r and checks what a half-written
// operation would break: the two directions of each mapping agree, a
// released index is neither held nor missing its release record, every
// owner with a kind holds exactly one IPv4 address and one IPv6 address of
// its kind, and every holder in the service pool has a kind. It returns the
// number of service-pool pairs held.
func checkInvariants(t *testing.T, c redis.UniversalClient, r *RedisAllocator) (held int) {
	t.Helper()
	ctx := context.Background()
	pools := [][2]string{{r.subnetH, r.subnetZ}, {r.v4H, r.v4Z}}
	for k := range r.v6H {
		pools = append(pools, [2]string{r.v6H[k], r.v6Z[k]})
	}
	owners, err := c.HGetAll(ctx, r.owners).Result()
	if err != nil {
		t.Fatal(err)
	}
	hashes := map[string]map[string]string{}
	for _, p := range pools {
		h, err := c.HGetAll(ctx, p[0]).Result()
		if err != nil {
			t.Fatal(err)
		}
		hashes[p[0]] = h
		z, err := c.ZRange(ctx, p[1], 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for f, v := range h {
			switch {
			case strings.HasPrefix(f, "i:"):
				if h["o:"+v] != f[2:] {
					t.Errorf("%s: %s=%s but o:%s=%q", p[0], f, v, v, h["o:"+v])
				}
				if _, ok := h["r:"+f[2:]]; ok {
					t.Errorf("%s: %s held and released", p[0], f[2:])
				}
				if p[0] == r.v4H {
					held++
				}
			case strings.HasPrefix(f, "o:"):
				if h["i:"+v] != f[2:] {
					t.Errorf("%s: %s=%s but i:%s=%q", p[0], f, v, v, h["i:"+v])
				}
				if p[0] != r.subnetH {
					if _, ok := owners[f[2:]]; !ok {
						t.Errorf("%s: %s holds %s but has no kind", p[0], f[2:], v)
					}
				}
			}
		}
		for _, m := range z {
			if _, ok := h["r:"+m]; !ok {
				t.Errorf("%s: released %s has no record", p[0], m)
			}
		}
	}
	for o, kind := range owners {
		k, err := strconv.Atoi(kind)
		if err != nil || k < 0 || k >= MaxKinds {
			t.Errorf("owner %s: kind %q", o, kind)
			continue
		}
		if _, ok := hashes[r.v4H]["o:"+o]; !ok {
			t.Errorf("owner %s of kind %d holds no IPv4 address", o, k)
		}
		for j := range r.v6H {
			_, ok := hashes[r.v6H[j]]["o:"+o]
			if ok != (j == k) {
				t.Errorf("owner %s of kind %d: holds an IPv6 address of kind %d: %v", o, k, j, ok)
			}
		}
	}
	if held != len(owners) {
		t.Errorf("%d v4 addresses held, %d owners with a kind", held, len(owners))
	}
	return held
}

// TestRedisDown takes Redis away while 16 workers allocate and release
// addresses and subnets at once: first hung (SIGSTOP, so commands already
// sent run when it resumes), then killed and restarted from a snapshot
// taken under the same load. Failures are ErrUnavailable; afterwards every
// pool is whole (checkInvariants), every pair a worker was told it got and
// did not release is still its own, and allocation goes on.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := redistest.Start(t)
	c := quickClient(t, srv.Addr)
	a, err := NewRedis(c, Config{}, "down:")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := a.Alloc(ctx, []Request{{Owner: fmt.Sprint("o", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.AllocSubnet(ctx, "n0"); err != nil {
		t.Fatal(err)
	}

	// load runs the workers until stop is closed. Each returns the pairs it
	// was answered and has not released since, and how many calls failed.
	type held struct {
		owner string
		p     Pair
	}
	load := func(round int, stop <-chan struct{}) func() ([]held, int) {
		const workers = 16
		var wg sync.WaitGroup
		var mu sync.Mutex
		var kept []held
		var failed int
		var other []error
		for w := range workers {
			wg.Go(func() {
				var mine []held
				for i := 0; ; i++ {
					select {
					case <-stop:
						mu.Lock()
						kept = append(kept, mine...)
						mu.Unlock()
						return
					default:
					}
					time.Sleep(2 * time.Millisecond) // paced: the pool outlives both rounds
					owner := fmt.Sprintf("r%d/w%d/%d", round, w, i)
					var err error
					switch {
					case i%7 == 3 && len(mine) > 0:
						// Release a batch of two: all or nothing too. A
						// failed release may still run (sent before the
						// hang): those pairs are no longer checked.
						n := min(2, len(mine))
						rel := []string{mine[0].owner, mine[n-1].owner}
						err = a.Release(ctx, rel)
						mine = mine[n:]
					case i%11 == 5:
						_, err = a.AllocSubnet(ctx, owner)
						if err == nil && i%2 == 0 {
							err = a.ReleaseSubnet(ctx, owner)
						}
					default:
						// A batch of two of different kinds: all or nothing.
						var ps []Pair
						ps, err = a.Alloc(ctx, []Request{{Owner: owner + "a", Kind: Kind(i % 3)}, {Owner: owner + "b", Kind: kindRR}})
						if err == nil {
							mine = append(mine, held{owner + "a", ps[0]}, held{owner + "b", ps[1]})
						}
					}
					if err != nil {
						mu.Lock()
						if errors.Is(err, ErrUnavailable) {
							failed++
						} else {
							other = append(other, err)
						}
						mu.Unlock()
						time.Sleep(5 * time.Millisecond)
					}
				}
			})
		}
		return func() ([]held, int) {
			wg.Wait()
			for _, err := range other {
				t.Errorf("round %d: not an outage error: %v", round, err)
			}
			return kept, failed
		}
	}
	verify := func(what string, kept []held) {
		t.Helper()
		checkInvariants(t, c, a)
		for _, h := range kept {
			for _, addr := range []netip.Addr{h.p.V4, h.p.V6} {
				if o, err := a.Owner(ctx, addr); err != nil || o != h.owner {
					t.Errorf("%s: %s was answered to %s, now owned by %q (%v)", what, addr, h.owner, o, err)
				}
			}
		}
	}

	// Hung.
	stop := make(chan struct{})
	wait := load(1, stop)
	time.Sleep(150 * time.Millisecond)
	resume := srv.Pause()
	time.Sleep(600 * time.Millisecond)
	resume()
	time.Sleep(150 * time.Millisecond)
	close(stop)
	kept, failed := wait()
	t.Logf("hung: %d pairs kept, %d calls failed", len(kept), failed)
	if failed == 0 {
		t.Error("hung: no call failed")
	}
	verify("hung", kept)

	// Killed, restarted from a snapshot taken under load: whatever the
	// snapshot holds is whole.
	stop = make(chan struct{})
	wait = load(2, stop)
	time.Sleep(150 * time.Millisecond)
	if err := c.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	srv.Stop()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	if _, failed := wait(); failed == 0 {
		t.Error("killed: no call failed")
	}
	for name, f := range map[string]func() error{
		"Alloc":   func() error { _, err := a.Alloc(ctx, []Request{{Owner: "new"}}); return err },
		"Release": func() error { return a.Release(ctx, []string{"o1"}) },
		"AllocSubnet": func() error {
			_, err := a.AllocSubnet(ctx, "n1")
			return err
		},
		"ReleaseSubnet": func() error { return a.ReleaseSubnet(ctx, "n0") },
		"LookupSubnet": func() error {
			_, err := a.LookupSubnet(ctx, "n0")
			return err
		},
		"Owner": func() error { _, err := a.Owner(ctx, netip.MustParseAddr("10.30.0.1")); return err },
		"Peek":  func() error { _, err := a.Peek(ctx, 0, 4); return err },
	} {
		if err := f(); !errors.Is(err, ErrUnavailable) || errors.Unwrap(err) == nil {
			t.Errorf("%s with Redis down: %v", name, err)
		}
	}
	srv.Restart()
	// After a run of failed dials the client's pool re-dials in the
	// background, about once a second.
	for deadline := time.Now().Add(5 * time.Second); c.Ping(ctx).Err() != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("client not back 5 s after the restart")
		}
	}
	verify("killed", kept) // round 1's pairs predate the snapshot
	if o, err := a.Owner(ctx, netip.MustParseAddr("10.30.0.1")); err != nil || o != "o0" {
		t.Errorf("Owner after restart = %q, %v", o, err)
	}
	if _, err := a.Alloc(ctx, []Request{{Owner: "new"}}); err != nil {
		t.Errorf("Alloc after restart: %v", err)
	}
	if s, err := a.AllocSubnet(ctx, "n0"); err != nil || s.V4.String() != "10.18.0.0/26" {
		t.Errorf("subnet after restart = %v, %v", s, err)
	}
	checkInvariants(t, c, a)
}

func TestStoreErrorIsNotUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := testClient(t)
	a, err := NewRedis(c, Config{}, t.Name()+":")
	if err != nil {
		t.Fatal(err)
	}
	// A foreign key of the wrong type under our prefix is a bug, not an
	// outage.
	if err := c.Set(ctx, a.v4H, "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_, err = a.Alloc(ctx, []Request{{Owner: "o"}})
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Alloc on a wrong-type key: %v", err)
	}
}

func BenchmarkRedisAlloc(b *testing.B) {
	srv := redistest.Start(b)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	b.Cleanup(func() { c.Close() })
	cfg := Config{ServiceV4: netip.MustParsePrefix("10.64.0.0/10")}
	a, err := NewRedis(c, cfg, "bench:")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var mu sync.Mutex
	next := 0
	b.SetParallelism(4)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		base := next
		next += 1 << 30
		mu.Unlock()
		for i := 0; pb.Next(); i++ {
			if _, err := a.Alloc(ctx, []Request{{Owner: fmt.Sprint("b/", base+i), Kind: Kind(i % 3)}}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "allocs/s")
	// The server's own time per script: the rest is network, client and
	// scheduling on a shared 2-vCPU machine.
	if info, err := c.Info(ctx, "commandstats").Result(); err == nil {
		for _, line := range strings.Split(info, "\n") {
			if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:"); ok {
				for _, kv := range strings.Split(strings.TrimSpace(rest), ",") {
					if v, ok := strings.CutPrefix(kv, "usec_per_call="); ok {
						var us float64
						if _, err := fmt.Sscan(v, &us); err == nil {
							b.ReportMetric(us, "server-µs/alloc")
						}
					}
				}
			}
		}
	}
}

func BenchmarkMemoryAlloc(b *testing.B) {
	a, err := NewMemory(Config{ServiceV4: netip.MustParsePrefix("10.64.0.0/10")}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		if _, err := a.Alloc(ctx, []Request{{Owner: fmt.Sprint("b/", i), Kind: Kind(i % 3)}}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "allocs/s")
}
