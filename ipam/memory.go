package ipam

import (
	"container/list"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// MemoryAllocator is an Allocator held in process memory, with the same
// semantics as RedisAllocator (it is the model the Redis scripts follow
// step by step). It is for unit tests and single-process use; the clock is
// injected so tests can move time.
type MemoryAllocator struct {
	pl  plan
	now func() time.Time

	mu      sync.Mutex // guards everything below
	subnets *memPool
	v4      *memPool
	v6      [MaxKinds]*memPool
	kinds   map[string]Kind // owner → kind of the pair it holds
}

var _ Allocator = (*MemoryAllocator)(nil)

// NewMemory returns an empty in-memory allocator for cfg. now is the clock
// used for quarantine (time.Now when nil).
func NewMemory(cfg Config, now func() time.Time) (*MemoryAllocator, error) {
	return newMemory(cfg, now, V6IndexCap)
}

// newMemory lets tests shrink the IPv6 index space to force exhaustion.
func newMemory(cfg Config, now func() time.Time, v6Cap uint64) (*MemoryAllocator, error) {
	pl, err := newPlan(cfg, v6Cap)
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	m := &MemoryAllocator{
		pl:      pl,
		now:     now,
		subnets: newMemPool(0, pl.subnets-1, pl.cfg.Quarantine),
		v4:      newMemPool(pl.v4Lo, pl.v4Hi, pl.cfg.Quarantine),
		kinds:   map[string]Kind{},
	}
	if pl.subnets == 0 {
		m.subnets = newMemPool(1, 0, pl.cfg.Quarantine) // empty
	}
	for k := range m.v6 {
		m.v6[k] = newMemPool(pl.v6Lo, pl.v6Hi, pl.cfg.Quarantine)
	}
	return m, nil
}

// AllocSubnet implements Allocator.
func (m *MemoryAllocator) AllocSubnet(_ context.Context, nodeID string) (SubnetPair, error) {
	if nodeID == "" {
		return SubnetPair{}, fmt.Errorf("alloc subnet: empty node id: %w", ErrBadRequest)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	i, err := m.subnets.alloc(nodeID, 0, false, m.now(), nil)
	if err != nil {
		return SubnetPair{}, fmt.Errorf("alloc subnet %s: %w", nodeID, err)
	}
	return m.pl.subnetAt(i), nil
}

// ReleaseSubnet implements Allocator.
func (m *MemoryAllocator) ReleaseSubnet(_ context.Context, nodeID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.subnets.release(nodeID, m.now()) {
		return fmt.Errorf("release subnet %s: %w", nodeID, ErrNotFound)
	}
	return nil
}

// LookupSubnet implements Allocator.
func (m *MemoryAllocator) LookupSubnet(_ context.Context, nodeID string) (SubnetPair, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i, ok := m.subnets.own[nodeID]
	if !ok {
		return SubnetPair{}, fmt.Errorf("lookup subnet %s: %w", nodeID, ErrNotFound)
	}
	return m.pl.subnetAt(i), nil
}

// Alloc implements Allocator.
func (m *MemoryAllocator) Alloc(_ context.Context, reqs []Request) ([]Pair, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	type custom struct {
		i4, i6     uint64
		has4, has6 bool
	}
	cs := make([]custom, len(reqs))
	for n, r := range reqs {
		if err := checkRequest(r); err != nil {
			return nil, fmt.Errorf("alloc %s: %w", r.Owner, err)
		}
		c := &cs[n]
		var err error
		if c.i4, c.has4, c.i6, c.has6, err = m.pl.customIndexes(r); err != nil {
			return nil, fmt.Errorf("alloc %s: %w", r.Owner, err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var u undoLog
	out := make([]Pair, len(reqs))
	for n, r := range reqs {
		if k, ok := m.kinds[r.Owner]; ok && k != r.Kind {
			u.rollback()
			return nil, fmt.Errorf("alloc %s: holds a kind %d pair, asked for kind %d: %w", r.Owner, k, r.Kind, ErrConflict)
		}
		i4, err := m.v4.alloc(r.Owner, cs[n].i4, cs[n].has4, now, &u)
		if err != nil {
			u.rollback()
			return nil, fmt.Errorf("alloc %s v4: %w", r.Owner, err)
		}
		i6, err := m.v6[r.Kind].alloc(r.Owner, cs[n].i6, cs[n].has6, now, &u)
		if err != nil {
			u.rollback()
			return nil, fmt.Errorf("alloc %s v6: %w", r.Owner, err)
		}
		if _, ok := m.kinds[r.Owner]; !ok {
			m.kinds[r.Owner] = r.Kind
			owner := r.Owner
			u.push(func() { delete(m.kinds, owner) })
		}
		out[n] = Pair{V4: m.pl.v4At(i4), V6: m.pl.v6At(r.Kind, i6)}
	}
	return out, nil
}

// Release implements Allocator.
func (m *MemoryAllocator) Release(_ context.Context, owners []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for _, o := range owners {
		k, ok := m.kinds[o]
		if !ok {
			continue
		}
		m.v4.release(o, now)
		m.v6[k].release(o, now)
		delete(m.kinds, o)
	}
	return nil
}

// Owner implements Allocator.
func (m *MemoryAllocator) Owner(_ context.Context, addr netip.Addr) (string, error) {
	pool, i, err := m.poolOf(addr)
	if err != nil {
		return "", fmt.Errorf("owner %s: %w", addr, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := pool.idx[i]
	if !ok {
		return "", fmt.Errorf("owner %s: %w", addr, ErrNotFound)
	}
	return o, nil
}

func (m *MemoryAllocator) poolOf(addr netip.Addr) (*memPool, uint64, error) {
	if addr.Is4() {
		i, err := m.pl.v4Index(addr)
		return m.v4, i, err
	}
	k, i, err := m.pl.v6Index(addr)
	if err != nil {
		return nil, 0, err
	}
	return m.v6[k], i, nil
}

// Peek implements Allocator.
func (m *MemoryAllocator) Peek(_ context.Context, kind Kind, family int) (netip.Addr, error) {
	if kind >= MaxKinds {
		return netip.Addr{}, fmt.Errorf("peek: kind %d: %w", kind, ErrBadRequest)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch family {
	case 4:
		i, err := m.v4.peek(m.now())
		if err != nil {
			return netip.Addr{}, fmt.Errorf("peek v4: %w", err)
		}
		return m.pl.v4At(i), nil
	case 6:
		i, err := m.v6[kind].peek(m.now())
		if err != nil {
			return netip.Addr{}, fmt.Errorf("peek kind %d v6: %w", kind, err)
		}
		return m.pl.v6At(kind, i), nil
	}
	return netip.Addr{}, fmt.Errorf("peek: family %d: %w", family, ErrBadRequest)
}

// undoLog records the inverse of every change of an Alloc batch so a failed
// batch leaves nothing behind. The Redis scripts do the same.
type undoLog []func()

func (u *undoLog) push(f func()) {
	if u != nil {
		*u = append(*u, f)
	}
}

func (u *undoLog) rollback() {
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i]()
	}
	*u = nil
}

// memPool is one index pool, the same state the Redis scripts keep:
//
//	next   first index never handed out (indexes below it are all used,
//	       indexes above it may be taken by custom requests)
//	idx    index → owner, own: owner → index (allocated)
//	rel    released indexes, least recently released first
//	last   owner → the index it released last, while that index is free
type memPool struct {
	lo, hi     uint64
	quarantine time.Duration // negative: none
	next       uint64
	idx        map[uint64]string
	own        map[string]uint64
	rel        *list.List // of *released
	relAt      map[uint64]*list.Element
	last       map[string]uint64
}

type released struct {
	i     uint64
	at    time.Time
	owner string
}

func newMemPool(lo, hi uint64, q time.Duration) *memPool {
	return &memPool{
		lo: lo, hi: hi, quarantine: q, next: lo,
		idx:   map[uint64]string{},
		own:   map[string]uint64{},
		rel:   list.New(),
		relAt: map[uint64]*list.Element{},
		last:  map[string]uint64{},
	}
}

func (p *memPool) freeAt(r *released, now time.Time) bool {
	return p.quarantine < 0 || now.Sub(r.at) >= p.quarantine
}

func (p *memPool) assign(i uint64, o string, u *undoLog) {
	p.idx[i], p.own[o] = o, i
	u.push(func() { delete(p.idx, i); delete(p.own, o) })
}

// unrelease takes released index i out of the released set.
func (p *memPool) unrelease(i uint64, u *undoLog) {
	e := p.relAt[i]
	r := e.Value.(*released)
	// Undo restores the position: before the element that followed, or at
	// the back. Later changes are undone first, so that element is back in
	// the list by then, though maybe as a new *list.Element: find it by
	// index.
	var markIdx uint64
	hasMark := false
	if n := e.Next(); n != nil {
		markIdx, hasMark = n.Value.(*released).i, true
	}
	p.rel.Remove(e)
	delete(p.relAt, i)
	lastOK := false
	if l, ok := p.last[r.owner]; ok && l == i {
		delete(p.last, r.owner)
		lastOK = true
	}
	u.push(func() {
		var ne *list.Element
		if hasMark {
			ne = p.rel.InsertBefore(r, p.relAt[markIdx])
		} else {
			ne = p.rel.PushBack(r)
		}
		p.relAt[i] = ne
		if lastOK {
			p.last[r.owner] = i
		}
	})
}

func (p *memPool) nextUnused() uint64 {
	n := p.next
	for n <= p.hi {
		_, a := p.idx[n]
		_, r := p.relAt[n]
		if !a && !r {
			break
		}
		n++
	}
	return n
}

// alloc gives owner o an index: the one it holds; custom index c when
// hasC; the one it released last if still free; the lowest never-used; the
// least recently released past quarantine.
func (p *memPool) alloc(o string, c uint64, hasC bool, now time.Time, u *undoLog) (uint64, error) {
	if cur, ok := p.own[o]; ok {
		if hasC && c != cur {
			return 0, fmt.Errorf("owner holds index %d, asked for %d: %w", cur, c, ErrConflict)
		}
		return cur, nil
	}
	if hasC {
		if _, ok := p.idx[c]; ok {
			return 0, ErrConflict
		}
		if e, ok := p.relAt[c]; ok {
			r := e.Value.(*released)
			if r.owner != o && !p.freeAt(r, now) {
				return 0, fmt.Errorf("quarantined: %w", ErrConflict)
			}
			p.unrelease(c, u)
		}
		p.assign(c, o, u)
		return c, nil
	}
	if l, ok := p.last[o]; ok {
		if e, ok := p.relAt[l]; ok && e.Value.(*released).owner == o {
			p.unrelease(l, u)
			p.assign(l, o, u)
			return l, nil
		}
	}
	if n := p.nextUnused(); n <= p.hi {
		old := p.next
		p.next = n + 1
		u.push(func() { p.next = old })
		p.assign(n, o, u)
		return n, nil
	}
	if e := p.rel.Front(); e != nil {
		r := e.Value.(*released)
		if p.freeAt(r, now) {
			p.unrelease(r.i, u)
			p.assign(r.i, o, u)
			return r.i, nil
		}
	}
	return 0, ErrExhausted
}

func (p *memPool) peek(now time.Time) (uint64, error) {
	if n := p.nextUnused(); n <= p.hi {
		return n, nil
	}
	if e := p.rel.Front(); e != nil && p.freeAt(e.Value.(*released), now) {
		return e.Value.(*released).i, nil
	}
	return 0, ErrExhausted
}

// release frees what o holds; false if it holds nothing. Releases are not
// undone (no batch fails half way through releasing).
func (p *memPool) release(o string, now time.Time) bool {
	i, ok := p.own[o]
	if !ok {
		return false
	}
	delete(p.own, o)
	delete(p.idx, i)
	p.relAt[i] = p.rel.PushBack(&released{i: i, at: now, owner: o})
	p.last[o] = i
	return true
}
