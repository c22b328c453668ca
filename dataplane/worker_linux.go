//go:build linux

package dataplane

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/bpfprog"
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
	punt   bool       // the worker's punt1 queue (kernel tier)
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
	// next is the index of the first frame of the batch in process that
	// is still the worker's (not yet freed or queued for TX): what a
	// recovered panic gives back to the socket.
	next int

	// Panic log rate limit (worker goroutine only).
	panicLogAt int64  // fastpath.Monotonic of the last panic log line
	panicQuiet uint64 // panics not logged since then

	cnt [numCounters]uint64
	pub [numCounters]atomic.Uint64

	// Kernel tier (worker goroutine only): the punt socket, scratch
	// decodes, the round's decisions and the slots not opened yet.
	punt   *wsock
	tp, tq fastpath.Parsed
	cands  []tierCand
	tpend  map[bpfprog.TierKey]*tierPend
}

func newWorker(e *Engine, idx, cpu int) (*worker, error) {
	w := &worker{
		e: e, idx: idx, cpu: cpu,
		ctl:    make(chan func(), 1),
		quit:   make(chan struct{}),
		exited: make(chan struct{}),
		wctx:   fastpath.NewWorkerCtx(),
		byID:   map[int32]*wsock{},
		cands:  make([]tierCand, 0, batch),
		tpend:  map[bpfprog.TierKey]*tierPend{},
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
	ws := &wsock{id: id, s: s, uplink: id >= uplinkID && id < puntID, punt: id >= puntID, fillTarget: w.e.cfg.RingSize}
	if id < uplinkID {
		ws.port = fastpath.PortID(id)
	}
	if ws.punt {
		w.punt = ws
	}
	ws.pend = make([]xsk.Desc, 0, maxPending)
	ws.inKernel = s.FillFromFree(ws.fillTarget)
	w.socks = append(w.socks, ws)
	w.byID[id] = ws
	w.poller.Add(s.Fd())
	w.e.nSockets.Add(1)
}

// removeSocket closes socket s if this worker still has it. It goes by the
// socket, not its id: a close that runs late (see Engine.closeSocket) must
// not take a newer socket that reuses the id.
func (w *worker) removeSocket(s *xsk.Socket) error {
	i := slices.IndexFunc(w.socks, func(ws *wsock) bool { return ws.s == s })
	if i < 0 {
		return nil
	}
	ws := w.socks[i]
	w.socks = slices.Delete(w.socks, i, i+1)
	if w.punt == ws {
		w.punt = nil
	}
	if w.byID[ws.id] == ws {
		delete(w.byID, ws.id)
	}
	w.poller.Remove(s.Fd())
	w.e.nSockets.Add(-1)
	return s.Close()
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
			w.e.nSockets.Add(-1)
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
		did := w.safeRound()
		if _, err := w.poller.Wait(did); err != nil {
			return
		}
	}
}

// safeRound is round behind a last-resort recover. Panics in a socket's
// batch are caught closer, by processBatch, which gives the batch's frames
// back; this one catches the rest (completions, the cross-worker rings,
// flush), where the worker cannot tell which frames it still held, so a
// panic here may leak frames or leave a TX batch half sent. Both beat a
// dead daemon. One defer per round; the round costs microseconds.
func (w *worker) safeRound() (did bool) {
	defer func() {
		if r := recover(); r != nil {
			w.cnt[cPanics]++
			w.publish()
			w.logPanic(r, "round", -1, 0)
			// Not true: a panic that recurs every round must not turn
			// the worker into a busy loop. poll(2) still returns at once
			// for sockets with work, and Pending covers the rest.
			did = false
		}
	}()
	return w.round()
}

// logPanic logs a recovered panic through slog, at most once a second per
// worker (a poisoned packet can arrive in every batch), with the stack the
// first time in the engine's life. Runs on the worker's thread; the log
// write blocks it, which is why it is rate-limited.
func (w *worker) logPanic(r any, where string, sock int32, frames int) {
	now := fastpath.Monotonic()
	if w.panicLogAt != 0 && now-w.panicLogAt < int64(time.Second) {
		w.panicQuiet++
		return
	}
	w.panicLogAt = now
	attrs := []any{"worker", w.idx, "where", where, "panic", fmt.Sprint(r),
		"frames_dropped", frames, "panics_not_logged", w.panicQuiet}
	if sock >= 0 {
		attrs = append(attrs, "socket", sock)
	}
	w.panicQuiet = 0
	if w.e.panicStack.CompareAndSwap(false, true) {
		attrs = append(attrs, "stack", string(debug.Stack()))
	}
	w.e.log.Error("dataplane: recovered a panic in a worker; it goes on", attrs...)
}

// runCtl runs control call f, turning a panic into an error for the
// caller; the worker goes on.
func (w *worker) runCtl(f func(*worker) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			w.cnt[cPanics]++
			w.publish()
			w.logPanic(r, "control", -1, 0)
			err = fmt.Errorf("worker %d: control call: panic: %v", w.idx, r)
		}
	}()
	return f(w)
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
		w.processBatch(ws, n, owners)
	}
	w.flush()
	if m := w.e.tm.Load(); m != nil && (len(w.cands) > 0 || len(w.tpend) > 0) {
		w.tierRound(m, w.punt)
	}
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

// processBatch is process behind a recover, one per socket batch: a panic
// (a processor bug, a poisoned packet) drops what is left of that batch
// and counts it, and the worker goes on with the next socket. The frames
// the batch still held go back to the socket's free stack, so nothing
// leaks. The defer is open-coded (no allocation, a few ns per batch of up
// to 64 packets); it is not per packet.
func (w *worker) processBatch(ws *wsock, n int, owners []int16) {
	defer w.recoverBatch(ws, n)
	w.process(ws, n, owners)
}

// recoverBatch is processBatch's deferred call (recover must be called
// directly by the deferred function).
func (w *worker) recoverBatch(ws *wsock, n int) {
	r := recover()
	if r == nil {
		return
	}
	// Every action frees or queues its frame as its last step, so frames
	// [next, n) are exactly those still held.
	lost := max(n-w.next, 0)
	for i := w.next; i < n; i++ {
		ws.s.FreeFrame(w.descs[i].Addr)
	}
	w.cnt[cPanics]++
	w.cnt[cPanicDropped] += uint64(lost)
	w.publish()
	w.logPanic(r, "batch", ws.id, lost)
}

// procHook, when set (tests only), sees every batch between the processor
// and the worker acting on its verdicts: it may rewrite verdicts or panic.
type procHook func(uplink bool, frames []fastpath.Frame, verd []fastpath.Verdict)

// verdictOK reports whether a transmit or slow-path verdict stays inside
// its frame of frameLen bytes. The worker slices the frame and writes TX
// descriptors with the verdict's Off and Len: a processor bug must become
// a counted drop, not a slice panic or a descriptor into the next frame.
func verdictOK(v *fastpath.Verdict, frameLen int) bool {
	return v.Off >= 0 && v.Off <= frameLen && v.Len > 0 && v.Len <= frameLen-v.Off
}

// process runs one received batch of ws through the processor and acts on
// the verdicts.
func (w *worker) process(ws *wsock, n int, owners []int16) {
	if ws.punt {
		w.processPunt(ws, n)
		return
	}
	s := ws.s
	w.next = 0
	for i := range n {
		d := w.descs[i]
		w.frames[i] = fastpath.Frame{Buf: s.Frame(d.Addr), Off: int(d.Addr - s.FrameStart(d.Addr)), Len: int(d.Len)}
	}
	if ws.uplink {
		w.e.proc.Ingress(w.wctx, w.frames[:n], w.verd[:n])
	} else {
		w.e.proc.Egress(w.wctx, ws.port, w.frames[:n], w.verd[:n])
	}
	if h := w.e.procHook.Load(); h != nil {
		(*h)(ws.uplink, w.frames[:n], w.verd[:n])
	}
	for i := range n {
		v := &w.verd[i]
		base := s.FrameStart(w.descs[i].Addr)
		// The frame again from the socket, not frames[i].Buf, which the
		// processor could have replaced.
		buf := s.Frame(base)
		if a := v.Action; a == fastpath.ActTxPort || a == fastpath.ActTxUplink || a == fastpath.ActSlowPath {
			if !verdictOK(v, len(buf)) || (a == fastpath.ActTxPort && v.Port >= fastpath.MaxPorts) {
				w.cnt[cBadVerdict]++
				s.FreeFrame(base)
				w.next = i + 1
				continue
			}
		}
		switch v.Action {
		case fastpath.ActTxPort:
			w.send(ws, base, buf, v, int32(v.Port), owners)
		case fastpath.ActTxUplink:
			w.send(ws, base, buf, v, uplinkID, owners)
		case fastpath.ActSlowPath:
			from := int32(ws.port)
			if ws.uplink {
				from = fromUplink
			}
			w.toSlow(buf[v.Off:v.Off+v.Len], v.Reason, from)
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
		w.next = i + 1
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
