package fastpath

import (
	"fmt"
	"net/netip"
	"testing"
)

// multiBuilder returns the test topology plus service "a.b.m.n" with n
// remote instances on node B (nsIPs 10.18.0.70+i), reachable via RR
// 10.30.3.1 and Closest 10.30.3.2.
func multiBuilder(n int) *Builder {
	b := testBuilder(nodeA)
	b.Services = append(b.Services, ServiceSpec{Job: "a.b.m.n", IPs: []PolicyIP{
		{Policy: "RR", V4: a4("10.30.3.1")}, {Policy: "Closest", V4: a4("10.30.3.2")}}})
	for i := range n {
		b.Instances = append(b.Instances, mInst(i, nodeB, 0))
	}
	return b
}

func mInst(i int, node netip.AddrPort, gen int) InstanceSpec {
	return InstanceSpec{Job: "a.b.m.n", Number: uint32(i),
		IP4:  netip.AddrFrom4([4]byte{10, 30, 4, byte(i)}),
		NS4:  netip.AddrFrom4([4]byte{10, 18, byte(gen), byte(70 + i)}),
		Node: node}
}

// sendFlow sends one UDP packet of flow sport from the client to dst and
// returns the verdict and the inner destination (nsIP) it was sent to.
func sendFlow(t testing.TB, p *Processor, ctx *WorkerCtx, dst netip.Addr, sport uint16) (Verdict, netip.Addr, netip.Addr) {
	f := inFrame(fromCli(udpPkt(cli4, dst, sport, 53, ipo{})))
	var v [1]Verdict
	p.Egress(ctx, 1, []Frame{f}, v[:])
	switch v[0].Action {
	case ActTxUplink, ActSlowPath:
		b := f.Buf[v[0].Off:]
		return v[0], netip.AddrFrom4([4]byte(b[14+28+16:])), netip.AddrFrom4([4]byte(b[14+16:]))
	case ActTxPort:
		b := f.Buf[v[0].Off:]
		return v[0], netip.AddrFrom4([4]byte(b[14+16:])), netip.Addr{}
	}
	t.Fatalf("flow %d: verdict %v/%v", sport, v[0].Action, v[0].Reason)
	return Verdict{}, netip.Addr{}, netip.Addr{}
}

func TestRRRotatesExactly(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			tb, err := multiBuilder(n).Build()
			if err != nil {
				t.Fatal(err)
			}
			var h TableHolder
			h.Swap(tb)
			p, ctx := NewProcessor(&h, NewFlowTable(FlowConfig{})), NewWorkerCtx()
			for i := range 5 * n {
				_, ns, _ := sendFlow(t, p, ctx, a4("10.30.3.1"), uint16(1000+i))
				if want := netip.AddrFrom4([4]byte{10, 18, 0, byte(70 + i%n)}); ns != want {
					t.Fatalf("flow %d went to %v, want %v", i, ns, want)
				}
				// The same flow again keeps its instance.
				if _, again, _ := sendFlow(t, p, ctx, a4("10.30.3.1"), uint16(1000+i)); again != ns {
					t.Fatalf("flow %d moved from %v to %v", i, ns, again)
				}
			}
		})
	}
}

func TestClosest(t *testing.T) {
	nodeD := netip.MustParseAddrPort("198.18.0.4:50103")
	nodeE := netip.MustParseAddrPort("198.18.0.5:50103")
	build := func(local bool) *Table {
		b := multiBuilder(0)
		b.Neighbors[nodeC.Addr()] = macB
		b.Neighbors[nodeD.Addr()] = macB
		b.Neighbors[nodeE.Addr()] = macB
		far := mInst(0, nodeB, 0)
		far.Loc = &Location{Lat: 40.4, Long: -3.7} // Madrid
		near1 := mInst(1, nodeC, 0)
		near1.Loc = &Location{Lat: 48.1, Long: 11.6} // Munich
		near2 := mInst(2, nodeD, 0)
		near2.Loc = &Location{Lat: 48.1, Long: 11.6} // Munich too: a tie
		unknown := mInst(3, nodeE, 0)
		b.Instances = append(b.Instances, far, near1, near2, unknown)
		if local {
			b.Ports = append(b.Ports, PortSpec{ID: 3, NS4: a4("10.18.0.4"), Inst4: a4("10.30.4.9"), ContainerMAC: macC2, HostMAC: macH2})
			b.Instances = append(b.Instances, InstanceSpec{Job: "a.b.m.n", Number: 9, IP4: a4("10.30.4.9"), NS4: a4("10.18.0.4"), Local: true, Port: 3, Node: nodeA})
		}
		tb, err := b.Build()
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	var h TableHolder
	h.Swap(build(false))
	p, ctx := NewProcessor(&h, NewFlowTable(FlowConfig{})), NewWorkerCtx()
	seen := map[netip.Addr]int{}
	for i := range 10 {
		_, ns, _ := sendFlow(t, p, ctx, a4("10.30.3.2"), uint16(2000+i))
		seen[ns]++
	}
	// Munich (two instances, tie → round robin) beats Madrid and unknown.
	if len(seen) != 2 || seen[a4("10.18.0.71")] != 5 || seen[a4("10.18.0.72")] != 5 {
		t.Fatalf("closest without local picked %v", seen)
	}
	h.Swap(build(true))
	for i := range 10 {
		v, ns, _ := sendFlow(t, p, ctx, a4("10.30.3.2"), uint16(3000+i))
		if v.Action != ActTxPort || v.Port != 3 || ns != a4("10.18.0.4") {
			t.Fatalf("closest with a local instance picked %v %v", v.Action, ns)
		}
	}
}

// TestFlowsFollowInstances: 10,000 flows keep their instance across a swap
// that adds instances, follow an instance that migrates to another node,
// and are chosen again only when their instance is gone.
func TestFlowsFollowInstances(t *testing.T) {
	const flows = 10000
	b := multiBuilder(4)
	tb, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	var h TableHolder
	h.Swap(tb)
	p, ctx := NewProcessor(&h, NewFlowTable(FlowConfig{Capacity: 2 * flows, PerPort: flows})), NewWorkerCtx()
	svc := a4("10.30.3.1")
	first := make([]netip.Addr, flows)
	for i := range flows {
		_, first[i], _ = sendFlow(t, p, ctx, svc, uint16(10000+i))
	}

	// Add four instances.
	b = multiBuilder(8)
	b.Prev = tb
	if tb, err = b.Build(); err != nil {
		t.Fatal(err)
	}
	h.Swap(tb)
	for i := range flows {
		if _, ns, _ := sendFlow(t, p, ctx, svc, uint16(10000+i)); ns != first[i] {
			t.Fatalf("flow %d moved from %v to %v after adding instances", i, first[i], ns)
		}
	}

	// Instance 1 migrates to node C with a new nsIP; instance 2 is deleted.
	b = multiBuilder(0)
	b.Neighbors[nodeC.Addr()] = macB
	for i := range 8 {
		switch i {
		case 1:
			b.Instances = append(b.Instances, mInst(i, nodeC, 1))
		case 2:
		default:
			b.Instances = append(b.Instances, mInst(i, nodeB, 0))
		}
	}
	b.Prev = tb
	if tb, err = b.Build(); err != nil {
		t.Fatal(err)
	}
	h.Swap(tb)
	rechosen := 0
	for i := range flows {
		_, ns, node := sendFlow(t, p, ctx, svc, uint16(10000+i))
		switch first[i] {
		case a4("10.18.0.71"):
			if ns != a4("10.18.1.71") || node != nodeC.Addr() {
				t.Fatalf("flow %d did not follow its migrated instance: %v on %v", i, ns, node)
			}
		case a4("10.18.0.72"):
			if ns == a4("10.18.0.72") {
				t.Fatalf("flow %d still on the deleted instance", i)
			}
			rechosen++
			// And it sticks to the new choice.
			if _, again, _ := sendFlow(t, p, ctx, svc, uint16(10000+i)); again != ns {
				t.Fatalf("re-chosen flow %d moved again", i)
			}
		default:
			if ns != first[i] || node != nodeB.Addr() {
				t.Fatalf("flow %d moved from %v to %v", i, first[i], ns)
			}
		}
	}
	var st Stats
	ctx.Stats(&st)
	if rechosen == 0 || st.Events[EvFlowRechosen] != uint64(rechosen) || st.Events[EvFlowNew] != flows {
		t.Fatalf("rechosen %d, counters %d rechosen %d new", rechosen, st.Events[EvFlowRechosen], st.Events[EvFlowNew])
	}
}
