//go:build linux

package dataplane

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
)

// The kernel tier's punt device: punt0 in the node's namespace takes the
// frames the TC programs punt (their egress) and the workers' frames back
// (its ingress, tc_punt); punt1, its peer, runs xdp_punt into one AF_XDP
// socket per worker (queue i belongs to worker i).
const (
	punt0 = "owpunt0"
	punt1 = "owpunt1"
)

// Tier metadata in an Ethernet address: 02:<flags>:<ifindex>.
const (
	tierMeta        = 0x02
	tierPuntCounted = 0x01
)

// tierGateDead marks a slot the daemon withdrew: a worker waiting to open
// its gate gives up on it.
const tierGateDead = uint64(1) << 62

// Kernel tier timers: how often the sweeper runs, how long a withdrawn slot
// cools before reuse (a program that found it before it was withdrawn has
// long finished), how long a pending slot may wait for its counted packets
// (lost ones: the gate opens anyway) or for any packet at all.
const (
	tierSweepEvery = 250 * time.Millisecond
	tierStuck      = 100 * time.Millisecond
	tierQuiet      = 2 * time.Millisecond
)

// Idle times of flows the kernel executes after TCP closed: RST, or FIN
// in this direction.
const (
	tierRSTIdle = time.Second
	tierFINIdle = 10 * time.Second
)

// tierMgr is the daemon's side of the kernel tier: which slots are free,
// published or cooling, the sweeper that expires idle flows and keeps the
// worker pool's flows of busy ones alive, and the check that withdraws
// flows a table change made wrong. Workers install flows and open their
// gates (worker.tierRound); everything else runs in the tierMgr's goroutine.
type tierMgr struct {
	e *Engine
	t *bpfprog.Tier
	// quota bounds the published slots charged to one container port
	// (chargeIf), so one container cannot take the whole table.
	quota int

	// mu guards the fields below.
	mu      sync.Mutex
	free    []uint32
	cooling []uint32 // withdrawn last sweep; free after this one
	cooled  []uint32 // withdrawn this sweep
	live    map[uint32]*tierLive
	perIf   map[uint32]int

	check chan struct{} // the table changed: revalidate
	// adopted are the slots a previous daemon left; until adoptUntil,
	// a slot the table cannot judge yet (its service not pushed again
	// since the restart) is kept.
	adopted    map[uint32]bool
	adoptUntil time.Time

	installed, withdrawn, expired, invalid, quotaFull, tableFull atomic.Uint64
}

// tierLive is a published slot.
type tierLive struct {
	key  bpfprog.TierKey
	peer netip.Addr // ingress: the peer the slot accepts
	// charge is the interface whose quota the slot counts against.
	charge uint32
	// unanswered: a TCP service flow the worker pool has seen no reply on
	// (yet); it idles out after TCPSynIdle. Cleared for good once the
	// worker pool's record says answered, or for a slot of another kind.
	unanswered bool
}

func newTierMgr(e *Engine, t *bpfprog.Tier) *tierMgr {
	n := t.NumSlots()
	m := &tierMgr{e: e, t: t, quota: max(64, n/8), live: map[uint32]*tierLive{}, perIf: map[uint32]int{},
		check: make(chan struct{}, 1), adopted: map[uint32]bool{}}
	for i := n - 1; i >= 0; i-- {
		m.free = append(m.free, uint32(i))
	}
	return m
}

// adopt takes over the flows a previous daemon published (pinned maps):
// active ones stay; pending ones had a worker that is gone, so they go.
func (m *tierMgr) adopt() error {
	type pub struct {
		k    bpfprog.TierKey
		slot uint32
	}
	var pubs []pub
	if err := m.t.Published(func(k bpfprog.TierKey, slot uint32) { pubs = append(pubs, pub{k, slot}) }); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	used := map[uint32]bool{}
	var errs []error
	for _, p := range pubs {
		if int(p.slot) >= m.t.NumSlots() || used[p.slot] ||
			atomic.LoadUint64(&m.t.Slot(p.slot).Gate)&bpfprog.TierGateActive == 0 {
			errs = append(errs, m.t.Unpublish(&p.k))
			continue
		}
		used[p.slot] = true
		m.adopted[p.slot] = true
		s := m.t.Slot(p.slot)
		l := &tierLive{key: p.k, charge: chargeIf(&p.k, s)}
		if s.Kind == bpfprog.TierKindIngress {
			l.peer = wordsAddr(s.PeerFamily, s.Peer)
		}
		m.live[p.slot] = l
		m.perIf[l.charge]++
	}
	m.free = m.free[:0]
	for i := m.t.NumSlots() - 1; i >= 0; i-- {
		if !used[uint32(i)] {
			m.free = append(m.free, uint32(i))
		}
	}
	m.adoptUntil = time.Now().Add(tierAdoptGrace)
	return errors.Join(errs...)
}

// tierAdoptGrace is how long flows a previous daemon left wait for the
// service table to be pushed again before they are judged (a restarted
// node re-syncs its interests through the watch within seconds).
const tierAdoptGrace = 30 * time.Second

// chargeIf is the interface whose quota a slot counts against: the
// container port it serves. A flow from a port is charged to that port; a
// flow arriving through the tunnel to the port it delivers into, so a
// container's replies and the requests it serves count against it, not
// against a shared uplink share that one busy or hostile container could
// fill for every other.
func chargeIf(k *bpfprog.TierKey, s *bpfprog.TierSlot) uint32 {
	if s.Kind == bpfprog.TierKindIngress {
		return s.OutIfindex
	}
	return k.Ifindex
}

// alloc takes a free slot for the flow k with slot content s (from peer,
// for the tunnel's flows).
func (m *tierMgr) alloc(k *bpfprog.TierKey, s *bpfprog.TierSlot, peer netip.Addr) (uint32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	charge := chargeIf(k, s)
	if m.perIf[charge] >= m.quota {
		m.quotaFull.Add(1)
		return 0, false
	}
	if len(m.free) == 0 {
		m.tableFull.Add(1)
		return 0, false
	}
	i := m.free[len(m.free)-1]
	m.free = m.free[:len(m.free)-1]
	m.live[i] = &tierLive{key: *k, peer: peer, charge: charge, unanswered: k.Proto == fastpath.ProtoTCP}
	m.perIf[charge]++
	return i, true
}

// unalloc gives back a slot that was never published.
func (m *tierMgr) unalloc(i uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.live[i]; l != nil {
		m.perIf[l.charge]--
		delete(m.live, i)
		m.free = append(m.free, i)
	}
}

// withdrawLocked unpublishes slot i and lets it cool. m.mu held.
func (m *tierMgr) withdrawLocked(i uint32) error {
	l := m.live[i]
	if l == nil {
		return nil
	}
	err := m.t.Unpublish(&l.key)
	atomic.StoreUint64(&m.t.Slot(i).Gate, tierGateDead)
	m.perIf[l.charge]--
	delete(m.live, i)
	delete(m.adopted, i)
	m.cooled = append(m.cooled, i)
	m.withdrawn.Add(1)
	return err
}

// withdrawIf unpublishes every slot whose arrival interface or output is
// ifindex (a port going away).
func (m *tierMgr) withdrawIf(ifindex int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, l := range m.live {
		if int(l.key.Ifindex) == ifindex || int(m.t.Slot(i).OutIfindex) == ifindex {
			_ = m.withdrawLocked(i)
		}
	}
}

// changed asks the sweeper to check every flow against a new table.
func (m *tierMgr) changed() {
	select {
	case m.check <- struct{}{}:
	default:
	}
}

func (m *tierMgr) loop(stop <-chan struct{}) {
	t := time.NewTicker(tierSweepEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			m.sweep()
			if m.judgeAdopted() {
				m.revalidate()
			}
		case <-m.check:
			m.revalidate()
		}
	}
}

// monoNow is CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
func monoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// idle is how long an executed flow of protocol proto may go without a
// packet, after the TCP flags it saw and whether a reply was seen.
func (m *tierMgr) idle(proto uint8, tcpFlags uint32, unanswered bool) time.Duration {
	fc := m.e.cfg.Flows
	switch {
	case proto == fastpath.ProtoTCP && tcpFlags&0x04 != 0:
		return tierRSTIdle
	case proto == fastpath.ProtoTCP && tcpFlags&0x01 != 0:
		return tierFINIdle
	case proto == fastpath.ProtoTCP && unanswered:
		return fc.TCPSynIdle
	case proto == fastpath.ProtoTCP:
		return fc.TCPIdle
	}
	return fc.UDPIdle
}

// answeredLocked clears l.unanswered once the worker pool's record of the
// service flow in slot s says a reply came back (the workers see a flow's
// first reply; the sweeper's touchFlow reports later ones). A slot of
// another kind is not the worker pool's to judge: it keeps TCPIdle. While
// the record is gone (expired or evicted) the last answer stands. m.mu
// held.
func (m *tierMgr) answeredLocked(l *tierLive, s *bpfprog.TierSlot) {
	if s.Kind != bpfprog.TierKindService {
		l.unanswered = false
		return
	}
	src, dst := bpfprog.TierKeyAddrs(&l.key)
	k := fastpath.MakeFlowKey(l.key.Proto, src.Addr(), src.Port(), dst.Addr(), dst.Port())
	if a, ok := m.e.flows.Answered(&k); ok && a {
		l.unanswered = false
	}
}

// sweep expires idle flows, keeps the worker pool's flow of a busy one
// alive (so a flow keeps its instance however long the kernel executes
// it), withdraws pending slots nobody opens, and recycles cooled slots.
func (m *tierMgr) sweep() {
	now, mono := monoNow(), fastpath.Monotonic()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.free = append(m.free, m.cooling...)
	m.cooling, m.cooled = m.cooled, m.cooling[:0]
	for i, l := range m.live {
		s := m.t.Slot(i)
		g := atomic.LoadUint64(&s.Gate)
		if g&bpfprog.TierGateActive == 0 {
			continue // a worker's; it gives up on stuck ones itself
		}
		last := atomic.LoadUint64(&s.LastNs)
		if l.unanswered {
			m.answeredLocked(l, s)
		}
		idle := m.idle(l.key.Proto, atomic.LoadUint32(&s.TcpFlags), l.unanswered)
		if last == 0 {
			last = now // published, no packet yet: the sweep starts its clock
			atomic.CompareAndSwapUint64(&s.LastNs, 0, now)
		}
		if now > last && time.Duration(now-last) > idle {
			_ = m.withdrawLocked(i)
			m.expired.Add(1)
			continue
		}
		if now-last < uint64(2*tierSweepEvery) {
			m.touchFlow(l, s, mono)
		}
	}
}

// touchFlow refreshes the worker pool's flow behind a busy slot.
func (m *tierMgr) touchFlow(l *tierLive, s *bpfprog.TierSlot, mono int64) {
	src, dst := bpfprog.TierKeyAddrs(&l.key)
	switch s.Kind {
	case bpfprog.TierKindService:
		k := fastpath.MakeFlowKey(l.key.Proto, src.Addr(), src.Port(), dst.Addr(), dst.Port())
		m.e.flows.Lookup(&k, mono)
	case bpfprog.TierKindIngress:
		if s.Flags&bpfprog.TierSNAT != 0 { // a reply: its flow's reverse key
			k := fastpath.MakeFlowKey(l.key.Proto, src.Addr(), src.Port(), dst.Addr(), dst.Port())
			m.e.flows.LookupReverse(&k, mono)
		}
	}
}

// revalidate withdraws every executed flow that the worker pool would now
// handle differently (its instance went or moved, its port went, the peer
// is no longer one, its source no longer plausible, ...): it asks the
// processor, as for a packet of the flow, and compares. A flow withdrawn
// here is decided again by its next packet. Runs after every table change,
// so a flow to a removed instance outlives the change by well under 1 s.
func (m *tierMgr) revalidate() {
	ctx := fastpath.NewWorkerCtx() // its counters are never published
	ctx.Now = fastpath.Monotonic()
	t := m.e.tables.Load()
	m.mu.Lock()
	defer m.mu.Unlock()
	buf := make([]byte, 512)
	grace := time.Now().Before(m.adoptUntil)
	for i, l := range m.live {
		s := m.t.Slot(i)
		if atomic.LoadUint64(&s.Gate)&bpfprog.TierGateActive == 0 {
			continue
		}
		if m.adopted[i] {
			if !m.readopt(t, l, s) && grace {
				continue // not judged before its service is pushed again
			}
			delete(m.adopted, i)
		}
		want, ok := m.e.simulate(ctx, t, &l.key, l.peer, buf)
		if !ok || !sameAction(&want, s) {
			_ = m.withdrawLocked(i)
			m.invalid.Add(1)
		}
	}
}

// judgeAdopted says adopted flows wait no longer: their grace is over.
func (m *tierMgr) judgeAdopted() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.adopted) > 0 && time.Now().After(m.adoptUntil)
}

// readopt gives a service flow a previous daemon left its worker-pool
// flow back (the choice of instance it recorded, so the flow keeps its
// instance), once the table knows its service. It reports whether the
// table can judge the flow.
func (m *tierMgr) readopt(t *fastpath.Table, l *tierLive, s *bpfprog.TierSlot) bool {
	src, dst := bpfprog.TierKeyAddrs(&l.key)
	if s.Kind != bpfprog.TierKindService {
		// Instance and ingress flows carry no choice: judge them once the
		// table knows their addresses.
		_, known := t.PlacedOn(dst.Addr())
		if l.peer.IsValid() {
			_, known = t.PlacedOn(src.Addr())
		}
		return known
	}
	inst, ok := t.ChosenInstanceIP(dst.Addr(), s.Inst)
	if !ok {
		return false
	}
	fwd := fastpath.MakeFlowKey(l.key.Proto, src.Addr(), src.Port(), dst.Addr(), dst.Port())
	rev := fastpath.MakeFlowKey(l.key.Proto, inst, dst.Port(), src.Addr(), src.Port())
	port, ok := m.e.portByIfindex(int(l.key.Ifindex))
	if !ok {
		port = fastpath.NoPort
	}
	m.e.flows.Adopt(&fwd, &rev, s.Inst, port, fastpath.Monotonic())
	return true
}

// sameAction compares what a slot does.
func sameAction(a, b *bpfprog.TierSlot) bool {
	return a.Flags == b.Flags && a.OutIfindex == b.OutIfindex && a.NewSaddr == b.NewSaddr &&
		a.NewDaddr == b.NewDaddr && a.Outer == b.Outer && a.Dmac == b.Dmac && a.Smac == b.Smac &&
		a.Peer == b.Peer && a.PeerFamily == b.PeerFamily && a.MaxLen == b.MaxLen
}

func (m *tierMgr) counters(c map[string]uint64) {
	if tc, err := m.t.Counters(); err == nil {
		for k, v := range tc {
			c["tier_"+k] = v
		}
	}
	m.mu.Lock()
	c["tier_flows"] = uint64(len(m.live))
	m.mu.Unlock()
	c["tier_installed"] = m.installed.Load()
	c["tier_withdrawn"] = m.withdrawn.Load()
	c["tier_expired"] = m.expired.Load()
	c["tier_invalidated"] = m.invalid.Load()
	c["tier_quota_full"] = m.quotaFull.Load()
	c["tier_table_full"] = m.tableFull.Load()
}

func (m *tierMgr) flows() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live)
}

func wordsAddr(family uint32, w [4]uint32) netip.Addr {
	var b [16]byte
	for i, x := range w {
		binary.NativeEndian.PutUint32(b[4*i:], x)
	}
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// tierFlows lists the kernel tier's flows.
func (m *tierMgr) tierFlows(now uint64) []FlowInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]FlowInfo, 0, len(m.live))
	for i, l := range m.live {
		s := m.t.Slot(i)
		src, dst := bpfprog.TierKeyAddrs(&l.key)
		fi := FlowInfo{Proto: l.key.Proto, Src: src, Dst: dst, Ingress: s.Kind == bpfprog.TierKindIngress,
			Kernel: true, Pending: atomic.LoadUint64(&s.Gate)&bpfprog.TierGateActive == 0,
			Packets: atomic.LoadUint64(&s.Packets), Bytes: atomic.LoadUint64(&s.Bytes),
			Closing: atomic.LoadUint32(&s.TcpFlags) != 0}
		if last := atomic.LoadUint64(&s.LastNs); last != 0 && now > last {
			fi.Idle = time.Duration(now - last)
		}
		switch {
		case s.Kind == bpfprog.TierKindService:
			fi.Service, fi.Instance, fi.HasInstance = dst.Addr(), s.Inst, true
		case fi.Ingress && s.Flags&bpfprog.TierSNAT != 0:
			fi.Service = wordsAddr(uint32(l.key.Family), s.NewSaddr)
		}
		out = append(out, fi)
	}
	return out
}

// Flows lists the live flows of both tiers: the worker pool's service
// flows (with the instance each chose) and every flow the kernel tier
// executes. A service flow the kernel executes is listed once, as the
// kernel's.
func (e *Engine) Flows() []FlowInfo {
	var out []FlowInfo
	seen := map[[2]netip.AddrPort]bool{}
	if m := e.tm.Load(); m != nil {
		out = m.tierFlows(monoNow())
		for _, f := range out {
			if !f.Ingress {
				seen[[2]netip.AddrPort{f.Src, f.Dst}] = true
			}
		}
	}
	mono := fastpath.Monotonic()
	t := e.tables.Load()
	e.flows.Range(func(r fastpath.FlowRecord) bool {
		proto, src, dst := r.Fwd.Unpack()
		if seen[[2]netip.AddrPort{src, dst}] {
			return true
		}
		if t != nil {
			if _, ok := t.ChosenInstanceIP(dst.Addr(), r.Inst); !ok {
				// Its instance left (or the service did): its next
				// packet chooses again, so it goes nowhere now.
				return true
			}
		}
		out = append(out, FlowInfo{Proto: proto, Src: src, Dst: dst, Service: dst.Addr(),
			Instance: r.Inst, HasInstance: true, Idle: time.Duration(max(0, mono-r.Last))})
		return true
	})
	return out
}
