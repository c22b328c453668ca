package fastpath

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of the per-port bound, the eviction order and the short idle time
// of unanswered TCP flows (issue 13, item 5: one container filled the
// node's flow table and other containers' new flows failed).

const sec = int64(time.Second)

// pkey returns flow i of port p: forward and reverse key, distinct for
// every (p, i) with i < 65536.
func pkey(p PortID, i int) (FlowKey, FlowKey) {
	c := netip.AddrFrom4([4]byte{10, 18, byte(p), 2})
	f := MakeFlowKey(ProtoUDP, c, uint16(i), a4("10.30.0.1"), 53)
	r := MakeFlowKey(ProtoUDP, a4("10.30.0.9"), 53, c, uint16(i))
	return f, r
}

// has reports whether ft holds forward key k, without touching it (a
// lookup would count as a use).
func has(ft *FlowTable, k *FlowKey) bool {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	_, ok := ft.lookupLocked(k, ft.bucket(k))
	return ok
}

// checkHeaps checks the writers' bookkeeping: every used record sits in
// its port's heap at the position it notes, each heap is a heap, the
// counts add up to Len and the free list holds the rest.
func checkHeaps(t *testing.T, ft *FlowTable) {
	t.Helper()
	ft.mu.Lock()
	defer ft.mu.Unlock()
	total := 0
	for p := range ft.heaps {
		h := ft.heaps[p]
		total += len(h)
		if p != int(NoPort) && len(h) > ft.perPort {
			t.Fatalf("port %d holds %d flows, bound %d", p, len(h), ft.perPort)
		}
		for i, idx := range h {
			o := &ft.own[idx]
			if !ft.recs[idx].used || int(o.port) != p || int(o.pos) != i {
				t.Fatalf("port %d heap[%d] = record %d: used %v, port %d, pos %d", p, i, idx, ft.recs[idx].used, o.port, o.pos)
			}
			if i > 0 && ft.lessLocked(idx, h[(i-1)/2]) {
				t.Fatalf("port %d: heap order broken at %d", p, i)
			}
		}
	}
	used := 0
	for i := range ft.recs {
		if ft.recs[i].used {
			used++
		}
	}
	if total != used || used != ft.Len() || used+len(ft.free) != len(ft.recs) {
		t.Fatalf("heaps hold %d, %d records used, Len %d, %d free of %d", total, used, ft.Len(), len(ft.free), len(ft.recs))
	}
}

// TestFlowPortBound: a port at its bound replaces its least recently used
// flow (a use through either lookup counts), other ports keep theirs, and
// the evictions are counted.
func TestFlowPortBound(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 64, PerPort: 8})
	for i := range 3 { // the victim's flows, oldest of all
		f, r := pkey(2, i)
		ft.Insert(&f, &r, 0, 2, int64(i))
	}
	for i := range 8 {
		f, r := pkey(1, i)
		if _, ok := ft.Insert(&f, &r, 0, 1, int64(10+i)); !ok {
			t.Fatalf("insert %d", i)
		}
	}
	// Use flow 0 forward and flow 1 through its reply, later than the rest.
	f0, _ := pkey(1, 0)
	ft.Lookup(&f0, 5*sec)
	_, r1 := pkey(1, 1)
	ft.LookupReverse(&r1, 5*sec)
	// Four new flows evict 2, 3, 4, 5 in that order (least recently used
	// first), never 0 and 1, and never port 2's older flows.
	for n := range 4 {
		f, r := pkey(1, 100+n)
		if _, ok := ft.Insert(&f, &r, 0, 1, 6*sec+int64(n)); !ok {
			t.Fatalf("insert at the bound %d failed", n)
		}
		for i := range 8 {
			k, _ := pkey(1, i)
			gone := i >= 2 && i <= 2+n
			if has(ft, &k) == gone {
				t.Fatalf("after %d evictions: flow %d present %v", n+1, i, !gone)
			}
		}
	}
	for i := range 3 {
		if f, _ := pkey(2, i); !has(ft, &f) {
			t.Fatalf("port 2's flow %d was evicted", i)
		}
	}
	if got := ft.PortFlows(1); got != 8 {
		t.Fatalf("port 1 holds %d flows, want its bound 8", got)
	}
	if c := ft.Counters(); c.EvictedQuota != 4 || c.EvictedFull != 0 {
		t.Fatalf("counters %+v, want 4 quota evictions", c)
	}
	checkHeaps(t, ft)
}

// TestFlowTableFull: with more ports at their bound than the table holds,
// a full table evicts the asking port's own least recently used flow and
// never another port's while the asker holds one; a port with none takes
// one from the port holding the most; Import, which evicts nothing, stops.
func TestFlowTableFull(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 16, PerPort: 8})
	now := int64(0)
	ins := func(p PortID, i int) {
		t.Helper()
		now++
		f, r := pkey(p, i)
		if _, ok := ft.Insert(&f, &r, 0, p, now); !ok {
			t.Fatalf("port %d flow %d: insert failed", p, i)
		}
	}
	for i := range 8 {
		ins(1, i) // port 1 at its bound
	}
	for i := range 7 {
		ins(2, i)
	}
	ins(3, 0) // full: 8 + 7 + 1
	if ft.Len() != 16 {
		t.Fatalf("%d flows, want a full table", ft.Len())
	}
	// Port 2 (7 flows, below its bound) and port 3 (1 flow) evict their own.
	ins(2, 100)
	ins(3, 100)
	if f, _ := pkey(2, 0); has(ft, &f) {
		t.Fatal("port 2's oldest flow survived its own insert into a full table")
	}
	if f, _ := pkey(3, 0); has(ft, &f) {
		t.Fatal("port 3's only flow survived its own insert into a full table")
	}
	if n1, n2, n3 := ft.PortFlows(1), ft.PortFlows(2), ft.PortFlows(3); n1 != 8 || n2 != 7 || n3 != 1 {
		t.Fatalf("ports hold %d, %d, %d; want 8, 7, 1", n1, n2, n3)
	}
	// Port 4 holds nothing: it takes port 1's (the largest) oldest flow.
	ins(4, 0)
	if f, _ := pkey(1, 0); has(ft, &f) {
		t.Fatal("port 1's oldest flow survived a new port's first flow")
	}
	if n1, n4 := ft.PortFlows(1), ft.PortFlows(4); n1 != 7 || n4 != 1 {
		t.Fatalf("ports 1 and 4 hold %d and %d; want 7 and 1", n1, n4)
	}
	if c := ft.Counters(); c.EvictedFull != 3 || c.EvictedQuota != 0 {
		t.Fatalf("counters %+v, want 3 evictions of a full table", c)
	}
	checkHeaps(t, ft)

	// Import belongs to NoPort, evicts nothing and stops when full.
	im := NewFlowTable(FlowConfig{Capacity: 16, PerPort: 4})
	var recs []FlowRecord
	for i := range 20 {
		f, r := pkey(9, i)
		recs = append(recs, FlowRecord{Fwd: f, Rev: r})
	}
	if n := im.Import(recs, 0); n != 16 || im.PortFlows(NoPort) != 16 {
		t.Fatalf("imported %d (NoPort holds %d), want 16: beyond any port's bound, up to the capacity", n, im.PortFlows(NoPort))
	}
	// A port's first flow evicts the oldest of NoPort's.
	f, r := pkey(1, 0)
	if _, ok := im.Insert(&f, &r, 0, 1, 1); !ok || im.PortFlows(NoPort) != 15 {
		t.Fatalf("insert into a table full of imported flows: %v, NoPort holds %d", ok, im.PortFlows(NoPort))
	}
	checkHeaps(t, im)
}

// TestFlowEvictionModel runs random inserts and uses from a few ports
// against an obviously correct model of the rules (a port at its bound
// evicts its least recently used flow; a full table the asker's, or the
// largest port's when the asker holds none; ties go to the older flow)
// and checks every eviction picks the model's victim.
// mflow is a flow of evictionModel.
type mflow struct {
	port PortID
	id   int
	last int64
	born int
}

// evictionModel is the obviously-correct reference: a list of flows,
// searched in full.
type evictionModel []*mflow

func (model evictionModel) count(p PortID) int {
	n := 0
	for _, m := range model {
		if m.port == p {
			n++
		}
	}
	return n
}

// lru is the index of port p's least recently used flow (oldest first
// on a tie), or -1.
func (model evictionModel) lru(p PortID) int {
	best := -1
	for i, m := range model {
		if m.port == p && (best < 0 || m.last < model[best].last || m.last == model[best].last && m.born < model[best].born) {
			best = i
		}
	}
	return best
}

func TestFlowEvictionModel(t *testing.T) {
	const capacity, perPort, ports = 40, 16, 4
	rng := rand.New(rand.NewPCG(13, 5))
	ft := NewFlowTable(FlowConfig{Capacity: capacity, PerPort: perPort})
	var model evictionModel
	now, born, next := int64(0), 0, 0
	var quota, full uint64
	for step := range 3000 {
		if rng.IntN(2) == 0 {
			now += sec // else a use or insert at the same time: ties
		}
		if len(model) > 0 && rng.IntN(3) == 0 {
			m := model[rng.IntN(len(model))]
			f, r := pkey(m.port, m.id)
			if rng.IntN(2) == 0 {
				ft.Lookup(&f, now)
			} else {
				ft.LookupReverse(&r, now)
			}
			if now-m.last > touchGranularity {
				m.last = now
			}
			continue
		}
		p := PortID(1 + rng.IntN(ports))
		switch rng.IntN(8) {
		case 0:
			p = ports + 1 // a port that is mostly empty
		case 1, 2, 3:
			p = 1 // a busy port: at its bound
		}
		victim := -1
		switch n := model.count(p); {
		case n >= perPort:
			victim = model.lru(p)
			quota++
		case len(model) == capacity:
			q := p
			if n == 0 {
				q = 0
				for c := PortID(1); c <= ports+1; c++ {
					if model.count(c) > model.count(q) {
						q = c
					}
				}
			}
			victim = model.lru(q)
			full++
		}
		var vk FlowKey
		if victim >= 0 {
			vk, _ = pkey(model[victim].port, model[victim].id)
			model = append(model[:victim], model[victim+1:]...)
		}
		next++
		born++
		model = append(model, &mflow{port: p, id: next, last: now, born: born})
		f, r := pkey(p, next)
		if _, ok := ft.Insert(&f, &r, 0, p, now); !ok {
			t.Fatalf("step %d: insert failed", step)
		}
		if victim >= 0 && has(ft, &vk) {
			t.Fatalf("step %d: port %d's insert did not evict the model's victim", step, p)
		}
		if ft.Len() != len(model) {
			t.Fatalf("step %d: %d flows, model %d", step, ft.Len(), len(model))
		}
	}
	for _, m := range model {
		if f, _ := pkey(m.port, m.id); !has(ft, &f) {
			t.Fatalf("port %d flow %d: in the model, not in the table", m.port, m.id)
		}
	}
	t.Logf("%d flows; %d evictions at a port's bound, %d in a full table", len(model), quota, full)
	if c := ft.Counters(); c.EvictedQuota != quota || c.EvictedFull != full || quota == 0 || full == 0 {
		t.Fatalf("counters %+v, model %d quota and %d full evictions (want both kinds)", c, quota, full)
	}
	checkHeaps(t, ft)
}

// TestFlowUnansweredTCPIdle: a TCP flow no reply was seen on expires after
// TCPSynIdle; a reply (the reverse lookup) gives it TCPIdle; UDP keeps
// UDPIdle either way; adopted and imported flows count as answered; a
// rebound flow waits for its new instance's reply.
func TestFlowUnansweredTCPIdle(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 64, TCPIdle: time.Hour, TCPSynIdle: 10 * time.Second, UDPIdle: time.Minute})
	for _, c := range []struct {
		cfg  FlowConfig
		want time.Duration
	}{{FlowConfig{}, 10 * time.Second}, {FlowConfig{TCPIdle: 5 * time.Second}, 5 * time.Second},
		{FlowConfig{TCPSynIdle: time.Minute, TCPIdle: 30 * time.Second}, 30 * time.Second}} {
		if got := c.cfg.WithDefaults().TCPSynIdle; got != c.want {
			t.Fatalf("%+v: TCPSynIdle %v, want %v (never beyond TCPIdle)", c.cfg, got, c.want)
		}
	}
	cli, svc, inst := a4("10.18.0.2"), a4("10.30.0.1"), a4("10.30.0.9")
	key := func(proto uint8, sport uint16) (FlowKey, FlowKey) {
		return MakeFlowKey(proto, cli, sport, svc, 80), MakeFlowKey(proto, inst, 80, cli, sport)
	}
	syn, synR := key(ProtoTCP, 1)     // only the client's SYN
	est, estR := key(ProtoTCP, 2)     // answered
	udp, udpR := key(ProtoUDP, 3)     // never answered
	adopted, adR := key(ProtoTCP, 4)  // a previous daemon's
	imported, imR := key(ProtoTCP, 5) // a graceful stop's
	rebound, rebR := key(ProtoTCP, 6) // answered, then rebound
	for _, k := range [][2]*FlowKey{{&syn, &synR}, {&est, &estR}, {&udp, &udpR}, {&rebound, &rebR}} {
		ft.Insert(k[0], k[1], 0, 1, 0)
	}
	ft.Adopt(&adopted, &adR, 0, 1, 0)
	ft.Import([]FlowRecord{{Fwd: imported, Rev: imR}}, 0)
	if _, ok := ft.LookupReverse(&estR, 0); !ok {
		t.Fatal("reverse lookup")
	}
	ft.LookupReverse(&rebR, 0)
	_, ref, _ := ft.Lookup(&rebound, 0)
	rebR2 := MakeFlowKey(ProtoTCP, a4("10.30.0.8"), 80, cli, 6)
	ft.Rebind(ref, &rebR2, 1)
	for _, c := range []struct {
		k            *FlowKey
		answered, ok bool
	}{{&syn, false, true}, {&est, true, true}, {&rebound, false, true}, {&adopted, true, true}, {&imported, true, true},
		{&synR, false, false}} {
		if a, ok := ft.Answered(c.k); a != c.answered || ok != c.ok {
			_, s, d := c.k.Unpack()
			t.Fatalf("Answered(%v → %v) = %v, %v; want %v, %v", s, d, a, ok, c.answered, c.ok)
		}
	}
	for _, k := range []*FlowKey{&syn, &est, &rebound} {
		ft.Lookup(k, 5*sec) // the client's retransmissions keep it alive
	}
	if n := ft.Sweep(14*sec, 0); n != 0 {
		t.Fatalf("swept %d flows 9 s after their last use", n)
	}
	if n := ft.Sweep(16*sec, 0); n != 2 || has(ft, &syn) || has(ft, &rebound) {
		t.Fatalf("11 s after the last SYN: swept %d (SYN-only flow present %v, rebound present %v), want those 2",
			n, has(ft, &syn), has(ft, &rebound))
	}
	for _, k := range []*FlowKey{&est, &udp, &adopted, &imported} {
		if !has(ft, k) {
			_, s, d := k.Unpack()
			t.Fatalf("flow %v → %v expired with the unanswered ones", s, d)
		}
	}
	if c := ft.Counters(); c.ExpiredUnanswered != 2 {
		t.Fatalf("ExpiredUnanswered %d, want 2", c.ExpiredUnanswered)
	}
	if n := ft.Sweep(61*sec, 0); n != 1 || has(ft, &udp) {
		t.Fatalf("after UDPIdle: swept %d, want the UDP flow", n)
	}
	if n := ft.Sweep(2*int64(time.Hour), 0); n != 3 {
		t.Fatalf("after TCPIdle: swept %d, want the 3 answered TCP flows", n)
	}
	if c := ft.Counters(); c.ExpiredUnanswered != 2 {
		t.Fatalf("ExpiredUnanswered %d after the answered ones expired, want still 2", c.ExpiredUnanswered)
	}
	checkHeaps(t, ft)
}

// TestFlowAttackerChurn: a port opening flows as fast as it can, many times
// the table's capacity, holds at most its bound; a victim port's
// established flows all stay and its every new flow gets in.
func TestFlowAttackerChurn(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 256}) // 64 per port
	const attacker, victim = 1, 2
	now := int64(0)
	for i := range 16 {
		f, r := pkey(victim, i)
		ft.Insert(&f, &r, 0, victim, now)
	}
	for i := range 10 * 256 {
		now += int64(time.Millisecond)
		f, r := pkey(attacker, i)
		if _, ok := ft.Insert(&f, &r, 0, attacker, now); !ok {
			t.Fatalf("attacker flow %d refused", i)
		}
		if i%64 == 0 { // the victim opens a flow now and then
			f, r := pkey(victim, 16+i/64)
			if _, ok := ft.Insert(&f, &r, 0, victim, now); !ok {
				t.Fatalf("victim's new flow refused during the attack (%d attacker flows)", i)
			}
		}
	}
	for i := range 16 + 10*256/64 {
		if f, _ := pkey(victim, i); !has(ft, &f) {
			t.Fatalf("victim's flow %d is gone", i)
		}
	}
	if n := ft.PortFlows(attacker); n != 64 {
		t.Fatalf("attacker holds %d flows, want its bound 64", n)
	}
	if c := ft.Counters(); c.EvictedQuota != 10*256-64 || c.EvictedFull != 0 {
		t.Fatalf("counters %+v, want %d quota evictions", c, 10*256-64)
	}
	checkHeaps(t, ft)
}

// TestFlowQuotaConcurrent: attacker ports evicting their own flows in a
// full table, a sweeper, and readers of a victim's flows, all at once (run
// with -race): the victim's lookups never miss and the bookkeeping holds.
func TestFlowQuotaConcurrent(t *testing.T) {
	ft := NewFlowTable(FlowConfig{Capacity: 256, TCPSynIdle: time.Nanosecond, UDPIdle: time.Hour}) // 64 per port
	const stable = 32
	for i := range stable {
		f, r := pkey(1, i)
		ft.Insert(&f, &r, uint32(i), 1, 1<<62) // far future: never idle
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var wrong atomic.Int64
	for a := range 4 { // attackers on ports 2..5: 4 × 64 + 32 > 256, so the table fills
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := PortID(2 + a)
			for i := 0; i < 20000 && !stop.Load(); i++ {
				f, r := pkey(p, i%5000)
				if i%3 == 0 { // some TCP, which the sweeper expires unanswered
					f[0] = f[0]&^0xff | uint64(ProtoTCP)
					r[0] = r[0]&^0xff | uint64(ProtoTCP)
				}
				if _, ok := ft.Insert(&f, &r, 0, p, int64(i)); !ok {
					wrong.Add(1)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := int64(1); !stop.Load(); n++ {
			ft.Sweep(n*sec, 64)
		}
	}()
	var rwg sync.WaitGroup
	for range 2 {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for n := range 100000 {
				f, r := pkey(1, n%stable)
				if inst, _, ok := ft.Lookup(&f, 1<<62); !ok || inst != uint32(n%stable) {
					wrong.Add(1)
				}
				if _, ok := ft.LookupReverse(&r, 1<<62); !ok {
					wrong.Add(1)
				}
			}
		}()
	}
	rwg.Wait()
	stop.Store(true)
	wg.Wait()
	if w := wrong.Load(); w != 0 {
		t.Fatalf("%d refused inserts or missed lookups of the victim's flows", w)
	}
	if n := ft.PortFlows(1); n != stable {
		t.Fatalf("victim holds %d flows, want %d", n, stable)
	}
	checkHeaps(t, ft)
}

// TestProcessorFlowFlood: through the processor, one container (port 1)
// opens thousands of UDP flows and TCP SYNs to a service IP from new
// source ports into a small table, while another (port 2) keeps opening
// new service flows: every one of those is translated (never
// flow-table-full), and replies to them come back translated.
func TestProcessorFlowFlood(t *testing.T) {
	tb, err := testBuilder(nodeA).Build()
	if err != nil {
		t.Fatal(err)
	}
	var h TableHolder
	h.Swap(tb)
	p := NewProcessor(&h, NewFlowTable(FlowConfig{Capacity: 256})) // 64 per port
	ctx := NewWorkerCtx()
	var v [1]Verdict
	victimOK := 0
	for i := range 4000 {
		ctx.Now = int64(i) * int64(time.Millisecond)
		var pkt []byte
		if i%2 == 0 {
			pkt = udpPkt(cli4, svcR4, uint16(10000+i), 53, ipo{})
		} else {
			pkt = tcpPkt(cli4, svcR4, uint16(10000+i), 80)
		}
		f := inFrame(fromCli(pkt))
		p.Egress(ctx, 1, []Frame{f}, v[:])
		if v[0].Action != ActTxUplink {
			t.Fatalf("attacker flow %d: %v/%v", i, v[0].Action, v[0].Reason)
		}
		if i%100 != 0 {
			continue
		}
		sport := uint16(20000 + i/100)
		f = inFrame(mkEth(macH2, macC2, udpPkt(srvL4, svcR4, sport, 53, ipo{})))
		p.Egress(ctx, 2, []Frame{f}, v[:])
		if v[0].Action != ActTxUplink {
			t.Fatalf("victim's new flow during the flood: %v/%v", v[0].Action, v[0].Reason)
		}
		// The reply from the remote instance gets the service IP back.
		f = inFrame(fromB(udpPkt(srvRI4, srvL4, 53, sport, ipo{})))
		p.Ingress(ctx, []Frame{f}, v[:])
		if v[0].Action != ActTxPort || v[0].Port != 2 {
			t.Fatalf("reply to the victim: %v/%v", v[0].Action, v[0].Reason)
		}
		if src := netip.AddrFrom4([4]byte(f.Buf[v[0].Off+14+12:])); src != svcR4 {
			t.Fatalf("reply to the victim came from %v, want the service IP", src)
		}
		victimOK++
	}
	var s Stats
	ctx.Stats(&s)
	if d := s.Drops[ReasonFlowTableFull]; d != 0 {
		t.Fatalf("%d flow-table-full drops", d)
	}
	if c := p.Flows().Counters(); c.EvictedQuota != 4000-64 {
		t.Fatalf("counters %+v, want %d quota evictions", c, 4000-64)
	}
	t.Logf("attacker opened 4000 flows (UDP and TCP SYNs), holds %d; victim: %d/%d new flows answered",
		p.Flows().PortFlows(1), victimOK, 40)
}

// BenchmarkFlowInsertEvict: a new flow of a port at its bound, which
// evicts the port's least recently used flow (BenchmarkFlowInsert is the
// insert alone).
func BenchmarkFlowInsertEvict(b *testing.B) {
	ft := NewFlowTable(FlowConfig{Capacity: 1 << 16}) // 8192 per port
	n := ft.PerPort()
	for i := range n {
		f, r := pkey(1, i)
		ft.Insert(&f, &r, 0, 1, int64(i))
	}
	b.ReportAllocs()
	i := n
	for b.Loop() {
		f, r := pkey(1, i&0xffff)
		if _, ok := ft.Insert(&f, &r, 0, 1, int64(i)); !ok {
			b.Fatal("refused")
		}
		i++
	}
	if c := ft.Counters(); c.EvictedQuota == 0 {
		b.Fatal("nothing evicted")
	}
}
