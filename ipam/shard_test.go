package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func newShards(t *testing.T, rdb redis.UniversalClient, cfg Config, n, b4 int) *Shards {
	t.Helper()
	s, err := NewShards(rdb, cfg, t.Name()+":", n, b4, 0)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestShardsOrderAndBlocks: the first service on a fresh pool gets the
// pool's first addresses whatever its shard; another shard claims the next
// block; a shard's freed address comes back only after the quarantine.
func TestShardsOrderAndBlocks(t *testing.T) {
	ctx := context.Background()
	s := newShards(t, testClient(t), Config{Quarantine: 300 * time.Millisecond}, 8, 4)
	alloc := func(k int, o string, kind Kind) Pair {
		t.Helper()
		p, err := s.AllocIn(ctx, k, "46", []Request{{Owner: o, Kind: kind}})
		if err != nil {
			t.Fatalf("alloc %s in %d: %v", o, k, err)
		}
		return p[0]
	}
	want := func(p Pair, v4, v6 string) {
		t.Helper()
		if p.V4.String() != v4 || p.V6.String() != v6 {
			t.Fatalf("got %s %s, want %s %s", p.V4, p.V6, v4, v6)
		}
	}
	want(alloc(5, "svc/S/RR", 2), "10.30.0.1", "fdff:2000::1")
	want(alloc(5, "inst/S/0", 0), "10.30.0.2", "fdff::1")
	want(alloc(5, "inst/S/0", 0), "10.30.0.2", "fdff::1") // idempotent per owner
	want(alloc(3, "inst/T/0", 0), "10.30.0.4", "fdff::100")
	want(alloc(5, "inst/S/1", 0), "10.30.0.3", "fdff::2")
	want(alloc(5, "inst/S/2", 0), "10.30.0.8", "fdff::3") // block 0 full: block 2
	if o, err := s.Owner(ctx, netip.MustParseAddr("10.30.0.4")); err != nil || o != "inst/T/0" {
		t.Fatalf("owner: %q %v", o, err)
	}
	if err := s.FreeIn(ctx, 5, false, []string{"inst/S/1"}); err != nil {
		t.Fatal(err)
	}
	want(alloc(5, "inst/S/3", 0), "10.30.0.9", "fdff::4")
	time.Sleep(400 * time.Millisecond)
	for i := 4; i < 6; i++ {
		alloc(5, fmt.Sprintf("inst/S/%d", i), 0)
	}
	want(alloc(5, "inst/S/6", 0), "10.30.0.3", "fdff::7") // v4: past quarantine, before a new block
	if p, err := s.Peek(ctx, 0, 4); err != nil || p.String() != "10.30.0.5" {
		t.Fatalf("peek: %v %v", p, err)
	}
}

// TestShardsUndo: an allocation undone (never visible) is free at once.
func TestShardsUndo(t *testing.T) {
	ctx := context.Background()
	s := newShards(t, testClient(t), Config{}, 4, 0)
	p, err := s.AllocIn(ctx, 1, "46", []Request{{Owner: "a", Kind: 1}, {Owner: "b", Kind: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.FreeIn(ctx, 1, true, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	q, err := s.AllocIn(ctx, 1, "46", []Request{{Owner: "c", Kind: 1}})
	if err != nil || q[0] != p[0] {
		t.Fatalf("after undo: %v %v, want %v", q, err, p[0])
	}
}

// TestShardsCustom: a custom address in a block nobody holds claims it for
// the asking shard; in another shard's block it is placed there.
func TestShardsCustom(t *testing.T) {
	ctx := context.Background()
	s := newShards(t, testClient(t), Config{}, 4, 0)
	q := Request{Owner: "svc/A/RR", Kind: 2, Custom4: netip.MustParseAddr("10.30.5.5"), Custom6: netip.MustParseAddr("fdff:2000::55")}
	w, err := s.Place(ctx, 2, q)
	if err != nil || w != (Where{2, 2}) {
		t.Fatalf("place: %v %v", w, err)
	}
	if p, err := s.AllocIn(ctx, 2, "46", []Request{q}); err != nil || p[0].V4 != q.Custom4 || p[0].V6 != q.Custom6 {
		t.Fatalf("alloc: %v %v", p, err)
	}
	r := Request{Owner: "svc/B/RR", Kind: 2, Custom4: netip.MustParseAddr("10.30.5.6")}
	if w, err = s.Place(ctx, 0, r); err != nil || w != (Where{2, 0}) {
		t.Fatalf("place in another shard's block: %v %v", w, err)
	}
	if _, err := s.AllocIn(ctx, 2, "4", []Request{r}); err != nil {
		t.Fatal(err)
	}
	r.Owner, r.Custom4 = "svc/C/RR", netip.MustParseAddr("10.30.5.5")
	if _, err := s.AllocIn(ctx, 2, "4", []Request{r}); !errors.Is(err, ErrConflict) {
		t.Fatalf("taken custom: %v", err)
	}
}

// TestShardsConcurrentUnique: many shards and two clients allocate at once
// from small blocks: no address twice, every block in one shard.
func TestShardsConcurrentUnique(t *testing.T) {
	ctx := context.Background()
	rdb := testClient(t)
	s1 := newShards(t, rdb, Config{}, 16, 4)
	s2 := newShards(t, rdb, Config{}, 16, 4)
	var mu sync.Mutex
	seen := map[netip.Addr]string{}
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := s1
			if g%2 == 1 {
				s = s2
			}
			for i := range 40 {
				o := fmt.Sprintf("o%d/%d", g, i)
				p, err := s.AllocIn(ctx, g%16, "46", []Request{{Owner: o}})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, a := range []netip.Addr{p[0].V4, p[0].V6} {
					if prev, ok := seen[a]; ok {
						t.Errorf("%s to %s and %s", a, prev, o)
					}
					seen[a] = o
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 2*32*40 {
		t.Errorf("%d addresses", len(seen))
	}
}
