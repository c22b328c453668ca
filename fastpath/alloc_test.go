package fastpath

import (
	"net/netip"
	"runtime"
	"testing"
)

// batch is a reusable batch of frames restored from templates before each
// run (processing rewrites frames in place).
type batch struct {
	tmpl   [][]byte
	frames []Frame
	out    []Verdict
}

func newBatch(tmpl [][]byte) *batch {
	b := &batch{tmpl: tmpl, frames: make([]Frame, len(tmpl)), out: make([]Verdict, len(tmpl))}
	for i, t := range tmpl {
		b.frames[i] = inFrame(t)
	}
	return b
}

func (b *batch) reset() {
	for i, t := range b.tmpl {
		copy(b.frames[i].Buf[256:], t)
		b.frames[i].Off, b.frames[i].Len = 256, len(t)
	}
}

func egressRemoteBatch(n int) *batch {
	var tmpl [][]byte
	for i := range n {
		tmpl = append(tmpl, fromCli(udpPkt(cli4, svcR4, uint16(20000+i), 53, ipo{})))
	}
	return newBatch(tmpl)
}

func egressLocalBatch(n int) *batch {
	var tmpl [][]byte
	for i := range n {
		tmpl = append(tmpl, fromCli(udpPkt(cli4, svcL4, uint16(20000+i), 53, ipo{})))
	}
	return newBatch(tmpl)
}

func ingressBatch(n int) *batch {
	var tmpl [][]byte
	for i := range n {
		tmpl = append(tmpl, fromB(udpPkt(srvRI4, cli4, 53, uint16(20000+i), ipo{})))
	}
	return newBatch(tmpl)
}

func TestZeroAllocs(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	eg, loc, in := egressRemoteBatch(64), egressLocalBatch(64), ingressBatch(64)
	// Port unreachable from the client about replies of eg's flows.
	var errs [][]byte
	for i := range 4 {
		q := udpPkt(svcR4, cli4, 53, uint16(20000+i), ipo{})
		errs = append(errs, fromCli(mkIP(cli4, svcR4, ProtoICMP, mkICMP(cli4, svcR4, 3, 3, 0, q), ipo{})))
	}
	ie := newBatch(errs)
	// Create the flows once, so the runs below measure the steady state;
	// new-flow creation is measured by the insert case.
	eg.reset()
	p.Egress(ctx, 1, eg.frames, eg.out)
	cases := []struct {
		name string
		run  func()
		want Action
		out  []Verdict
	}{
		{"egress remote", func() { eg.reset(); p.Egress(ctx, 1, eg.frames, eg.out) }, ActTxUplink, eg.out},
		{"egress local", func() { loc.reset(); p.Egress(ctx, 1, loc.frames, loc.out) }, ActTxPort, loc.out},
		{"ingress", func() { in.reset(); p.Ingress(ctx, in.frames, in.out) }, ActTxPort, in.out},
		{"egress icmp error to service", func() { ie.reset(); p.Egress(ctx, 1, ie.frames, ie.out) }, ActTxUplink, ie.out},
	}
	for _, c := range cases {
		if n := testing.AllocsPerRun(100, c.run); n != 0 {
			t.Errorf("%s: %v allocs per batch", c.name, n)
		}
		for i, v := range c.out {
			if v.Action != c.want {
				t.Fatalf("%s: frame %d verdict %v/%v", c.name, i, v.Action, v.Reason)
			}
		}
	}
	// Egress that creates a new flow each time (policy pick + insert).
	nf := egressRemoteBatch(1)
	sport := uint16(0)
	newFlow := func() {
		nf.reset()
		sport++
		be.PutUint16(nf.frames[0].Buf[256+14+20:], sport) // new source port (checksum recomputed anyway)
		p.Egress(ctx, 1, nf.frames, nf.out)
	}
	if n := testing.AllocsPerRun(500, newFlow); n != 0 {
		t.Errorf("egress new flow: %v allocs", n)
	}
	if nf.out[0].Action != ActTxUplink {
		t.Fatalf("new flow verdict %v/%v", nf.out[0].Action, nf.out[0].Reason)
	}

	// 1000 inserts from one port with a bound of 512: the later ones
	// evict.
	ft := NewFlowTable(FlowConfig{Capacity: 4096, PerPort: 512})
	i := 0
	insert := func() {
		f, r := fkey(i)
		i++
		ft.Insert(&f, &r, 1, 1, int64(i))
	}
	if n := testing.AllocsPerRun(1000, insert); n != 0 {
		t.Errorf("flow insert: %v allocs", n)
	}
	if c := ft.Counters(); c.EvictedQuota == 0 {
		t.Fatal("the insert case evicted nothing")
	}
	f, r := fkey(i - 1)
	if _, _, ok := ft.Lookup(&f, 0); !ok {
		t.Fatal("the newest flow is gone")
	}
	lookup := func() {
		ft.Lookup(&f, 0)
		ft.LookupReverse(&r, 0)
	}
	if n := testing.AllocsPerRun(1000, lookup); n != 0 {
		t.Errorf("flow lookup: %v allocs", n)
	}
	var pp Parsed
	frame := fromCli(tcpPkt(cli6, svcR6, 1, 2))
	if n := testing.AllocsPerRun(1000, func() { pp.Decode(frame) }); n != 0 {
		t.Errorf("decode: %v allocs", n)
	}
}

// benchBatch reports wall ns/packet and the thread's CPU ns/packet (the
// latter is what to compare on a shared, loaded machine).
func benchBatch(b *testing.B, b64 *batch, run func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := threadCPU()
	for b.Loop() {
		b64.reset()
		run()
	}
	pkts := float64(b.N * len(b64.frames))
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/pkts, "ns/packet")
	b.ReportMetric(float64(threadCPU()-cpu0)/pkts, "cpu-ns/packet")
}

// BenchmarkEgressRemote: steady-state flows, translate + encapsulate, 64
// frames per batch. The time includes restoring the 58-byte frames.
func BenchmarkEgressRemote(b *testing.B) {
	p, ctx := newTestProc(b, nodeA)
	bt := egressRemoteBatch(64)
	bt.reset()
	p.Egress(ctx, 1, bt.frames, bt.out)
	benchBatch(b, bt, func() { p.Egress(ctx, 1, bt.frames, bt.out) })
	if bt.out[0].Action != ActTxUplink {
		b.Fatal(bt.out[0].Action)
	}
}

// BenchmarkEgressRemoteIncremental is the same with CsumIncremental.
func BenchmarkEgressRemoteIncremental(b *testing.B) {
	bl := testBuilder(nodeA)
	bl.Ports[0].Csum = CsumIncremental
	tb, _ := bl.Build()
	var h TableHolder
	h.Swap(tb)
	p, ctx := NewProcessor(&h, NewFlowTable(FlowConfig{})), NewWorkerCtx()
	bt := egressRemoteBatch(64)
	benchBatch(b, bt, func() { p.Egress(ctx, 1, bt.frames, bt.out) })
}

func BenchmarkEgressLocal(b *testing.B) {
	p, ctx := newTestProc(b, nodeA)
	bt := egressLocalBatch(64)
	benchBatch(b, bt, func() { p.Egress(ctx, 1, bt.frames, bt.out) })
	if bt.out[0].Action != ActTxPort {
		b.Fatal(bt.out[0].Action)
	}
}

// BenchmarkEgressInstanceIP is a server's replies (to client instance IPs),
// with the client flows' reverse keys in the table: each packet checks
// whether a flow owns its reply 5-tuple (FlowTable.ReleaseReverse).
func BenchmarkEgressInstanceIP(b *testing.B) {
	p, ctx := newTestProc(b, nodeA)
	eg := egressRemoteBatch(64)
	eg.reset()
	p.Egress(ctx, 1, eg.frames, eg.out) // flows with reverse keys in the table
	var tmpl [][]byte
	for i := range 64 {
		tmpl = append(tmpl, fromCli(udpPkt(cli4, srvRI4, uint16(30000+i), 53, ipo{})))
	}
	bt := newBatch(tmpl)
	benchBatch(b, bt, func() { p.Egress(ctx, 1, bt.frames, bt.out) })
	if bt.out[0].Action != ActTxUplink {
		b.Fatal(bt.out[0].Action)
	}
}

func BenchmarkIngress(b *testing.B) {
	p, ctx := newTestProc(b, nodeA)
	eg := egressRemoteBatch(64)
	eg.reset()
	p.Egress(ctx, 1, eg.frames, eg.out) // open the flows: replies are translated
	bt := ingressBatch(64)
	benchBatch(b, bt, func() { p.Ingress(ctx, bt.frames, bt.out) })
	var st Stats
	ctx.Stats(&st)
	if bt.out[0].Action != ActTxPort || st.Events[EvIngressTranslated] == 0 {
		b.Fatal(bt.out[0].Action)
	}
}

func BenchmarkDecode(b *testing.B) {
	frame := fromCli(tcpPkt(cli4, svcR4, 1, 2))
	var pp Parsed
	b.ReportAllocs()
	for b.Loop() {
		pp.Decode(frame)
	}
}

func BenchmarkFlowLookup(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 20} {
		name := "1k"
		if n == 1<<20 {
			name = "1M"
		}
		b.Run(name, func(b *testing.B) {
			ft := NewFlowTable(FlowConfig{Capacity: n, PerPort: n})
			keys := make([]FlowKey, n)
			for i := range n {
				f, r := fkey(i)
				keys[i] = f
				ft.Insert(&f, &r, 1, 1, 0)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				k := &keys[(i*7919)&(n-1)]
				if _, _, ok := ft.Lookup(k, 0); !ok {
					b.Fatal("miss")
				}
				i++
			}
		})
	}
}

func BenchmarkFlowInsert(b *testing.B) {
	const capacity = 1 << 20
	// A table with its port's heap made (the port's first flow allocates
	// it), and room for capacity-1 more flows: inserts alone.
	table := func() *FlowTable {
		ft := NewFlowTable(FlowConfig{Capacity: capacity, PerPort: capacity})
		w := MakeFlowKey(ProtoTCP, cli4, 1, svcR4, 1)
		wr := w.reverse()
		ft.Insert(&w, &wr, 1, 1, 0)
		return ft
	}
	ft := table()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == capacity-1 {
			b.StopTimer()
			ft = table()
			i = 0
			b.StartTimer()
		}
		f, r := fkey(i)
		if _, ok := ft.Insert(&f, &r, 1, 1, 0); !ok {
			b.Fatal("full")
		}
		i++
	}
}

// BenchmarkLadder climbs from restoring the batch (the harness cost
// included in every egress/ingress number) through parsing to the full
// egress path.
func BenchmarkLadder(b *testing.B) {
	b.Run("reset", func(b *testing.B) {
		bt := egressRemoteBatch(64)
		benchBatch(b, bt, func() {})
	})
	b.Run("reset+decode", func(b *testing.B) {
		bt := egressRemoteBatch(64)
		var pp Parsed
		benchBatch(b, bt, func() {
			for i := range bt.frames {
				f := &bt.frames[i]
				pp.Decode(f.Buf[f.Off : f.Off+f.Len])
			}
		})
	})
	b.Run("reset+flowlookup", func(b *testing.B) {
		p, ctx := newTestProc(b, nodeA)
		bt := egressRemoteBatch(64)
		bt.reset()
		p.Egress(ctx, 1, bt.frames, bt.out)
		keys := make([]FlowKey, 64)
		for i := range keys {
			keys[i] = MakeFlowKey(ProtoUDP, cli4, uint16(20000+i), svcR4, 53)
		}
		benchBatch(b, bt, func() {
			for i := range keys {
				p.flows.Lookup(&keys[i], 0)
			}
		})
	})
	b.Run("egress-remote", BenchmarkEgressRemote)
}

// BenchmarkAddrLookup compares the snapshot's addrTable with a Go map keyed
// by netip.Addr (the reason addrTable exists).
func BenchmarkAddrLookup(b *testing.B) {
	addrs := make([]netip.Addr, 256)
	m := make(map[netip.Addr]addrEntry)
	tab := newAddrTable[addrEntry](len(addrs))
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{10, 30, byte(i >> 4), byte(i)})
		m[addrs[i]] = addrEntry{idx: int32(i)}
		tab.put(addrs[i], addrEntry{idx: int32(i)})
	}
	b.Run("map", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := m[addrs[i&255]]; !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("addrTable", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := tab.get(addrs[i&255]); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
}
