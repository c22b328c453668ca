package fastpath

// Per-port bounds and eviction. Each port's flows sit in a binary heap
// (ft.heaps[port]) ordered by the last use the writer knew; readers refresh
// a record's time without the lock, so the heap is fixed lazily when a
// flow must be evicted. Everything here runs with ft.mu held.

// roomLocked makes sure a new flow of port has a free record: a port at
// its bound gives up its least recently used flow; a full table takes the
// asker's least recently used flow, or, when the asker holds none, the
// least recently used flow of the port holding the most (NoPort's
// included). Without evict it only reports whether there is room. ft.mu
// held.
func (ft *FlowTable) roomLocked(port PortID, evict bool) bool {
	n := len(ft.heaps[port])
	if port != NoPort && n >= ft.perPort {
		if !evict {
			return false
		}
		ft.evictLocked(port)
		ft.evictedQuota.Add(1)
		return true
	}
	if len(ft.free) > 0 {
		return true
	}
	if !evict {
		return false
	}
	victim := port
	if n == 0 {
		victim = ft.largestLocked()
	}
	if len(ft.heaps[victim]) == 0 {
		return false // not with a full table of at least one record
	}
	ft.evictLocked(victim)
	ft.evictedFull.Add(1)
	return true
}

// largestLocked returns the port holding the most flows (the first of
// equals). ft.mu held; it runs only when the table is full and the asker
// holds nothing, so a scan of the ports is fine.
func (ft *FlowTable) largestLocked() PortID {
	best := PortID(0)
	for p := range ft.heaps {
		if len(ft.heaps[p]) > len(ft.heaps[best]) {
			best = PortID(p)
		}
	}
	return best
}

// evictLocked removes port's least recently used flow (it holds one). A
// root whose last use moved on since the heap placed it is placed again
// first; after as many steps as the port has flows (readers refreshing
// roots all along) the root goes as it is. ft.mu held.
func (ft *FlowTable) evictLocked(port PortID) {
	h := ft.heaps[port]
	for steps := len(h); ; steps-- {
		idx := h[0]
		o := &ft.own[idx]
		if last := ft.recs[idx].last.Load(); last != o.key && steps > 0 {
			o.key = last // later (or, with two workers' clocks, barely earlier: still the root)
			ft.downLocked(port, 0)
			continue
		}
		ft.removeLocked(idx)
		return
	}
}

// removeLocked unlinks record idx from its chains and its port's heap and
// frees it. The record's next pointers stay, so a reader standing on it
// continues along its old chains. ft.mu held.
func (ft *FlowTable) removeLocked(idx uint32) {
	r := &ft.recs[idx]
	ft.gen.Add(1)
	ft.unlinkLocked(idx, true)
	s := r.seq.Load()
	r.seq.Store(s + 1)
	for j := range r.fwd {
		r.fwd[j].Store(0)
		r.rev[j].Store(0)
	}
	r.seq.Store(s + 2)
	r.used = false
	ft.gen.Add(1)
	ft.heapRemoveLocked(idx)
	ft.free = append(ft.free, idx) // within its capacity: never allocates
	ft.count.Add(-1)
}

// The heaps: standard binary min-heaps of record indexes with each
// record's position kept in own.pos. A port's heap is allocated at its
// first flow, PerPort deep (NoPort's grows as Import fills it), so a
// packet's insert or eviction never allocates after that.

func (ft *FlowTable) lessLocked(a, b uint32) bool {
	oa, ob := &ft.own[a], &ft.own[b]
	return oa.key < ob.key || oa.key == ob.key && oa.born < ob.born
}

func (ft *FlowTable) pushLocked(port PortID, idx uint32, now int64) {
	h := ft.heaps[port]
	if h == nil {
		h = make([]uint32, 0, ft.perPort)
	}
	ft.born++
	ft.own[idx] = flowOwn{key: now, born: ft.born, pos: int32(len(h)), port: port}
	ft.heaps[port] = append(h, idx)
	ft.upLocked(port, len(h))
}

func (ft *FlowTable) heapRemoveLocked(idx uint32) {
	o := &ft.own[idx]
	port, i := o.port, int(o.pos)
	h := ft.heaps[port]
	last := len(h) - 1
	if i != last {
		h[i] = h[last]
		ft.own[h[i]].pos = int32(i)
	}
	ft.heaps[port] = h[:last]
	if i != last && !ft.downLocked(port, i) {
		ft.upLocked(port, i)
	}
}

func (ft *FlowTable) swapLocked(h []uint32, i, j int) {
	h[i], h[j] = h[j], h[i]
	ft.own[h[i]].pos = int32(i)
	ft.own[h[j]].pos = int32(j)
}

func (ft *FlowTable) upLocked(port PortID, i int) {
	h := ft.heaps[port]
	for i > 0 {
		p := (i - 1) / 2
		if !ft.lessLocked(h[i], h[p]) {
			return
		}
		ft.swapLocked(h, i, p)
		i = p
	}
}

// downLocked moves entry i down to its place and reports whether it moved.
func (ft *FlowTable) downLocked(port PortID, i int) bool {
	h := ft.heaps[port]
	start := i
	for {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if c+1 < len(h) && ft.lessLocked(h[c+1], h[c]) {
			c++
		}
		if !ft.lessLocked(h[c], h[i]) {
			break
		}
		ft.swapLocked(h, i, c)
		i = c
	}
	return i > start
}
