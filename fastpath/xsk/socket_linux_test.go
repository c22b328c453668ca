//go:build linux

package xsk

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oakwire/oakwire/fastpath"
	"golang.org/x/sys/unix"
)

const echoPort = 9000

// echoWorker is a minimal worker: it owns one RX socket and one TX socket
// (the same socket, or a shared-UMEM sibling), reflects or forwards every
// received UDP frame, and uses hybrid polling.
type echoWorker struct {
	rx, tx *Socket
	p      *Poller
	// rewrite turns a received frame into the frame to send; false drops it.
	rewrite func([]byte) bool

	stop chan struct{}
	done chan struct{}

	// Written by the worker, read after done is closed.
	firstOffset int64 // desc.Addr - frame start of the first RX packet
	badOffsets  int   // RX packets at another offset
	forwarded   uint64
	dropped     uint64
	txFull      uint64
}

func startWorker(tb testing.TB, rx, tx *Socket, rewrite func([]byte) bool) *echoWorker {
	return startWorkerPoll(tb, rx, tx, rewrite, PollerConfig{Timeout: 50 * time.Millisecond})
}

func startWorkerPoll(tb testing.TB, rx, tx *Socket, rewrite func([]byte) bool, pcfg PollerConfig) *echoWorker {
	tb.Helper()
	p, err := NewPoller(pcfg)
	if err != nil {
		tb.Fatal(err)
	}
	p.Add(rx.Fd())
	w := &echoWorker{rx: rx, tx: tx, p: p, rewrite: rewrite, stop: make(chan struct{}),
		done: make(chan struct{}), firstOffset: -1}
	// Prime the fill ring before the first packet can arrive: a packet that
	// finds it empty is dropped (Stats.RxFillRingEmptyDescs).
	rx.FillFromFree(0)
	go w.run()
	tb.Cleanup(func() { w.halt(); p.Close() })
	return w
}

func (w *echoWorker) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(w.done)
	descs := make([]Desc, 64)
	deadline := time.Now().Add(2 * time.Minute) // hard bound on any loop
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		if time.Now().After(deadline) {
			return
		}
		w.tx.Complete()
		if w.tx != w.rx {
			w.rx.Complete()
		}
		w.rx.FillFromFree(0)
		n := w.rx.Receive(descs)
		k := 0
		for _, d := range descs[:n] {
			off := int64(d.Addr - w.rx.FrameStart(d.Addr))
			if w.firstOffset < 0 {
				w.firstOffset = off
			} else if off != w.firstOffset {
				w.badOffsets++
			}
			if w.rewrite(w.rx.Packet(d)) {
				descs[k] = d
				k++
			} else {
				w.rx.FreeFrame(d.Addr)
				w.dropped++
			}
		}
		if k > 0 {
			t := w.tx.Transmit(descs[:k])
			for _, d := range descs[t:k] {
				w.tx.FreeFrame(d.Addr)
			}
			w.forwarded += uint64(t)
			w.txFull += uint64(k - t)
		} else {
			w.tx.Kick()
		}
		w.p.Wait(n > 0)
	}
}

// halt stops the worker and waits for it; afterwards the test goroutine
// owns the sockets.
func (w *echoWorker) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
		w.p.Notify()
	}
	<-w.done
}

// drainCompletions reclaims TX frames until none are outstanding (bounded).
func drainCompletions(tb testing.TB, s *Socket) {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for s.TxOutstanding() > 0 && time.Now().Before(deadline) {
		s.Kick()
		s.Complete()
		time.Sleep(time.Millisecond)
	}
	if n := s.TxOutstanding(); n != 0 {
		tb.Fatalf("%d TX frames never completed", n)
	}
}

func payloadFor(seq uint32, b []byte) {
	binary.BigEndian.PutUint32(b, seq)
	for i := 4; i < len(b); i++ {
		b[i] = byte(seq) ^ byte(i)
	}
}

func checkPayload(b []byte) (uint32, bool) {
	if len(b) < 4 {
		return 0, false
	}
	seq := binary.BigEndian.Uint32(b)
	for i := 4; i < len(b); i++ {
		if b[i] != byte(seq)^byte(i) {
			return seq, false
		}
	}
	return seq, true
}

// pump sends total datagrams on c, keeping at most window unanswered
// (window <= 0: flood), and receives the echoes on the same socket. It
// returns how many distinct, intact echoes came back and the time from the
// first send to the last echo. Bounded by total and by limit.
func pump(tb testing.TB, c *net.UDPConn, total, window, size int, limit time.Duration) (got int, elapsed time.Duration) {
	tb.Helper()
	var recvd atomic.Int64
	seen := make([]bool, total)
	start := time.Now()
	stopAt := start.Add(limit)
	var last atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		quiet := 2 * time.Second // before the first echo
		for recvd.Load() < int64(total) {
			c.SetReadDeadline(time.Now().Add(quiet))
			quiet = 500 * time.Millisecond
			n, err := c.Read(buf)
			if err != nil {
				return // quiet for too long: the rest is lost
			}
			seq, ok := checkPayload(buf[:n])
			if !ok || n != size || int(seq) >= total || seen[seq] {
				tb.Errorf("bad echo: seq %d len %d intact %v", seq, n, ok)
				continue
			}
			seen[seq] = true
			recvd.Add(1)
			last.Store(int64(time.Since(start)))
		}
	}()
	buf := make([]byte, size)
	for seq := 0; seq < total && time.Now().Before(stopAt); seq++ {
		for window > 0 && int64(seq)-recvd.Load() >= int64(window) {
			if time.Now().After(stopAt) {
				break
			}
			runtime.Gosched()
		}
		payloadFor(uint32(seq), buf)
		if _, err := c.Write(buf); err != nil && !errors.Is(err, unix.ENOBUFS) {
			tb.Errorf("send %d: %v", seq, err)
			break
		}
	}
	wg.Wait()
	return int(recvd.Load()), time.Duration(last.Load())
}

func TestEcho(t *testing.T) {
	b := newBed(t, 1)
	p := b.pairs[0]
	xsks := attachSteer(t, b.nsA, p.idxA, echoPort)
	s := newSocketIn(t, b.nsA, Config{Ifindex: p.idxA, Queue: 0, NumFrames: 4096})
	if s.ZeroCopy() {
		t.Errorf("veth socket bound zero-copy; veth has only copy mode")
	}
	if err := xsks.Put(uint32(0), uint32(s.Fd())); err != nil {
		t.Fatalf("xskmap put: %v", err)
	}
	w := startWorker(t, s, s, bounce)
	c := dialUDP(t, b.nsB, netip.AddrPortFrom(p.ipB, 40000), netip.AddrPortFrom(p.ipA, echoPort))

	const total, size = 10_000, 64
	got, elapsed := pump(t, c, total, 256, size, 20*time.Second)
	w.halt()
	t.Logf("echoed %d/%d in %v (%.0f pps, window 256)", got, total, elapsed, float64(got)/elapsed.Seconds())
	if got != total {
		b.dump(t)
		t.Errorf("lost %d of %d echoes", total-got, total)
	}
	t.Logf("RX offset in frame: %d bytes (KernelHeadroom %d, Config.Headroom %d)", w.firstOffset, KernelHeadroom, s.Config().Headroom)
	if w.firstOffset != KernelHeadroom || w.badOffsets != 0 {
		t.Errorf("RX offset %d (%d others), want %d", w.firstOffset, w.badOffsets, KernelHeadroom)
	}
	if w.dropped != 0 {
		t.Errorf("worker dropped %d non-UDP frames: the steering program leaked", w.dropped)
	}

	// The worker is stopped: this goroutine owns the socket now.
	drainCompletions(t, s)
	st, err := s.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t.Logf("stats %+v", st)
	inFill := int(st.Filled - st.Received)
	if s.FreeFrames()+inFill != s.NumFrames() {
		t.Errorf("frames leaked: %d free + %d in fill ring != %d", s.FreeFrames(), inFill, s.NumFrames())
	}
	if st.Transmitted != uint64(total) || st.Completed != st.Transmitted {
		t.Errorf("transmitted %d completed %d, want %d", st.Transmitted, st.Completed, total)
	}
	if st.KickOther != 0 || st.RxInvalidDescs != 0 || st.TxInvalidDescs != 0 {
		t.Errorf("unexpected errors in %+v", st)
	}

	// The hot path allocates nothing.
	descs := make([]Desc, 64)
	if a := testing.AllocsPerRun(200, func() {
		s.Complete()
		s.FillFromFree(0)
		n := s.Receive(descs)
		s.Transmit(descs[:0])
		for _, d := range descs[:n] {
			s.FreeFrame(d.Addr)
		}
		s.Kick()
	}); a != 0 {
		t.Errorf("%v allocs per worker round", a)
	}
}

// TestTxOnly transmits crafted frames from a TX-only socket (no RX ring, no
// XDP program on that side) to a kernel UDP socket and checks that every
// frame comes back through Complete and that Stats works.
func TestTxOnly(t *testing.T) {
	b := newBed(t, 1)
	p := b.pairs[0]
	// Through A's steering program on the way in: other ports must pass.
	attachSteer(t, b.nsA, p.idxA, echoPort)
	srv := listenUDP(t, b.nsA, netip.AddrPortFrom(p.ipA, 9100))
	// veth has no zero-copy: a forced zero-copy bind fails cleanly (and
	// releases the queue for the socket below).
	if err := inNS(b.nsB, func() error {
		zc, err := NewSocket(Config{Ifindex: p.idxB, Queue: 0, NumFrames: 64, Mode: BindZeroCopy})
		if err == nil {
			zc.Close()
			return errors.New("zero-copy bind on veth succeeded")
		}
		t.Logf("zero-copy bind on veth: %v", err)
		return nil
	}); err != nil {
		t.Error(err)
	}
	s := newSocketIn(t, b.nsB, Config{Ifindex: p.idxB, Queue: 0, NumFrames: 256, NoRx: true, TxSize: 64, CompletionSize: 64})
	st, err := s.Stats()
	if err != nil {
		t.Fatalf("Stats on TX-only socket: %v", err)
	}
	t.Logf("fresh TX-only stats %+v", st)

	// The kernel neighbour table of A learns B's MAC from ARP; we write
	// both MACs by hand.
	const total = 1000
	payload := make([]byte, 100)
	descs := make([]Desc, 0, 64)
	sent := 0
	deadline := time.Now().Add(10 * time.Second)
	for sent < total && time.Now().Before(deadline) {
		s.Complete()
		descs = descs[:0]
		for len(descs) < cap(descs) && sent+len(descs) < total {
			addr, ok := s.AllocFrame()
			if !ok {
				break
			}
			payloadFor(uint32(sent+len(descs)), payload)
			n := buildUDP(s.Frame(addr), p.macB, p.macA, netip.AddrPortFrom(p.ipB, 9101), netip.AddrPortFrom(p.ipA, 9100), payload)
			descs = append(descs, Desc{Addr: addr, Len: uint32(n)})
		}
		k := s.Transmit(descs)
		for _, d := range descs[k:] {
			s.FreeFrame(d.Addr)
		}
		sent += k
		if k == 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	drainCompletions(t, s)
	if s.FreeFrames() != s.NumFrames() {
		t.Errorf("free stack %d after all completions, want %d", s.FreeFrames(), s.NumFrames())
	}
	got := 0
	buf := make([]byte, 2048)
	for got < total {
		srv.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := srv.Read(buf)
		if err != nil {
			break
		}
		if seq, ok := checkPayload(buf[:n]); !ok || n != len(payload) {
			t.Fatalf("bad datagram seq %d len %d", seq, n)
		}
		got++
	}
	st, err = s.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t.Logf("sent %d received %d; stats %+v", sent, got, st)
	if got != total {
		t.Errorf("kernel socket received %d of %d", got, total)
	}
	if st.Transmitted != total || st.Completed != total {
		t.Errorf("transmitted %d completed %d, want %d", st.Transmitted, st.Completed, total)
	}
}

// TestSharedUMEM receives on one socket and transmits the same frame,
// without a copy, on a socket of another interface sharing the UMEM.
func TestSharedUMEM(t *testing.T) {
	b := newBed(t, 2)
	in, out := b.pairs[0], b.pairs[1]
	xsks := attachSteer(t, b.nsA, in.idxA, echoPort)
	owner := newSocketIn(t, b.nsA, Config{Ifindex: in.idxA, Queue: 0, NumFrames: 1024})
	var shared *Socket
	if err := inNS(b.nsA, func() error {
		var err error
		shared, err = NewSharedSocket(owner, out.idxA, 0)
		return err
	}); err != nil {
		t.Fatalf("NewSharedSocket: %v", err)
	}
	t.Cleanup(func() { shared.Close() })
	if err := xsks.Put(uint32(0), uint32(owner.Fd())); err != nil {
		t.Fatal(err)
	}
	if _, err := NewSharedSocket(owner, in.idxA, 0); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("shared socket on the owner's queue: err %v", err)
	}
	sink := listenUDP(t, b.nsB, netip.AddrPortFrom(out.ipB, 9201))
	srcPort := uint16(9200)
	forward := func(pkt []byte) bool {
		if len(pkt) < 42 {
			return false
		}
		copy(pkt[0:6], out.macB)
		copy(pkt[6:12], out.macA)
		s4, d4 := out.ipA.As4(), out.ipB.As4()
		copy(pkt[26:30], s4[:])
		copy(pkt[30:34], d4[:])
		pkt[24], pkt[25] = 0, 0
		binary.BigEndian.PutUint16(pkt[24:], fastpath.Checksum(pkt[14:34], 0))
		binary.BigEndian.PutUint16(pkt[34:], srcPort)
		binary.BigEndian.PutUint16(pkt[36:], 9201)
		fixUDPChecksum(pkt)
		return true
	}
	w := startWorker(t, owner, shared, forward)
	c := dialUDP(t, b.nsB, netip.AddrPortFrom(in.ipB, 40001), netip.AddrPortFrom(in.ipA, echoPort))
	const total = 500
	buf := make([]byte, 64)
	got := 0
	rbuf := make([]byte, 2048)
	for seq := range total {
		payloadFor(uint32(seq), buf)
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		sink.SetReadDeadline(time.Now().Add(time.Second))
		n, err := sink.Read(rbuf)
		if err != nil {
			w.halt()
			ost, _ := owner.Stats()
			sst, _ := shared.Stats()
			b.dump(t)
			t.Fatalf("forwarded datagram %d: %v\nowner %+v\nshared %+v\nworker fwd %d drop %d", seq, err, ost, sst, w.forwarded, w.dropped)
		}
		if s, ok := checkPayload(rbuf[:n]); !ok || s != uint32(seq) {
			t.Fatalf("forwarded datagram %d: got seq %d intact %v", seq, s, ok)
		}
		got++
	}
	w.halt()
	drainCompletions(t, shared)
	ost, _ := owner.Stats()
	sst, _ := shared.Stats()
	inFill := int(ost.Filled - ost.Received)
	t.Logf("forwarded %d; owner %+v; shared %+v; free %d", got, ost, sst, owner.FreeFrames())
	if owner.FreeFrames() != shared.FreeFrames() || owner.FreeFrames()+inFill != owner.NumFrames() {
		t.Errorf("shared free stack: owner %d shared %d + %d in fill != %d", owner.FreeFrames(), shared.FreeFrames(), inFill, owner.NumFrames())
	}
	if sst.Completed != total {
		t.Errorf("shared socket completed %d, want %d", sst.Completed, total)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{
		{},
		{Ifindex: 1, FrameSize: 3000},
		{Ifindex: 1, RxSize: 100},
		{Ifindex: 1, NoRx: true, NoTx: true},
		{Ifindex: 1, Headroom: 2000},
		{Ifindex: 1, Mode: 7},
	} {
		if _, err := NewSocket(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewSocket(%+v) err %v, want ErrInvalidConfig", c, err)
		}
	}
}

// TestHeadroom checks that Config.Headroom moves RX packets further into
// their frames: offset = KernelHeadroom + Headroom.
func TestHeadroom(t *testing.T) {
	b := newBed(t, 1)
	p := b.pairs[0]
	xsks := attachSteer(t, b.nsA, p.idxA, echoPort)
	const headroom = 64
	s := newSocketIn(t, b.nsA, Config{Ifindex: p.idxA, Queue: 0, NumFrames: 256, FrameSize: 4096,
		Headroom: headroom, Mode: BindCopy, RxSize: 128, TxSize: 128, FillSize: 256, CompletionSize: 256})
	if err := xsks.Put(uint32(0), uint32(s.Fd())); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, s, s, bounce)
	c := dialUDP(t, b.nsB, netip.AddrPortFrom(p.ipB, 40002), netip.AddrPortFrom(p.ipA, echoPort))
	got, _ := pump(t, c, 100, 16, 1400, 10*time.Second)
	w.halt()
	if got != 100 {
		t.Errorf("echoed %d of 100 1400-byte datagrams", got)
	}
	t.Logf("RX offset with Headroom %d, 4096-byte frames: %d", headroom, w.firstOffset)
	if w.firstOffset != KernelHeadroom+headroom || w.badOffsets != 0 {
		t.Errorf("RX offset %d (%d others), want %d", w.firstOffset, w.badOffsets, KernelHeadroom+headroom)
	}
}
