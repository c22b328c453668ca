package fastpath

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// FlowConfig configures a FlowTable.
type FlowConfig struct {
	Capacity int // maximum flows (default 65536)
	// PerPort bounds the flows one port holds (default DefaultPerPort):
	// a port at its bound makes room for a new flow by evicting its own
	// least recently used one.
	PerPort int
	TCPIdle time.Duration // idle expiry of TCP flows (default 10 min)
	// TCPSynIdle is the idle expiry of a TCP flow no reply was seen on
	// yet: a handshake that never completed (default 10 s).
	TCPSynIdle time.Duration
	UDPIdle    time.Duration // default 60 s
	ICMPIdle   time.Duration // ICMP and ICMPv6 echo (default 30 s)
	OtherIdle  time.Duration // any other protocol (default 60 s; unused today)
}

// DefaultFlowConfig: 65536 flows, 8192 per port, TCP 10 min (10 s
// without a reply), UDP 60 s, ICMP 30 s.
func DefaultFlowConfig() FlowConfig {
	const capacity = 1 << 16
	return FlowConfig{Capacity: capacity, PerPort: DefaultPerPort(capacity), TCPIdle: 10 * time.Minute,
		TCPSynIdle: 10 * time.Second, UDPIdle: time.Minute, ICMPIdle: 30 * time.Second, OtherIdle: time.Minute}
}

// DefaultPerPort is the per-port bound of a table of capacity flows: an
// eighth of it, at least 64 (the kernel tier's quota per interface is the
// same fraction of its slots), at most all of it. Eight ports at their
// bound fill the table; until then no port's new flow touches another
// port's flows.
func DefaultPerPort(capacity int) int { return min(capacity, max(64, capacity/8)) }

// WithDefaults returns c with its zero (or negative) fields set to
// DefaultFlowConfig's values (PerPort from the capacity), PerPort capped
// at the capacity and TCPSynIdle at TCPIdle.
func (c FlowConfig) WithDefaults() FlowConfig {
	d := DefaultFlowConfig()
	if c.Capacity <= 0 {
		c.Capacity = d.Capacity
	}
	if c.PerPort <= 0 {
		c.PerPort = DefaultPerPort(c.Capacity)
	}
	for _, f := range []struct{ v, d *time.Duration }{{&c.TCPIdle, &d.TCPIdle}, {&c.TCPSynIdle, &d.TCPSynIdle},
		{&c.UDPIdle, &d.UDPIdle}, {&c.ICMPIdle, &d.ICMPIdle}, {&c.OtherIdle, &d.OtherIdle}} {
		if *f.v <= 0 {
			*f.v = *f.d
		}
	}
	c.PerPort = min(c.PerPort, c.Capacity)
	c.TCPSynIdle = min(c.TCPSynIdle, c.TCPIdle)
	return c
}

// NoPort owns the flows that came from no port: a previous daemon's,
// taken over by Import. They count against no port's bound.
const NoPort PortID = MaxPorts

// flowRec is one flow. Every field a reader touches is atomic: readers run
// a per-record seqlock (seq odd while a writer changes the record), so a
// reader never blocks and the race detector sees no plain shared access.
type flowRec struct {
	seq   atomic.Uint32
	inst  atomic.Uint32 // instance number within the service
	nextF atomic.Uint32 // next record in the forward chain (index+1; 0 ends)
	nextR atomic.Uint32 // next record in the reverse chain
	last  atomic.Int64  // last use, coarse monotonic ns
	fwd   [5]atomic.Uint64
	rev   [5]atomic.Uint64
	// revOff: the reverse key was claimed by a newer use of the same
	// reply 5-tuple (see FlowTable), so LookupReverse skips this record
	// until the flow is used again (Claim). Written under FlowTable.mu.
	revOff atomic.Bool
	// answered: a reply was seen (LookupReverse found the flow). A TCP
	// flow without one expires after TCPSynIdle.
	answered atomic.Bool
	// Written and read by writers only (under FlowTable.mu).
	used   bool
	bf, br uint32  // bucket indexes
	_      [4]byte // pad to 128 bytes: a lookup touches one cache line (seq … fwd)
}

// FlowTable maps forward keys (client nsIP → service IP) and reverse keys
// (server instance IP → client nsIP) to the flow's chosen instance number.
// It is shared by all workers.
//
// Lookups are lock-free and never block: chained hash buckets over a fixed
// slab of records (the bucket function is seeded per table, so senders
// cannot choose keys that share a chain), each record under a seqlock,
// plus a table-wide write generation. A lookup never returns a wrong flow;
// one that misses while a writer was active walks again (up to
// lookupTries), so a false miss needs a writer to interfere three times in
// a row. Even then, egress takes the insert path, which re-checks under
// the writer lock (no duplicate flow); on ingress the reply would pass
// untranslated. Writers (insert, rebind, sweep) serialize on one mutex;
// they run once per new flow, not per packet.
//
// Capacity is fixed at creation, and every flow counts against the port
// it came from (its client container's). A port holds at most PerPort
// flows: at that bound, its new flow takes the place of its own least
// recently used one, so a container opening flows as fast as it can
// churns through its own share and never fills the table. A full table
// (enough ports at their bound) likewise evicts the asking port's least
// recently used flow; never another port's while the asker has one. Only
// a port with no flows at all takes one from the port holding the most,
// so every port can open a flow. Evictions are counted (Counters); Insert
// fails (ReasonFlowTableFull) only when nothing can be evicted. The
// sweeper frees idle flows; a TCP flow no reply was seen on (the reverse
// lookup marks it answered) idles out after TCPSynIdle instead of TCPIdle,
// so flows of a SYN flood into the void go within seconds.
//
// Least recently used is exact up to the 250 ms granularity of the last
// use time: each port's flows sit in a binary heap on the last use its
// writer knew of. Readers refresh the time without the lock, so the heap
// is fixed lazily: a root whose time moved on is placed again before it
// is evicted (each such step stands for a use since it was last placed).
//
// Reverse keys can collide: the reply 5-tuple (instance IP, port → client
// nsIP, port) says which instance answered, not what the client addressed.
// One client port may talk to two service IPs that picked the same instance,
// or to a service IP and then straight to the instance IP it picked (a
// client reuses an ephemeral port long before a 10 min TCP flow expires).
// The server sees the same 4-tuple either way, so only the most recent use
// can work, and it must: the most recently used flow owns the reverse key.
// Insert, Rebind and Claim (a flow used again) take it; ReleaseReverse (a
// packet sent straight to the instance IP) takes it from every flow, so
// the reply passes untranslated. Without that, a reply to a direct
// connection came back with the service IP as its source and the client's
// kernel dropped it (UDP NoPorts, TCP RST): lost with no counter here.
type FlowTable struct {
	cfg  FlowConfig
	idle [256]int64 // idle ns per protocol
	// seed holds the odd multipliers of the bucket function, drawn from
	// crypto/rand by NewFlowTable; shift keeps the top log2(buckets) bits.
	// Immutable after NewFlowTable.
	seed  [5]uint64
	shift uint8
	bktF  []atomic.Uint32 // forward chain heads (index+1)
	bktR  []atomic.Uint32
	recs  []flowRec
	mu    sync.Mutex // guards free, used/bf/br of records, own, heaps, born, all writes
	free  []uint32
	count atomic.Int64
	// gen is odd while a writer changes chains or records and advances by
	// two per change: a lookup that missed while gen moved walks again.
	gen   atomic.Uint64
	sweep int // next record the sweeper looks at (guarded by mu)

	perPort int   // flows one port may hold (immutable)
	synIdle int64 // idle ns of an unanswered TCP flow (immutable)
	// own is each record's place among its port's flows, parallel to
	// recs; heaps[p] is port p's flows (record indexes), a min-heap on
	// (own.key, own.born): its root is the port's least recently used
	// flow. len(heaps[p]) is how many flows p holds. Guarded by mu.
	own   []flowOwn
	heaps [NoPort + 1][]uint32
	born  uint64 // insert counter: of two flows last used at once, the older goes first

	evictedQuota, evictedFull, expiredUnanswered atomic.Uint64
}

// flowOwn is a record's entry in its port's heap (writers only).
type flowOwn struct {
	key  int64  // the last use the heap placed the record by
	born uint64 // FlowTable.born at insert
	pos  int32  // index in heaps[port]
	port PortID
}

// lookupTries bounds how often a lock-free lookup walks again after it
// missed while a writer was active (gen changed): with it a false miss
// needs a writer to interfere with three walks in a row.
const lookupTries = 3

// maxChain bounds a lock-free chain walk (a walk racing with record reuse
// could otherwise wander); exceeding it is a miss. Chains that long only
// come from keys chosen to collide, which the seeded bucket function
// prevents (bucket).
const maxChain = 64

// touchGranularity limits how often lookups store the last-use time (keeps
// the record's cache line from bouncing between workers).
const touchGranularity = int64(250 * time.Millisecond)

// NewFlowTable allocates a table for cfg.Capacity flows (cfg.WithDefaults
// fills in zero fields).
func NewFlowTable(cfg FlowConfig) *FlowTable {
	cfg = cfg.WithDefaults()
	nb := 1
	for nb < cfg.Capacity {
		nb <<= 1
	}
	ft := &FlowTable{
		cfg:     cfg,
		shift:   64,
		bktF:    make([]atomic.Uint32, nb),
		bktR:    make([]atomic.Uint32, nb),
		recs:    make([]flowRec, cfg.Capacity),
		free:    make([]uint32, cfg.Capacity),
		own:     make([]flowOwn, cfg.Capacity),
		perPort: cfg.PerPort,
		synIdle: int64(cfg.TCPSynIdle),
	}
	for b := nb; b > 1; b >>= 1 {
		ft.shift--
	}
	var seed [8 * len(ft.seed)]byte
	rand.Read(seed[:]) // never fails (crypto/rand, Go ≥ 1.24)
	for i := range ft.seed {
		ft.seed[i] = binary.LittleEndian.Uint64(seed[8*i:]) | 1
	}
	for i := range ft.idle {
		ft.idle[i] = int64(cfg.OtherIdle)
	}
	ft.idle[ProtoTCP] = int64(cfg.TCPIdle)
	ft.idle[ProtoUDP] = int64(cfg.UDPIdle)
	ft.idle[ProtoICMP] = int64(cfg.ICMPIdle)
	ft.idle[ProtoICMPv6] = int64(cfg.ICMPIdle)
	for i := range ft.free {
		ft.free[i] = uint32(cfg.Capacity - 1 - i)
	}
	return ft
}

// bucket returns the chain index of key k: multiply-shift hashing with the
// table's random odd multipliers (Dietzfelbinger et al., "A reliable
// randomized algorithm for the closest-pair problem", 1997: for any two
// distinct keys, chosen without knowing the seed, the top bits collide
// with probability about 2/buckets). With the unseeded Hash, a container
// choosing its ports could put many flows into one chain: lookups give up
// after maxChain records, so those packets would all take the locked
// Insert path and their replies pass untranslated.
func (ft *FlowTable) bucket(k *FlowKey) uint32 {
	h := k[0]*ft.seed[0] + k[1]*ft.seed[1] + k[2]*ft.seed[2] + k[3]*ft.seed[3] + k[4]*ft.seed[4]
	return uint32(h >> ft.shift) // shift 64 (one bucket) yields 0
}

// Len returns the number of live flows.
func (ft *FlowTable) Len() int { return int(ft.count.Load()) }

// Capacity returns the maximum number of flows.
func (ft *FlowTable) Capacity() int { return len(ft.recs) }

// PerPort returns how many flows one port may hold.
func (ft *FlowTable) PerPort() int { return ft.perPort }

// PortFlows returns how many flows port holds (under the writer lock).
func (ft *FlowTable) PortFlows(port PortID) int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return len(ft.heaps[min(port, NoPort)])
}

// FlowCounters counts what the table did to make room and to expire.
type FlowCounters struct {
	// EvictedQuota: flows evicted for a new flow of their own port, which
	// was at its PerPort bound.
	EvictedQuota uint64
	// EvictedFull: flows evicted because the table was full (the asking
	// port's own, or, for a port with none, the largest port's).
	EvictedFull uint64
	// ExpiredUnanswered: TCP flows that idled out after TCPSynIdle with
	// no reply seen.
	ExpiredUnanswered uint64
}

// Counters returns the table's counters (any goroutine).
func (ft *FlowTable) Counters() FlowCounters {
	return FlowCounters{EvictedQuota: ft.evictedQuota.Load(), EvictedFull: ft.evictedFull.Load(),
		ExpiredUnanswered: ft.expiredUnanswered.Load()}
}

func keyEq(a *[5]atomic.Uint64, k *FlowKey) bool {
	return a[0].Load() == k[0] && a[1].Load() == k[1] && a[2].Load() == k[2] &&
		a[3].Load() == k[3] && a[4].Load() == k[4]
}

// FlowRef identifies a record found by a lookup, for Rebind.
type FlowRef struct {
	idx uint32
	seq uint32
}

// Lookup finds the flow with forward key k and returns its instance
// number. now refreshes the flow's idle timer.
func (ft *FlowTable) Lookup(k *FlowKey, now int64) (inst uint32, ref FlowRef, ok bool) {
	b := ft.bucket(k)
	for try := 0; try < lookupTries; try++ {
		g := ft.gen.Load()
		i := ft.bktF[b].Load()
		for n := 0; i != 0 && n < maxChain; n++ {
			r := &ft.recs[i-1]
			s := r.seq.Load()
			if s&1 == 0 && keyEq(&r.fwd, k) {
				inst = r.inst.Load()
				if r.seq.Load() == s {
					ft.touch(r, now)
					return inst, FlowRef{idx: i - 1, seq: s}, true
				}
			}
			i = r.nextF.Load()
		}
		if g&1 == 0 && ft.gen.Load() == g {
			break // no writer ran during the walk: a true miss
		}
	}
	return 0, FlowRef{}, false
}

// LookupReverse finds the flow with reverse key k and returns the
// destination of its forward key: the service IP the client addressed.
func (ft *FlowTable) LookupReverse(k *FlowKey, now int64) (svcIP netip.Addr, ok bool) {
	b := ft.bucket(k)
	for try := 0; try < lookupTries; try++ {
		g := ft.gen.Load()
		i := ft.bktR[b].Load()
		for n := 0; i != 0 && n < maxChain; n++ {
			r := &ft.recs[i-1]
			s := r.seq.Load()
			if s&1 == 0 && keyEq(&r.rev, k) && !r.revOff.Load() {
				w0, hi, lo := r.fwd[0].Load(), r.fwd[3].Load(), r.fwd[4].Load()
				if r.seq.Load() == s {
					ft.touch(r, now)
					if !r.answered.Load() {
						// Once per flow (a load, not a store, after
						// that). A writer reusing the record right now
						// may see its new flow marked: it then idles
						// like an answered one, nothing worse.
						r.answered.Store(true)
					}
					return keyAddr(w0, hi, lo), true
				}
			}
			i = r.nextR.Load()
		}
		if g&1 == 0 && ft.gen.Load() == g {
			break
		}
	}
	return netip.Addr{}, false
}

// Answered reports whether the flow with forward key k has seen a reply
// (LookupReverse found it; see TCPSynIdle), without refreshing it; ok is
// false when the table holds no such flow. The kernel tier's sweeper asks
// it about the TCP flows it executes, whose packets the workers no longer
// see.
func (ft *FlowTable) Answered(k *FlowKey) (answered, ok bool) {
	b := ft.bucket(k)
	for try := 0; try < lookupTries; try++ {
		g := ft.gen.Load()
		i := ft.bktF[b].Load()
		for n := 0; i != 0 && n < maxChain; n++ {
			r := &ft.recs[i-1]
			s := r.seq.Load()
			if s&1 == 0 && keyEq(&r.fwd, k) {
				a := r.answered.Load()
				if r.seq.Load() == s {
					return a, true
				}
			}
			i = r.nextF.Load()
		}
		if g&1 == 0 && ft.gen.Load() == g {
			break
		}
	}
	return false, false
}

func (ft *FlowTable) touch(r *flowRec, now int64) {
	if now-r.last.Load() > touchGranularity {
		r.last.Store(now)
	}
}

// lookupLocked is the authoritative forward lookup in chain b =
// bucket(k) (writers only).
func (ft *FlowTable) lookupLocked(k *FlowKey, b uint32) (uint32, bool) {
	for i := ft.bktF[b].Load(); i != 0; i = ft.recs[i-1].nextF.Load() {
		if keyEq(&ft.recs[i-1].fwd, k) {
			return i - 1, true
		}
	}
	return 0, false
}

// Insert adds a flow from port (the container whose packet opened it),
// unless one with the same forward key exists already (another worker won
// the race): then it returns that flow's instance number. To make room it
// evicts a flow (see FlowTable); ok is false when nothing can be evicted.
// A TCP flow counts as unanswered until LookupReverse finds it.
func (ft *FlowTable) Insert(fwd, rev *FlowKey, inst uint32, port PortID, now int64) (got uint32, ok bool) {
	return ft.insert(fwd, rev, inst, port, now, false, true)
}

// Adopt is Insert for a flow that was running before it was known here
// (the kernel tier's flows a previous daemon left): it counts as
// answered, so an idle TCP connection keeps TCPIdle.
func (ft *FlowTable) Adopt(fwd, rev *FlowKey, inst uint32, port PortID, now int64) (got uint32, ok bool) {
	return ft.insert(fwd, rev, inst, port, now, true, true)
}

func (ft *FlowTable) insert(fwd, rev *FlowKey, inst uint32, port PortID, now int64, answered, evict bool) (uint32, bool) {
	port = min(port, NoPort)
	bf, br := ft.bucket(fwd), ft.bucket(rev)
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if idx, found := ft.lookupLocked(fwd, bf); found {
		return ft.recs[idx].inst.Load(), true
	}
	if !ft.roomLocked(port, evict) {
		return 0, false
	}
	ft.gen.Add(1)
	defer ft.gen.Add(1)
	idx := ft.free[len(ft.free)-1]
	ft.free = ft.free[:len(ft.free)-1]
	r := &ft.recs[idx]
	s := r.seq.Load()
	r.seq.Store(s + 1)
	for j := range r.fwd {
		r.fwd[j].Store(fwd[j])
		r.rev[j].Store(rev[j])
	}
	r.inst.Store(inst)
	r.last.Store(now)
	r.used = true
	ft.disownLocked(rev, br, idx)
	r.revOff.Store(false)
	r.answered.Store(answered)
	r.bf, r.br = bf, br
	r.nextF.Store(ft.bktF[r.bf].Load())
	r.nextR.Store(ft.bktR[r.br].Load())
	r.seq.Store(s + 2)
	ft.bktF[r.bf].Store(idx + 1)
	ft.bktR[r.br].Store(idx + 1)
	ft.pushLocked(port, idx, now)
	ft.count.Add(1)
	return inst, true
}

// Rebind changes the instance of the flow found as ref (its instance
// vanished and the policy chose again) and its reverse key. It is a no-op
// if the record changed since the lookup.
func (ft *FlowTable) Rebind(ref FlowRef, rev *FlowKey, inst uint32) {
	br := ft.bucket(rev)
	ft.mu.Lock()
	defer ft.mu.Unlock()
	r := &ft.recs[ref.idx]
	if !r.used || r.seq.Load() != ref.seq {
		return
	}
	ft.gen.Add(1)
	defer ft.gen.Add(1)
	ft.unlinkLocked(ref.idx, false)
	r.seq.Store(ref.seq + 1)
	for j := range r.rev {
		r.rev[j].Store(rev[j])
	}
	r.inst.Store(inst)
	ft.disownLocked(rev, br, ref.idx)
	r.revOff.Store(false)
	r.answered.Store(false) // a reply from the new instance is yet to come
	r.br = br
	r.nextR.Store(ft.bktR[r.br].Load())
	r.seq.Store(ref.seq + 2)
	ft.bktR[r.br].Store(ref.idx + 1)
}

// Claim makes the flow found as ref the owner of its reverse key again
// (called for every packet of a flow found by Lookup). It costs one atomic
// load unless a newer use of the reverse key took it (ReleaseReverse, or
// another flow's Insert or Rebind); it is a no-op if the record changed
// since the lookup.
func (ft *FlowTable) Claim(ref FlowRef) {
	if ft.recs[ref.idx].revOff.Load() {
		ft.claim(ref) // apart, so that this check inlines into the packet path
	}
}

func (ft *FlowTable) claim(ref FlowRef) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	r := &ft.recs[ref.idx]
	if !r.used || r.seq.Load() != ref.seq || !r.revOff.Load() {
		return
	}
	var rev FlowKey
	for j := range rev {
		rev[j] = r.rev[j].Load()
	}
	ft.gen.Add(1) // a reverse lookup that misses meanwhile walks again
	defer ft.gen.Add(1)
	ft.disownLocked(&rev, r.br, ref.idx)
	r.revOff.Store(false)
}

// ReleaseReverse takes reverse key k from every flow that owns it: the
// client sent a packet on that 5-tuple straight to the instance IP, so
// replies must pass untranslated. The common cases cost one atomic load (no
// flows at all, e.g. a node with servers only) or a hash and one lock-free
// chain walk (no flow has k).
func (ft *FlowTable) ReleaseReverse(k *FlowKey) {
	if ft.count.Load() == 0 {
		return
	}
	b := ft.bucket(k)
	if !ft.ownedReverse(k, b) {
		return
	}
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.gen.Add(1)
	defer ft.gen.Add(1)
	ft.disownLocked(k, b, ^uint32(0))
}

// ownedReverse reports whether some flow owns reverse key k (in chain b).
// Like LookupReverse it may miss while a writer is active; then the next
// packet releases the key.
func (ft *FlowTable) ownedReverse(k *FlowKey, b uint32) bool {
	i := ft.bktR[b].Load()
	for n := 0; i != 0 && n < maxChain; n++ {
		r := &ft.recs[i-1]
		if keyEq(&r.rev, k) && !r.revOff.Load() {
			return true
		}
		i = r.nextR.Load()
	}
	return false
}

// disownLocked marks every record but keep whose reverse key is k (in
// chain b) as not owning it. ft.mu must be held.
func (ft *FlowTable) disownLocked(k *FlowKey, b uint32, keep uint32) {
	for i := ft.bktR[b].Load(); i != 0; i = ft.recs[i-1].nextR.Load() {
		if r := &ft.recs[i-1]; i-1 != keep && keyEq(&r.rev, k) {
			r.revOff.Store(true)
		}
	}
}

// unlinkLocked removes record idx from its reverse chain, and from its
// forward chain too when both. The record's own next pointers stay, so a
// reader standing on it continues along its old chain.
func (ft *FlowTable) unlinkLocked(idx uint32, both bool) {
	r := &ft.recs[idx]
	unlink := func(head *atomic.Uint32, next func(*flowRec) *atomic.Uint32) {
		if head.Load() == idx+1 {
			head.Store(next(r).Load())
			return
		}
		for i := head.Load(); i != 0; {
			p := &ft.recs[i-1]
			n := next(p).Load()
			if n == idx+1 {
				next(p).Store(next(r).Load())
				return
			}
			i = n
		}
	}
	unlink(&ft.bktR[r.br], func(x *flowRec) *atomic.Uint32 { return &x.nextR })
	if both {
		unlink(&ft.bktF[r.bf], func(x *flowRec) *atomic.Uint32 { return &x.nextF })
	}
}

// Unpack returns the 5-tuple of k.
func (k *FlowKey) Unpack() (proto uint8, src, dst netip.AddrPort) {
	return uint8(k[0]), netip.AddrPortFrom(keyAddr(k[0], k[1], k[2]), uint16(w0Port(k[0], 16))),
		netip.AddrPortFrom(keyAddr(k[0], k[3], k[4]), uint16(w0Port(k[0], 32)))
}

// FlowRecord is a flow as Range reports it.
type FlowRecord struct {
	Fwd, Rev FlowKey // client nsIP → service IP; instance IP → client nsIP
	Inst     uint32  // the instance number the policy chose
	Last     int64   // last use, coarse monotonic ns (Monotonic)
}

// Range calls f for every flow (under the writer lock: f must be quick and
// must not call the table) until f returns false.
func (ft *FlowTable) Range(f func(r FlowRecord) bool) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	for i := range ft.recs {
		r := &ft.recs[i]
		if !r.used {
			continue
		}
		var fr FlowRecord
		for j := range r.fwd {
			fr.Fwd[j], fr.Rev[j] = r.fwd[j].Load(), r.rev[j].Load()
		}
		fr.Inst, fr.Last = r.inst.Load(), r.last.Load()
		if !f(fr) {
			return
		}
	}
}

// Import inserts flows (a previous daemon's, Range's records saved on a
// graceful stop) as used at now and answered, keeping any flow already
// there. They belong to NoPort: the ports they came from are attached
// again only after the import, under numbers of their own. It returns how
// many it inserted; it stops when the table is full (it evicts nothing).
func (ft *FlowTable) Import(recs []FlowRecord, now int64) int {
	n := 0
	for i := range recs {
		r := &recs[i]
		got, ok := ft.insert(&r.Fwd, &r.Rev, r.Inst, NoPort, now, true, false)
		if !ok {
			break
		}
		if got == r.Inst {
			n++
		}
	}
	return n
}

// Sweep removes flows idle longer than their protocol's timeout at now
// (coarse monotonic ns, the same clock the workers pass in); for a TCP
// flow no reply was seen on, TCPSynIdle. It visits at
// most budget records (≤ 0: all), resuming where the previous call
// stopped, and takes the writer lock per chunk so inserts are not held up
// for long. It returns the number of flows removed.
func (ft *FlowTable) Sweep(now int64, budget int) int {
	if budget <= 0 || budget > len(ft.recs) {
		budget = len(ft.recs)
	}
	removed := 0
	const chunk = 4096
	for budget > 0 {
		n := min(chunk, budget)
		budget -= n
		ft.mu.Lock()
		for ; n > 0; n-- {
			idx := uint32(ft.sweep)
			ft.sweep++
			if ft.sweep == len(ft.recs) {
				ft.sweep = 0
			}
			r := &ft.recs[idx]
			if !r.used {
				continue
			}
			proto := uint8(r.fwd[0].Load())
			idle := ft.idle[proto]
			unanswered := proto == ProtoTCP && !r.answered.Load()
			if unanswered {
				idle = ft.synIdle
			}
			if now-r.last.Load() <= idle {
				continue
			}
			ft.removeLocked(idx)
			if unanswered {
				ft.expiredUnanswered.Add(1)
			}
			removed++
		}
		ft.mu.Unlock()
	}
	return removed
}
