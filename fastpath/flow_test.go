package fastpath

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

func fkey(i int) (FlowKey, FlowKey) {
	c := netip.AddrFrom4([4]byte{10, 18, byte(i >> 16), byte(i >> 8)})
	s := a4("10.30.0.1")
	sp := uint16(i)
	f := MakeFlowKey(ProtoUDP, c, sp, s, 53)
	r := MakeFlowKey(ProtoUDP, a4("10.30.0.9"), 53, c, sp)
	return f, r
}

func TestFlowRecLayout(t *testing.T) {
	if s := unsafe.Sizeof(flowRec{}); s != 128 {
		t.Fatalf("flowRec is %d bytes, want 128", s)
	}
	if o := unsafe.Offsetof(flowRec{}.fwd); o+40 > 64 {
		t.Fatalf("forward key ends at %d, beyond the first cache line", o+40)
	}
}

func TestFlowTableBasics(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 100, PerPort: 100, UDPIdle: time.Second, TCPIdle: time.Hour})
	for i := range 100 {
		f, r := fkey(i)
		if got, ok := ft.Insert(&f, &r, uint32(i), 1, 0); !ok || got != uint32(i) {
			t.Fatalf("insert %d: %d %v", i, got, ok)
		}
	}
	f, r := fkey(5)
	if got, _ := ft.Insert(&f, &r, 77, 1, 0); got != 5 {
		t.Fatalf("duplicate insert returned %d, want the existing 5", got)
	}
	for i := range 100 {
		f, r := fkey(i)
		if inst, _, ok := ft.Lookup(&f, 0); !ok || inst != uint32(i) {
			t.Fatalf("lookup %d: %d %v", i, inst, ok)
		}
		if svc, ok := ft.LookupReverse(&r, 0); !ok || svc != a4("10.30.0.1") {
			t.Fatalf("reverse %d: %v %v", i, svc, ok)
		}
	}
	// Keep flow 7 alive, let the rest expire.
	f7, _ := fkey(7)
	ft.Lookup(&f7, int64(900*time.Millisecond))
	if n := ft.Sweep(int64(1500*time.Millisecond), 0); n != 99 || ft.Len() != 1 {
		t.Fatalf("sweep removed %d, left %d", n, ft.Len())
	}
	if _, _, ok := ft.Lookup(&f7, 0); !ok {
		t.Fatal("live flow swept")
	}
	f, r = fkey(3)
	if _, _, ok := ft.Lookup(&f, 0); ok {
		t.Fatal("expired flow found")
	}
	if _, ok := ft.LookupReverse(&r, 0); ok {
		t.Fatal("expired reverse found")
	}
	// Rebind moves the reverse key.
	f, r = fkey(200)
	ft.Insert(&f, &r, 1, 1, 0)
	_, ref, _ := ft.Lookup(&f, 0)
	r2 := MakeFlowKey(ProtoUDP, a4("10.30.0.8"), 53, a4("10.18.0.2"), 1)
	ft.Rebind(ref, &r2, 2)
	if inst, _, _ := ft.Lookup(&f, 0); inst != 2 {
		t.Fatalf("rebind: inst %d", inst)
	}
	if _, ok := ft.LookupReverse(&r, 0); ok {
		t.Fatal("old reverse key still found")
	}
	if _, ok := ft.LookupReverse(&r2, 0); !ok {
		t.Fatal("new reverse key not found")
	}
}

func TestFlowKeyReverse(t *testing.T) {
	for _, c := range []struct{ src, dst netip.Addr }{
		{a4("10.18.0.2"), a4("10.30.0.4")}, {a4("fc00::2"), a4("fdff::2")},
	} {
		k := MakeFlowKey(ProtoTCP, c.src, 46820, c.dst, 7001)
		want := MakeFlowKey(ProtoTCP, c.dst, 7001, c.src, 46820)
		if got := k.reverse(); got != want {
			t.Errorf("%v: reverse %x, want %x", c, got, want)
		}
	}
}

// TestFlowReverseOwner: the most recently used flow owns a reverse key
// shared by several flows, and a direct use of the reply 5-tuple
// (ReleaseReverse) takes it from all of them until a flow is used again.
func TestFlowReverseOwner(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 16})
	cli, inst := a4("10.18.0.2"), a4("10.30.0.4")
	f1 := MakeFlowKey(ProtoTCP, cli, 46820, a4("10.30.0.2"), 7001) // RR service IP
	f2 := MakeFlowKey(ProtoTCP, cli, 46820, a4("10.30.0.1"), 7001) // Closest service IP
	r := MakeFlowKey(ProtoTCP, inst, 7001, cli, 46820)             // both picked inst
	rev := func() string {
		if svc, ok := ft.LookupReverse(&r, 0); ok {
			return svc.String()
		}
		return "untranslated"
	}
	use := func(f FlowKey) {
		t.Helper()
		_, ref, ok := ft.Lookup(&f, 0)
		if !ok {
			t.Fatal("flow not found")
		}
		ft.Claim(ref)
	}
	ft.Insert(&f1, &r, 1, 1, 0)
	if got := rev(); got != "10.30.0.2" {
		t.Fatalf("after insert 1: %s", got)
	}
	ft.Insert(&f2, &r, 1, 1, 0)
	if got := rev(); got != "10.30.0.1" {
		t.Fatalf("after insert 2: %s, want the newest flow's", got)
	}
	use(f1)
	if got := rev(); got != "10.30.0.2" {
		t.Fatalf("after using flow 1 again: %s", got)
	}
	ft.ReleaseReverse(&r)
	if got := rev(); got != "untranslated" {
		t.Fatalf("after a direct packet to the instance: %s", got)
	}
	ft.ReleaseReverse(&r) // nothing owns it: no-op
	use(f2)
	if got := rev(); got != "10.30.0.1" {
		t.Fatalf("after using flow 2 again: %s", got)
	}
	use(f2) // owner already: no change
	if got := rev(); got != "10.30.0.1" {
		t.Fatalf("after using flow 2 twice: %s", got)
	}
	// A disowned record that expires and is reused owns its new key.
	ft.ReleaseReverse(&r)
	if n := ft.Sweep(int64(time.Hour), 0); n != 2 {
		t.Fatalf("swept %d, want 2", n)
	}
	ft.Insert(&f1, &r, 1, 1, 0)
	if got := rev(); got != "10.30.0.2" {
		t.Fatalf("after reuse: %s", got)
	}
	// Rebind takes the new reverse key.
	r2 := MakeFlowKey(ProtoTCP, a4("10.30.0.3"), 7001, cli, 46820)
	ft.Insert(&f2, &r2, 0, 1, 0)
	_, ref, _ := ft.Lookup(&f1, 0)
	ft.Rebind(ref, &r2, 0)
	if svc, ok := ft.LookupReverse(&r2, 0); !ok || svc != a4("10.30.0.2") {
		t.Fatalf("after rebind: %v %v, want the rebound flow's", svc, ok)
	}
}

// TestConcurrentRace runs workers translating (egress and ingress) while
// the table is swapped and a sweeper expires flows. Run with -race.
func TestConcurrentRace(t *testing.T) {
	base := multiBuilder(4)
	tb0, err := base.Build()
	if err != nil {
		t.Fatal(err)
	}
	var h TableHolder
	h.Swap(tb0)
	ft := NewFlowTable(FlowConfig{Capacity: 512, UDPIdle: time.Millisecond})
	p := NewProcessor(&h, ft)
	var now atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // control plane: swap tables, migrating instances
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b := multiBuilder(0)
			b.Neighbors[nodeC.Addr()] = macB
			for j := range 2 + i%5 {
				node := nodeB
				if (i+j)%3 == 0 {
					node = nodeC
				}
				b.Instances = append(b.Instances, mInst(j, node, i%2))
			}
			b.Prev = h.Load()
			tb, err := b.Build()
			if err != nil {
				t.Error(err)
				return
			}
			h.Swap(tb)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	go func() { // sweeper
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			now.Add(int64(time.Millisecond))
			ft.Sweep(now.Load(), 256)
			time.Sleep(50 * time.Microsecond)
		}
	}()
	const workers, rounds = 4, 300
	var wwg sync.WaitGroup
	for w := range workers {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			ctx := NewWorkerCtx()
			frames := make([]Frame, 16)
			out := make([]Verdict, 16)
			for r := range rounds {
				ctx.Now = now.Load()
				for i := range frames {
					sp := uint16(w*1000 + (r*16+i)%700)
					frames[i] = inFrame(fromCli(udpPkt(cli4, a4("10.30.3.1"), sp, 53, ipo{})))
				}
				p.Egress(ctx, 1, frames, out)
				for i := range out {
					switch {
					case out[i].Action == ActTxUplink, out[i].Action == ActSlowPath && out[i].Reason == ReasonNoNeighbor:
					case out[i].Action == ActDrop && (out[i].Reason == ReasonFlowTableFull || out[i].Reason == ReasonNoInstance):
					default:
						t.Errorf("egress verdict %v/%v", out[i].Action, out[i].Reason)
						return
					}
				}
				for i := range frames {
					frames[i] = inFrame(fromB(udpPkt(netip.AddrFrom4([4]byte{10, 30, 4, byte(i % 4)}), cli4, 53, uint16(w*1000+i), ipo{})))
				}
				p.Ingress(ctx, frames, out)
				for i := range out {
					// The instance may be on C in this snapshot (a wrong
					// source from B), or not in it at all (unknown).
					wrong := out[i].Action == ActDrop && out[i].Reason == ReasonWrongSource
					unknown := out[i].Action == ActSlowPath && out[i].Reason == ReasonUnknownSource
					if out[i].Action != ActTxPort && !wrong && !unknown {
						t.Errorf("ingress verdict %v/%v", out[i].Action, out[i].Reason)
						return
					}
				}
			}
		}()
	}
	wwg.Wait()
	close(stop)
	wg.Wait()
}

func TestFlowKeyOf(t *testing.T) {
	for _, b := range [][]byte{udpPkt(cli4, svcR4, 1, 2, ipo{}), tcpPkt(cli6, svcR6, 3, 4), echoPkt(cli6, svcR6, false, 5)} {
		var p Parsed
		if r := p.DecodeIP(b, 0); r != ReasonNone {
			t.Fatal(r)
		}
		if flowKeyOf(b, &p) != MakeFlowKey(p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort) {
			t.Fatalf("flowKeyOf differs for %v", p.Dst)
		}
	}
}

// TestFlowLookupUnderChurn: lock-free lookups of stable flows never miss
// while a writer inserts and sweeps other flows sharing their chains.
func TestFlowLookupUnderChurn(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 256, UDPIdle: time.Nanosecond}) // 64 per port
	const stable = 64
	for i := range stable {
		f, r := fkey(i)
		ft.Insert(&f, &r, uint32(i), 1, 1<<62) // far future: never idle
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			for j := range 150 {
				f, r := fkey(1000 + (n*150+j)%5000)
				ft.Insert(&f, &r, 9, 2, 0) // another port: at its bound it evicts its own
			}
			ft.Sweep(1<<40, 0) // removes only churn flows (last use 0)
		}
	}()
	var wg sync.WaitGroup
	var misses atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range 100000 {
				f, r := fkey(n % stable)
				if inst, _, ok := ft.Lookup(&f, 1<<62); !ok || inst != uint32(n%stable) {
					misses.Add(1)
				}
				if _, ok := ft.LookupReverse(&r, 1<<62); !ok {
					misses.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-done
	if m := misses.Load(); m != 0 {
		t.Fatalf("%d false misses", m)
	}
}

// collidingKeys returns n forward keys of one client and service that all
// land in one chain under bucketOf: what a container that picks its own
// source and destination ports can do against a known bucket function.
func collidingKeys(t *testing.T, n int, bucketOf func(*FlowKey) uint32) []FlowKey {
	t.Helper()
	cli, svc := a4("10.18.0.2"), a4("10.30.0.1")
	var keys []FlowKey
	target, first := uint32(0), true
	for dp := 1; dp < 65536 && len(keys) < n; dp++ {
		for sp := 1024; sp < 65536 && len(keys) < n; sp++ {
			k := MakeFlowKey(ProtoUDP, cli, uint16(sp), svc, uint16(dp))
			b := bucketOf(&k)
			if first {
				target, first = b, false
			}
			if b == target {
				keys = append(keys, k)
			}
		}
	}
	if len(keys) < n {
		t.Fatalf("found only %d colliding keys", len(keys))
	}
	return keys
}

// chainLoad inserts keys into ft (distinct reverse keys) and returns the
// longest forward chain they form.
func chainLoad(t *testing.T, ft *FlowTable, keys []FlowKey) int {
	t.Helper()
	per := map[uint32]int{}
	longest := 0
	for i := range keys {
		r := keys[i].reverse()
		if _, ok := ft.Insert(&keys[i], &r, uint32(i), 1, 0); !ok {
			t.Fatalf("insert %d failed", i)
		}
		b := ft.bucket(&keys[i])
		per[b]++
		longest = max(longest, per[b])
	}
	return longest
}

// TestFlowBucketSeeded: keys that all collide under the unseeded flow hash
// (the bucket function before tables were seeded, Hash() & (buckets-1))
// spread over a table's chains, so every one is found by the lock-free
// lookup; before, chains beyond maxChain made lookups of the oldest flows
// miss (every packet then took the locked Insert path and replies passed
// untranslated). Two tables draw different seeds, and a collision set
// computed against one table's bucket function spreads in another table.
func TestFlowBucketSeeded(t *testing.T) {
	const capacity, n = 1024, 3 * maxChain
	old := collidingKeys(t, n, func(k *FlowKey) uint32 { return k.Hash() & (capacity - 1) })
	ft := NewFlowTable(FlowConfig{Capacity: capacity, PerPort: capacity})
	// n keys into 1024 chains: the longest chain of a random function
	// exceeds 8 with probability far below 1e-6.
	if l := chainLoad(t, ft, old); l > 8 {
		t.Errorf("old collision set: longest chain %d of %d keys", l, n)
	}
	for i := range old {
		if inst, _, ok := ft.Lookup(&old[i], 0); !ok || inst != uint32(i) {
			t.Fatalf("flow %d of the old collision set: lookup %d %v", i, inst, ok)
		}
		r := old[i].reverse()
		if _, ok := ft.LookupReverse(&r, 0); !ok {
			t.Fatalf("flow %d of the old collision set: reverse lookup missed", i)
		}
	}

	a, b := NewFlowTable(FlowConfig{Capacity: capacity}), NewFlowTable(FlowConfig{Capacity: capacity, PerPort: capacity})
	if a.seed == b.seed {
		t.Fatal("two tables drew the same seed")
	}
	for i := range a.seed {
		if a.seed[i]&1 == 0 {
			t.Fatalf("multiplier %d is even: %#x", i, a.seed[i])
		}
	}
	if l := chainLoad(t, b, collidingKeys(t, n, a.bucket)); l > 8 {
		t.Errorf("collision set of another table: longest chain %d of %d keys", l, n)
	}
}

// TestFlowBucketRange: the bucket index stays inside the chain arrays for
// every table size, including a single bucket (shift 64).
func TestFlowBucketRange(t *testing.T) {
	for _, c := range []int{1, 2, 3, 100, 1024, 1025} {
		ft := NewFlowTable(FlowConfig{Capacity: c})
		for i := range 4096 {
			f, r := fkey(i)
			if b := ft.bucket(&f); int(b) >= len(ft.bktF) {
				t.Fatalf("capacity %d: bucket %d of %d", c, b, len(ft.bktF))
			}
			if b := ft.bucket(&r); int(b) >= len(ft.bktR) {
				t.Fatalf("capacity %d: reverse bucket %d of %d", c, b, len(ft.bktR))
			}
		}
	}
}

// TestFragSlotSeeded: two workers' fragment caches hash the same datagram
// differently (almost always: the seeds are random), so fragment IDs
// chosen to collide in one cache do not collide in another.
func TestFragSlotSeeded(t *testing.T) {
	src, dst := netip.MustParseAddr("10.18.0.2"), netip.MustParseAddr("10.30.0.1")
	differ := 0
	for range 8 {
		a, b := NewWorkerCtx(), NewWorkerCtx()
		same := 0
		for id := range uint32(64) {
			if fragSlot(a.fragOut.seed, src, dst, id, ProtoUDP) == fragSlot(b.fragOut.seed, src, dst, id, ProtoUDP) {
				same++
			}
		}
		if same < 64 {
			differ++
		}
	}
	if differ == 0 {
		t.Fatal("fragment slots do not depend on the worker's seed")
	}
}

func TestFlowRangeAndUnpack(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 16})
	src, dst := netip.MustParseAddrPort("10.18.0.2:40000"), netip.MustParseAddrPort("10.30.0.1:80")
	fwd := MakeFlowKey(ProtoTCP, src.Addr(), src.Port(), dst.Addr(), dst.Port())
	rev := MakeFlowKey(ProtoTCP, netip.MustParseAddr("10.30.0.9"), 80, src.Addr(), src.Port())
	if _, ok := ft.Insert(&fwd, &rev, 3, 1, 7); !ok {
		t.Fatal("insert")
	}
	var got []FlowRecord
	ft.Range(func(r FlowRecord) bool { got = append(got, r); return true })
	if len(got) != 1 || got[0].Inst != 3 || got[0].Fwd != fwd || got[0].Rev != rev || got[0].Last != 7 {
		t.Fatalf("Range: %+v", got)
	}
	p, s, d := got[0].Fwd.Unpack()
	if p != ProtoTCP || s != src || d != dst {
		t.Errorf("Unpack: %d %v %v", p, s, d)
	}
	k6 := MakeFlowKey(ProtoUDP, netip.MustParseAddr("fc00::2"), 1, netip.MustParseAddr("fdff::1"), 65535)
	if p, s, d := k6.Unpack(); p != ProtoUDP || s.String() != "[fc00::2]:1" || d.String() != "[fdff::1]:65535" {
		t.Errorf("Unpack v6: %d %v %v", p, s, d)
	}
}
