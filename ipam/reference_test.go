package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// refAlloc is the slow, obviously-correct reference: every pool is a plain
// slice of entries scanned linearly, every address is computed by stepping
// Addr.Next from the pool's start, and a failed batch restores a deep copy
// of the whole state. It implements Allocator, returning bare sentinels.
type refAlloc struct {
	cfg   Config
	v6Cap uint64
	now   func() time.Time
	st    refState
}

type refState struct {
	subnets refPool
	v4      refPool
	v6      [MaxKinds]refPool
	kinds   []refKind
}

type refKind struct {
	owner string
	kind  Kind
}

type refPool struct {
	first   uint64 // index of entries[0]
	entries []refEntry
	history []refEvent // every release, in order
	seq     int
}

const (
	refNever = iota
	refHeld
	refReleased
)

type refEntry struct {
	state  int
	owner  string // holder, or the owner that released it
	relSeq int
	relAt  time.Time
}

type refEvent struct {
	index uint64
	owner string
	seq   int
}

func newRef(cfg Config, v6Cap uint64, now func() time.Time) *refAlloc {
	cfg = cfg.WithDefaults()
	r := &refAlloc{cfg: cfg, v6Cap: v6Cap, now: now}
	r.st.subnets = refPool{first: 0, entries: make([]refEntry, cfg.WorkerCount)}
	size := 1 << (32 - cfg.ServiceV4.Bits())
	r.st.v4 = refPool{first: 1, entries: make([]refEntry, size-2)}
	for k := range r.st.v6 {
		r.st.v6[k] = refPool{first: 1, entries: make([]refEntry, v6Cap-1)}
	}
	return r
}

func (s refState) clone() refState {
	c := s
	cp := func(p refPool) refPool {
		p.entries = slices.Clone(p.entries)
		p.history = slices.Clone(p.history)
		return p
	}
	c.subnets = cp(s.subnets)
	c.v4 = cp(s.v4)
	for k := range s.v6 {
		c.v6[k] = cp(s.v6[k])
	}
	c.kinds = slices.Clone(s.kinds)
	return c
}

func (r *refAlloc) passed(e refEntry, now time.Time) bool {
	q := r.cfg.Quarantine
	return q < 0 || !now.Before(e.relAt.Add(q))
}

// alloc follows the documented order literally.
func (r *refAlloc) alloc(p *refPool, owner string, custom *uint64, now time.Time) (uint64, error) {
	for n, e := range p.entries {
		if e.state == refHeld && e.owner == owner {
			i := p.first + uint64(n)
			if custom != nil && *custom != i {
				return 0, ErrConflict
			}
			return i, nil
		}
	}
	take := func(n int) uint64 {
		p.entries[n] = refEntry{state: refHeld, owner: owner}
		return p.first + uint64(n)
	}
	if custom != nil {
		n := int(*custom - p.first)
		e := p.entries[n]
		switch {
		case e.state == refHeld:
			return 0, ErrConflict
		case e.state == refReleased && e.owner != owner && !r.passed(e, now):
			return 0, ErrConflict
		}
		return take(n), nil
	}
	// The owner's most recent release, if that index is still free since.
	for h := len(p.history) - 1; h >= 0; h-- {
		ev := p.history[h]
		if ev.owner != owner {
			continue
		}
		n := int(ev.index - p.first)
		if e := p.entries[n]; e.state == refReleased && e.relSeq == ev.seq {
			return take(n), nil
		}
		break
	}
	for n, e := range p.entries {
		if e.state == refNever {
			return take(n), nil
		}
	}
	best := -1
	for n, e := range p.entries {
		if e.state == refReleased && r.passed(e, now) && (best < 0 || e.relSeq < p.entries[best].relSeq) {
			best = n
		}
	}
	if best >= 0 {
		return take(best), nil
	}
	return 0, ErrExhausted
}

func (r *refAlloc) peek(p *refPool, now time.Time) (uint64, error) {
	for n, e := range p.entries {
		if e.state == refNever {
			return p.first + uint64(n), nil
		}
	}
	best := -1
	for n, e := range p.entries {
		if e.state == refReleased && r.passed(e, now) && (best < 0 || e.relSeq < p.entries[best].relSeq) {
			best = n
		}
	}
	if best >= 0 {
		return p.first + uint64(best), nil
	}
	return 0, ErrExhausted
}

func (r *refAlloc) release(p *refPool, owner string, now time.Time) bool {
	for n, e := range p.entries {
		if e.state == refHeld && e.owner == owner {
			p.seq++
			p.entries[n] = refEntry{state: refReleased, owner: owner, relSeq: p.seq, relAt: now}
			p.history = append(p.history, refEvent{index: p.first + uint64(n), owner: owner, seq: p.seq})
			return true
		}
	}
	return false
}

func (r *refAlloc) held(p *refPool, owner string) (uint64, bool) {
	for n, e := range p.entries {
		if e.state == refHeld && e.owner == owner {
			return p.first + uint64(n), true
		}
	}
	return 0, false
}

// step returns a advanced by n addresses, one Next at a time.
func step(a netip.Addr, n uint64) netip.Addr {
	for range n {
		a = a.Next()
	}
	return a
}

func (r *refAlloc) subnet(i uint64) SubnetPair {
	v4 := r.cfg.WorkerV4First.Addr()
	v6 := r.cfg.WorkerV6First.Addr()
	return SubnetPair{
		V4: netip.PrefixFrom(step(v4, 64*i), 26),
		V6: netip.PrefixFrom(step(v6, 256*i), 120),
	}
}

func (r *refAlloc) kindBase(k Kind) netip.Addr {
	b := r.cfg.ServiceV6Base.Addr().StringExpanded() // "fdff:0000:…"
	return netip.MustParseAddr(fmt.Sprintf("%s:%x::", b[:4], int(k)*0x1000))
}

func (r *refAlloc) v4(i uint64) netip.Addr { return step(r.cfg.ServiceV4.Addr(), i) }

func (r *refAlloc) v6(k Kind, i uint64) netip.Addr { return step(r.kindBase(k), i) }

// v4Index and v6Index search the pools address by address.
func (r *refAlloc) v4Index(a netip.Addr) (uint64, error) {
	if !a.Is4() {
		return 0, ErrBadRequest
	}
	for i := range uint64(len(r.st.v4.entries)) {
		if r.v4(i+1) == a {
			return i + 1, nil
		}
	}
	return 0, ErrOutOfPool
}

func (r *refAlloc) v6Index(k Kind, a netip.Addr) (uint64, error) {
	if !a.Is6() || a.Is4In6() {
		return 0, ErrBadRequest
	}
	p := netip.PrefixFrom(r.kindBase(k), 21)
	if !p.Contains(a) {
		return 0, ErrOutOfPool
	}
	// Pools in these tests are tiny; a /21 is not: compare the low 8 bytes.
	x, y := a.As16(), p.Addr().As16()
	if [8]byte(x[:8]) != [8]byte(y[:8]) {
		return 0, ErrOutOfPool
	}
	for i := uint64(1); i < r.v6Cap; i++ {
		if r.v6(k, i) == a {
			return i, nil
		}
	}
	return 0, ErrOutOfPool
}

func (r *refAlloc) AllocSubnet(_ context.Context, node string) (SubnetPair, error) {
	if node == "" {
		return SubnetPair{}, ErrBadRequest
	}
	i, err := r.alloc(&r.st.subnets, node, nil, r.now())
	if err != nil {
		return SubnetPair{}, err
	}
	return r.subnet(i), nil
}

func (r *refAlloc) ReleaseSubnet(_ context.Context, node string) error {
	if !r.release(&r.st.subnets, node, r.now()) {
		return ErrNotFound
	}
	return nil
}

func (r *refAlloc) LookupSubnet(_ context.Context, node string) (SubnetPair, error) {
	i, ok := r.held(&r.st.subnets, node)
	if !ok {
		return SubnetPair{}, ErrNotFound
	}
	return r.subnet(i), nil
}

func (r *refAlloc) Alloc(_ context.Context, reqs []Request) ([]Pair, error) {
	type idx struct{ c4, c6 *uint64 }
	cs := make([]idx, len(reqs))
	for n, q := range reqs {
		if q.Owner == "" || q.Kind >= MaxKinds {
			return nil, ErrBadRequest
		}
		if q.Custom4.IsValid() {
			i, err := r.v4Index(q.Custom4)
			if err != nil {
				return nil, err
			}
			cs[n].c4 = &i
		}
		if q.Custom6.IsValid() {
			i, err := r.v6Index(q.Kind, q.Custom6)
			if err != nil {
				return nil, err
			}
			cs[n].c6 = &i
		}
	}
	saved := r.st.clone()
	now := r.now()
	var out []Pair
	for n, q := range reqs {
		held := -1
		for j, k := range r.st.kinds {
			if k.owner == q.Owner {
				held = j
			}
		}
		if held >= 0 && r.st.kinds[held].kind != q.Kind {
			r.st = saved
			return nil, ErrConflict
		}
		i4, err := r.alloc(&r.st.v4, q.Owner, cs[n].c4, now)
		if err != nil {
			r.st = saved
			return nil, err
		}
		i6, err := r.alloc(&r.st.v6[q.Kind], q.Owner, cs[n].c6, now)
		if err != nil {
			r.st = saved
			return nil, err
		}
		if held < 0 {
			r.st.kinds = append(r.st.kinds, refKind{q.Owner, q.Kind})
		}
		out = append(out, Pair{V4: r.v4(i4), V6: r.v6(q.Kind, i6)})
	}
	return out, nil
}

func (r *refAlloc) Release(_ context.Context, owners []string) error {
	now := r.now()
	for _, o := range owners {
		for j, k := range r.st.kinds {
			if k.owner == o {
				r.release(&r.st.v4, o, now)
				r.release(&r.st.v6[k.kind], o, now)
				r.st.kinds = slices.Delete(r.st.kinds, j, j+1)
				break
			}
		}
	}
	return nil
}

func (r *refAlloc) Owner(_ context.Context, a netip.Addr) (string, error) {
	var p *refPool
	var i uint64
	var err error
	if a.Is4() {
		p = &r.st.v4
		i, err = r.v4Index(a)
	} else {
		err = ErrOutOfPool
		for k := range Kind(MaxKinds) {
			if netip.PrefixFrom(r.kindBase(k), 21).Contains(a) {
				p = &r.st.v6[k]
				i, err = r.v6Index(k, a)
			}
		}
	}
	if err != nil {
		return "", err
	}
	e := p.entries[i-p.first]
	if e.state != refHeld {
		return "", ErrNotFound
	}
	return e.owner, nil
}

func (r *refAlloc) Peek(_ context.Context, k Kind, family int) (netip.Addr, error) {
	if k >= MaxKinds {
		return netip.Addr{}, ErrBadRequest
	}
	switch family {
	case 4:
		i, err := r.peek(&r.st.v4, r.now())
		if err != nil {
			return netip.Addr{}, err
		}
		return r.v4(i), nil
	case 6:
		i, err := r.peek(&r.st.v6[k], r.now())
		if err != nil {
			return netip.Addr{}, err
		}
		return r.v6(k, i), nil
	}
	return netip.Addr{}, ErrBadRequest
}
