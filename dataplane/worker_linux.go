//go:build linux

package dataplane

import (
	"fmt"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
)

const (
	batch = 64
	// crossCap is the capacity of a cross-worker ring, in packets.
	crossCap = 1024
	// slotSize is the size of one packet slot of a cross-worker ring.
	slotSize = 2048
	// maxPending bounds a socket's TX batch between two Transmit calls.
	maxPending = 4 * batch
)

// wsock is one socket as its worker sees it.
type wsock struct {
	id     int32
	s      *xsk.Socket
	port   fastpath.PortID
	uplink bool
	pend   []xsk.Desc // TX descriptors queued this round
	// inKernel is frames given to the fill ring minus frames received:
	// what the fill and RX rings hold (FillFromFree keeps it at fillTarget).
	inKernel   int
	fillTarget int
}

// xring carries packets from one worker to another: an SPSC ring of
// descriptors whose Addr is a slot in buf (a copy of the packet) and whose
// Options is the destination socket id. buf has 2×crossCap slots: the
// producer writes slot positions in [tail, head+crossCap), the consumer
// reads at most crossCap positions below head after a Dequeue, so a slot is
// never rewritten while it is being copied out.
type xring struct {
	r    *xsk.SPSC
	buf  []byte
	sent uint64 // producer: packets enqueued so far
	recv uint64 // consumer: packets dequeued so far
	pend []xsk.Desc
}

const crossSlots = 2 * crossCap

// worker owns its sockets, poller and rings outright; only its own
// goroutine (locked to one thread) touches them. Other goroutines reach it
// through ctl (control calls run between rounds) and the published counters.
type worker struct {
	e      *Engine
	idx    int
	cpu    int
	ctl    chan func()
	quit   chan struct{}
	exited chan struct{}
	poller *xsk.Poller
	wctx   *fastpath.WorkerCtx

	socks []*wsock
	byID  map[int32]*wsock
	out   []*xring // out[j]: to worker j (nil for self)
	in    []*xring // in[j]: from worker j

	descs  [batch]xsk.Desc
	frames [batch]fastpath.Frame
	verd   [batch]fastpath.Verdict
	sb     *slowBatch

	cnt [numCounters]uint64
	pub [numCounters]atomic.Uint64
}

func newWorker(e *Engine, idx, cpu int) (*worker, error) {
	w := &worker{
		e: e, idx: idx, cpu: cpu,
		ctl:    make(chan func(), 1),
		quit:   make(chan struct{}),
		exited: make(chan struct{}),
		wctx:   fastpath.NewWorkerCtx(),
		byID:   map[int32]*wsock{},
	}
	pc := e.cfg.Poller
	pc.Pending = w.pending
	p, err := xsk.NewPoller(pc)
	if err != nil {
		return nil, fmt.Errorf("worker %d: %w", idx, err)
	}
	w.poller = p
	return w, nil
}

// connect makes the cross-worker rings (called before any worker runs).
func (w *worker) connect(all []*worker) {
	w.out = make([]*xring, len(all))
	for j, o := range all {
		if o.in == nil {
			o.in = make([]*xring, len(all))
		}
		if j == w.idx {
			continue
		}
		r, _ := xsk.NewSPSC(crossCap) // a power of two: cannot fail
		x := &xring{r: r, buf: make([]byte, crossSlots*slotSize), pend: make([]xsk.Desc, 0, crossCap)}
		w.out[j] = x
		o.in[w.idx] = x
	}
}

// pending re-checks work without an fd before the poller sleeps.
func (w *worker) pending() bool {
	if len(w.ctl) > 0 {
		return true
	}
	for _, x := range w.in {
		if x != nil && x.r.Len() > 0 {
			return true
		}
	}
	return false
}

func (w *worker) addSocket(id int32, s *xsk.Socket) {
	ws := &wsock{id: id, s: s, uplink: id == uplinkID, fillTarget: w.e.cfg.RingSize}
	if !ws.uplink {
		ws.port = fastpath.PortID(id)
	}
	ws.pend = make([]xsk.Desc, 0, maxPending)
	ws.inKernel = s.FillFromFree(ws.fillTarget)
	w.socks = append(w.socks, ws)
	w.byID[id] = ws
	w.poller.Add(s.Fd())
}

func (w *worker) removeSocket(id int32) error {
	ws := w.byID[id]
	if ws == nil {
		return nil
	}
	delete(w.byID, id)
	for i, s := range w.socks {
		if s == ws {
			w.socks = append(w.socks[:i], w.socks[i+1:]...)
			break
		}
	}
	w.poller.Remove(ws.s.Fd())
	return ws.s.Close()
}

func (w *worker) run() {
	defer close(w.exited)
	// Never unlocked: the thread dies with the goroutine, affinity and all.
	runtime.LockOSThread()
	if w.cpu >= 0 {
		var set unix.CPUSet
		set.Set(w.cpu)
		_ = unix.SchedSetaffinity(0, &set) // 0: this thread
	}
	defer func() {
		for _, ws := range w.socks {
			w.poller.Remove(ws.s.Fd())
			_ = ws.s.Close()
		}
		w.socks, w.byID = nil, nil
	}()
	for {
		select {
		case f := <-w.ctl:
			f()
		case <-w.quit:
			return
		default:
		}
		did := w.round()
		if _, err := w.poller.Wait(did); err != nil {
			return
		}
	}
}

// round does one pass over everything the worker owns and reports whether
// it moved any packet.
func (w *worker) round() bool {
	did := false
	owners := *w.e.owners.Load()
	w.wctx.Now = fastpath.Monotonic()
	for _, ws := range w.socks {
		ws.s.Complete()
	}
	for j, x := range w.in {
		if x != nil && w.drainCross(j, x) {
			did = true
		}
	}
	for _, ws := range w.socks {
		n := ws.s.Receive(w.descs[:])
		if n == 0 {
			continue
		}
		did = true
		ws.inKernel -= n
		w.cnt[cRx] += uint64(n)
		w.cnt[cBatches]++
		w.process(ws, n, owners)
	}
	w.flush()
	for _, ws := range w.socks {
		if want := ws.fillTarget - ws.inKernel; want > 0 {
			ws.inKernel += ws.s.FillFromFree(want)
		}
	}
	if did {
		w.publish()
	}
	return did
}

func (w *worker) publish() {
	for i := range w.cnt {
		w.pub[i].Store(w.cnt[i])
	}
}

// process runs one received batch of ws through the processor and acts on
// the verdicts.
func (w *worker) process(ws *wsock, n int, owners []int16) {
	s := ws.s
	for i := range n {
		d := w.descs[i]
		w.frames[i] = fastpath.Frame{Buf: s.Frame(d.Addr), Off: int(d.Addr - s.FrameStart(d.Addr)), Len: int(d.Len)}
	}
	if ws.uplink {
		w.e.proc.Ingress(w.wctx, w.frames[:n], w.verd[:n])
	} else {
		w.e.proc.Egress(w.wctx, ws.port, w.frames[:n], w.verd[:n])
	}
	for i := range n {
		v := &w.verd[i]
		base := s.FrameStart(w.descs[i].Addr)
		switch v.Action {
		case fastpath.ActTxPort:
			w.send(ws, base, w.frames[i].Buf, v, int32(v.Port), owners)
		case fastpath.ActTxUplink:
			w.send(ws, base, w.frames[i].Buf, v, uplinkID, owners)
		case fastpath.ActSlowPath:
			w.toSlow(w.frames[i].Buf[v.Off:v.Off+v.Len], v.Reason)
			s.FreeFrame(base)
		case fastpath.ActPass:
			// Steered by XDP but not ours: the frame is already out of
			// the kernel's stack, so it is dropped and counted.
			w.cnt[cPassDropped]++
			s.FreeFrame(base)
		default:
			w.cnt[cDropped]++
			s.FreeFrame(base)
		}
	}
}

// send hands the verdict's bytes to socket dst: the same frame when dst is
// the socket it came from, a copy into a frame of dst's UMEM when this
// worker owns dst, else a copy into the ring to dst's worker.
func (w *worker) send(src *wsock, base uint64, buf []byte, v *fastpath.Verdict, dst int32, owners []int16) {
	pkt := buf[v.Off : v.Off+v.Len]
	o := int(owners[dst])
	switch {
	case o < 0:
		w.cnt[cCrossNoSocket]++
	case o == w.idx:
		ds := w.byID[dst]
		if ds == nil {
			w.cnt[cCrossNoSocket]++
			break
		}
		if ds == src {
			if len(ds.pend) == cap(ds.pend) {
				w.transmit(ds)
			}
			ds.pend = append(ds.pend, xsk.Desc{Addr: base + uint64(v.Off), Len: uint32(v.Len)})
			return // the frame now belongs to the TX batch
		}
		w.copyTo(ds, pkt)
	default:
		x := w.out[o]
		if len(x.pend) >= x.r.Cap()-x.r.Len() || len(pkt) > slotSize {
			w.cnt[cCrossFull]++
			break
		}
		slot := (x.sent + uint64(len(x.pend))) % crossSlots
		copy(x.buf[slot*slotSize:], pkt)
		x.pend = append(x.pend, xsk.Desc{Addr: slot, Len: uint32(len(pkt)), Options: uint32(dst)})
		w.cnt[cCrossOut]++
	}
	src.s.FreeFrame(base)
}

// copyTo copies pkt into a fresh frame of ds and queues it for TX.
func (w *worker) copyTo(ds *wsock, pkt []byte) {
	if len(ds.pend) == cap(ds.pend) {
		w.transmit(ds)
	}
	addr, ok := ds.s.AllocFrame()
	if !ok {
		ds.s.Complete()
		if addr, ok = ds.s.AllocFrame(); !ok {
			w.cnt[cTxNoFrame]++
			return
		}
	}
	// Start after the kernel's headroom, like a received packet.
	addr += xsk.KernelHeadroom
	if len(pkt) > ds.s.FrameSize()-xsk.KernelHeadroom {
		ds.s.FreeFrame(addr)
		w.cnt[cTxNoFrame]++
		return
	}
	copy(ds.s.Frame(addr)[xsk.KernelHeadroom:], pkt)
	ds.pend = append(ds.pend, xsk.Desc{Addr: addr, Len: uint32(len(pkt))})
}

// transmit hands ws's pending batch to its TX ring. flush calls it once per
// round; a batch that fills up mid-round (a full RX batch plus packets from
// other workers, all for one port) is transmitted early rather than
// dropped. Only what the TX ring itself cannot take is dropped and counted.
func (w *worker) transmit(ws *wsock) {
	ws.s.Complete()
	n := ws.s.Transmit(ws.pend)
	w.cnt[cTx] += uint64(n)
	for _, d := range ws.pend[n:] {
		ws.s.FreeFrame(d.Addr)
		w.cnt[cTxRingFull]++
	}
	ws.pend = ws.pend[:0]
}

// drainCross takes packets other worker j handed to this worker.
func (w *worker) drainCross(j int, x *xring) bool {
	got := false
	for {
		n := x.r.Dequeue(w.descs[:])
		if n == 0 {
			return got
		}
		got = true
		x.recv += uint64(n)
		w.cnt[cCrossIn] += uint64(n)
		for _, d := range w.descs[:n] {
			ds := w.byID[int32(d.Options)]
			if ds == nil {
				w.cnt[cCrossNoSocket]++
				continue
			}
			off := d.Addr * slotSize
			w.copyTo(ds, x.buf[off:off+uint64(d.Len)])
		}
		if n < batch {
			return got
		}
	}
}

// flush transmits every socket's batch (one Transmit, so at most one kick,
// per socket per round), publishes the cross-worker batches and wakes the
// workers that got some, and kicks sockets with frames still in TX.
func (w *worker) flush() {
	for _, ws := range w.socks {
		if len(ws.pend) == 0 {
			ws.s.Kick() // no syscall unless the TX ring still holds frames
			continue
		}
		w.transmit(ws)
	}
	for j, x := range w.out {
		if x == nil || len(x.pend) == 0 {
			continue
		}
		n := x.r.Enqueue(x.pend)
		x.sent += uint64(n)
		w.cnt[cCrossFull] += uint64(len(x.pend) - n)
		x.pend = x.pend[:0]
		_ = w.e.workers[j].poller.Notify()
	}
	if w.sb != nil && w.sb.n > 0 {
		w.e.slow.submit(w, w.sb)
		w.sb = nil
	}
}
