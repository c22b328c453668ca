package ipam

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oakwire/oakwire/policy"
)

// The kinds of the built-in policies' service IPs.
const (
	kindClosest = Kind(policy.Closest)
	kindRR      = Kind(policy.RR)
)

// smallCfg makes pools small enough that exhaustion and reuse happen within
// a few dozen operations: 6 IPv4 addresses, 4 subnets, and (with
// smallV6Cap) 5 IPv6 addresses per kind.
func smallCfg(q time.Duration) Config {
	return Config{
		WorkerV4First: netip.MustParsePrefix("10.18.0.0/26"),
		WorkerV6First: netip.MustParsePrefix("fc00::/120"),
		WorkerCount:   4,
		ServiceV4:     netip.MustParsePrefix("10.30.0.0/29"),
		ServiceV6Base: netip.MustParsePrefix("fdff::/16"),
		Quarantine:    q,
	}
}

const smallV6Cap = 6

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// errClass names the sentinel an error wraps, for comparing
// implementations whose messages differ.
func errClass(err error) string {
	for _, s := range []struct {
		err  error
		name string
	}{
		{ErrExhausted, "exhausted"}, {ErrConflict, "conflict"}, {ErrOutOfPool, "outofpool"},
		{ErrNotFound, "notfound"}, {ErrBadRequest, "badrequest"}, {ErrUnavailable, "unavailable"},
	} {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	if err != nil {
		return "other: " + err.Error()
	}
	return "ok"
}

// source yields the choices that drive an operation sequence.
type source interface {
	Intn(n int) int
	Done() bool
}

type randSource struct {
	r     *rand.Rand
	steps int
}

func (s *randSource) Intn(n int) int { return s.r.IntN(n) }
func (s *randSource) Done() bool {
	s.steps--
	return s.steps < 0
}

// byteSource decodes fuzz input; every choice takes one byte.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) Intn(n int) int {
	if s.i >= len(s.b) {
		return 0
	}
	v := int(s.b[s.i])
	s.i++
	return v % n
}

func (s *byteSource) Done() bool { return s.i >= len(s.b) }

// op is one generated operation: a description and a function that runs it
// on an allocator and renders the result.
type op struct {
	desc    string
	run     func(Allocator) string
	advance time.Duration // for clock steps
}

func kindBaseOf(k Kind) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fdff:%x::", int(k)*0x1000))
}

// genOp draws one operation for smallCfg pools.
func genOp(s source, quarantine time.Duration, clockSteps bool) op {
	ctx := context.Background()
	owner := func() string { return fmt.Sprintf("o%d", s.Intn(10)) }
	node := func() string { return fmt.Sprintf("n%d", s.Intn(6)) }
	v4 := func() netip.Addr { return step(netip.MustParseAddr("10.30.0.0"), uint64(s.Intn(9))) }
	v6 := func(k Kind) netip.Addr { return step(kindBaseOf(k), uint64(s.Intn(smallV6Cap+1))) }
	kind := func() Kind {
		if s.Intn(80) == 0 {
			return MaxKinds
		}
		return Kind(s.Intn(3))
	}
	switch c := s.Intn(20); {
	case c < 7:
		reqs := make([]Request, 1+s.Intn(3))
		for n := range reqs {
			q := Request{Owner: owner(), Kind: kind()}
			switch s.Intn(30) {
			case 0, 1, 2:
				q.Custom4 = v4()
			case 3:
				q.Custom4 = v6(0)
			}
			switch s.Intn(30) {
			case 0, 1, 2:
				q.Custom6 = v6(q.Kind % MaxKinds)
			case 3:
				q.Custom6 = v6(Kind(s.Intn(3)))
			case 4:
				q.Custom6 = v4()
			}
			reqs[n] = q
		}
		return op{desc: fmt.Sprintf("Alloc %+v", reqs), run: func(a Allocator) string {
			p, err := a.Alloc(ctx, reqs)
			return fmt.Sprint(p, " ", errClass(err))
		}}
	case c < 11:
		owners := make([]string, 1+s.Intn(3))
		for n := range owners {
			owners[n] = owner()
		}
		return op{desc: fmt.Sprintf("Release %v", owners), run: func(a Allocator) string {
			return errClass(a.Release(ctx, owners))
		}}
	case c < 13:
		n := node()
		return op{desc: "AllocSubnet " + n, run: func(a Allocator) string {
			p, err := a.AllocSubnet(ctx, n)
			return fmt.Sprint(p, " ", errClass(err))
		}}
	case c < 15:
		n := node()
		return op{desc: "ReleaseSubnet " + n, run: func(a Allocator) string {
			return errClass(a.ReleaseSubnet(ctx, n))
		}}
	case c < 16:
		n := node()
		return op{desc: "LookupSubnet " + n, run: func(a Allocator) string {
			p, err := a.LookupSubnet(ctx, n)
			return fmt.Sprint(p, " ", errClass(err))
		}}
	case c < 17:
		var addr netip.Addr
		if s.Intn(2) == 0 {
			addr = v4()
		} else {
			addr = v6(Kind(s.Intn(3)))
		}
		return op{desc: fmt.Sprint("Owner ", addr), run: func(a Allocator) string {
			o, err := a.Owner(ctx, addr)
			return o + " " + errClass(err)
		}}
	case c < 19 || !clockSteps:
		k, fam := kind(), 4+2*s.Intn(2)
		if s.Intn(30) == 0 {
			fam = 5
		}
		return op{desc: fmt.Sprintf("Peek %d v%d", k, fam), run: func(a Allocator) string {
			p, err := a.Peek(ctx, k, fam)
			return fmt.Sprint(p, " ", errClass(err))
		}}
	default:
		d := time.Duration(s.Intn(4)) * quarantine / 2
		return op{desc: fmt.Sprint("advance ", d), advance: d}
	}
}

// runModel drives the reference and every allocator with the same
// operations and fails at the first difference.
// Clock steps are drawn only when advance is set (the Redis server's clock
// cannot be moved).
func runModel(t testing.TB, s source, q time.Duration, clock *fakeClock, advance bool, impls map[string]Allocator) {
	t.Helper()
	ref := newRef(smallCfg(q), smallV6Cap, clock.Now)
	var trail []string
	for stepN := 0; !s.Done(); stepN++ {
		o := genOp(s, q, advance)
		trail = append(trail, o.desc)
		if len(trail) > 12 {
			trail = trail[1:]
		}
		if o.run == nil {
			clock.Advance(o.advance)
			continue
		}
		want := o.run(ref)
		for name, a := range impls {
			if got := o.run(a); got != want {
				t.Fatalf("step %d, %s: %s\n got %s\nwant %s\nlast ops:\n  %s",
					stepN, name, o.desc, got, want, strings.Join(trail, "\n  "))
			}
		}
	}
}
