//go:build linux

package xsk

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring index discipline (STYLE.md item 6). The four rings are shared with the
// kernel through mmap. The kernel documents the required ordering in
// net/xdp/xsk_queue.h ("The structure of the shared state of the rings are a
// simple circular buffer ..."), https://github.com/torvalds/linux/blob/v6.18/net/xdp/xsk_queue.h:
// a producer writes the entries and only then publishes the producer index
// with a release store (smp_store_release); a consumer reads the producer
// index with an acquire load (smp_load_acquire) before reading entries and
// publishes its consumer index with a release store after it is done with
// them. Go's sync/atomic loads and stores are sequentially consistent, which
// is at least as strong, and also stop the compiler from caching or
// reordering the index accesses. Like cilium/ebpf's ringbuf reader, every
// index is loaded atomically at most once per batch and stored once per
// batch; between batches the socket keeps cached copies.

// ring is one mmap'd AF_XDP ring. Fill and completion rings hold uint64 UMEM
// addresses (addrs), RX and TX rings hold Desc (descs).
type ring struct {
	producer *uint32
	consumer *uint32
	flags    *uint32
	mask     uint32
	size     uint32
	// cachedProd and cachedCons are our last view of the indexes. On a ring
	// we produce into, cachedProd is authoritative and cachedCons is a
	// possibly stale copy of the kernel's consumer; on a ring we consume from,
	// the other way round.
	cachedProd uint32
	cachedCons uint32
	addrs      []uint64
	descs      []Desc
	mem        []byte
}

// prodFree returns how many entries can be produced, reloading the kernel's
// consumer index only when the cached view shows fewer than want free.
func (r *ring) prodFree(want uint32) uint32 {
	free := r.size - (r.cachedProd - r.cachedCons)
	if free >= want {
		return free
	}
	r.cachedCons = atomic.LoadUint32(r.consumer)
	return r.size - (r.cachedProd - r.cachedCons)
}

// consAvail returns how many entries can be consumed, reloading the kernel's
// producer index only when the cached view shows fewer than want.
func (r *ring) consAvail(want uint32) uint32 {
	avail := r.cachedProd - r.cachedCons
	if avail >= want {
		return avail
	}
	r.cachedProd = atomic.LoadUint32(r.producer)
	return r.cachedProd - r.cachedCons
}

func (r *ring) needWakeup() bool {
	return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}

// umem is the packet memory and the free-frame stack of one worker. It may be
// shared by several sockets of that worker (XDP_SHARED_UMEM); all are owned by
// one goroutine, so nothing here is locked.
type umem struct {
	mem       []byte
	frameSize uint64
	frameMask uint64   // ^(frameSize-1): addr&frameMask is the frame start
	free      []uint64 // stack of frame start addresses, cap = number of frames
	refs      int      // sockets using this UMEM; mem is unmapped at 0
}

// Socket is one AF_XDP socket bound to one (ifindex, queue), over a UMEM it
// owns or shares. A Socket is owned by exactly one goroutine (the worker):
// none of its methods are safe for concurrent use, and none block.
//
// Frame ownership: a frame is on the free stack, in the fill ring, in the RX
// ring, held by the worker, in the TX ring or in the completion ring. Receive
// hands frames to the worker; Fill/FillFromFree and Transmit give them back to
// the kernel; Complete and FreeFrame return them to the free stack.
type Socket struct {
	fd       int
	u        *umem
	fill     ring
	comp     ring
	rx       ring
	tx       ring
	cfg      Config
	zeroCopy bool
	wakeup   bool // bound with XDP_USE_NEED_WAKEUP
	closed   bool
	st       Stats // our own counters; kernel fields filled by Stats()
}

// NewSocket creates an AF_XDP socket with its own UMEM of cfg.NumFrames
// frames, all on the free stack, and binds it to (cfg.Ifindex, cfg.Queue).
// The interface index is resolved in the network namespace of the calling
// thread.
func NewSocket(cfg Config) (*Socket, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket AF_XDP: %w", err)
	}
	s := &Socket{fd: fd, cfg: cfg}
	mem, err := unix.Mmap(-1, 0, cfg.NumFrames*cfg.FrameSize,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mmap umem: %w", err)
	}
	s.u = &umem{
		mem:       mem,
		frameSize: uint64(cfg.FrameSize),
		frameMask: ^uint64(cfg.FrameSize - 1),
		free:      make([]uint64, cfg.NumFrames),
		refs:      1,
	}
	for i := range s.u.free {
		// Pop order: lowest addresses first.
		s.u.free[i] = uint64(cfg.NumFrames-1-i) * uint64(cfg.FrameSize)
	}
	reg := unix.XDPUmemReg{
		Addr:     uint64(uintptr(unsafe.Pointer(&mem[0]))),
		Len:      uint64(len(mem)),
		Size:     uint32(cfg.FrameSize),
		Headroom: uint32(cfg.Headroom),
	}
	if err := setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		return nil, errors.Join(fmt.Errorf("setsockopt XDP_UMEM_REG: %w", err), s.Close())
	}
	if err := s.setupRings(); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	var flags uint16
	switch cfg.Mode {
	case BindCopy:
		flags |= unix.XDP_COPY
	case BindZeroCopy:
		flags |= unix.XDP_ZEROCOPY
	}
	if !cfg.NoNeedWakeup {
		flags |= unix.XDP_USE_NEED_WAKEUP
	}
	if err := s.bind(flags, 0); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

// NewSharedSocket creates a socket on (ifindex, queue) that shares owner's
// UMEM and free-frame stack (XDP_SHARED_UMEM), so a frame received on one
// socket can be transmitted on the other without a copy. The new socket has
// its own fill and completion rings (the kernel requires that when the
// device or queue differs); sharing one (ifindex, queue) between two sockets
// — which would share one fill ring — is not supported. Ring sizes, bind mode
// and need_wakeup are inherited from owner. Both sockets must be owned by the
// same goroutine.
func NewSharedSocket(owner *Socket, ifindex, queue int) (*Socket, error) {
	if owner.closed {
		return nil, ErrClosed
	}
	if ifindex == owner.cfg.Ifindex && queue == owner.cfg.Queue {
		return nil, fmt.Errorf("%w: shared socket on the owner's own queue", ErrInvalidConfig)
	}
	cfg := owner.cfg
	cfg.Ifindex, cfg.Queue = ifindex, queue
	if _, err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket AF_XDP: %w", err)
	}
	s := &Socket{fd: fd, cfg: cfg, u: owner.u}
	owner.u.refs++
	if err := s.setupRings(); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	// With XDP_SHARED_UMEM the kernel rejects XDP_COPY/XDP_ZEROCOPY/
	// XDP_USE_NEED_WAKEUP and inherits them from the UMEM's first socket.
	// Any open socket bound to the UMEM is a valid XDP_SHARED_UMEM target.
	if err := s.bind(unix.XDP_SHARED_UMEM, uint32(owner.fd)); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

func (s *Socket) bind(flags uint16, sharedFD uint32) error {
	sa := unix.SockaddrXDP{
		Flags:        flags,
		Ifindex:      uint32(s.cfg.Ifindex),
		QueueID:      uint32(s.cfg.Queue),
		SharedUmemFD: sharedFD,
	}
	if err := unix.Bind(s.fd, &sa); err != nil {
		return fmt.Errorf("bind ifindex %d queue %d flags %#x: %w", s.cfg.Ifindex, s.cfg.Queue, flags, err)
	}
	opts, err := unix.GetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_OPTIONS)
	if err != nil {
		return fmt.Errorf("getsockopt XDP_OPTIONS: %w", err)
	}
	s.zeroCopy = opts&unix.XDP_OPTIONS_ZEROCOPY != 0
	s.wakeup = !s.cfg.NoNeedWakeup
	// Copy mode transmits only inside sendto and, by default, at most 32
	// descriptors per call (TX_BATCH_SIZE in net/xdp/xsk.c). Raise the budget
	// to the TX ring size where the kernel has XDP_MAX_TX_SKB_BUDGET (6.16+);
	// older kernels keep 32 and Transmit loops instead. Errors are ignored.
	if !s.cfg.NoTx && !s.zeroCopy {
		_ = unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, s.cfg.TxSize)
	}
	return nil
}

// setupRings creates and maps the fill, completion and, unless disabled, the
// RX and TX rings of s.fd.
func (s *Socket) setupRings() error {
	c := &s.cfg
	if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_UMEM_FILL_RING, c.FillSize); err != nil {
		return fmt.Errorf("setsockopt XDP_UMEM_FILL_RING %d: %w", c.FillSize, err)
	}
	if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_UMEM_COMPLETION_RING, c.CompletionSize); err != nil {
		return fmt.Errorf("setsockopt XDP_UMEM_COMPLETION_RING %d: %w", c.CompletionSize, err)
	}
	if !c.NoRx {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_RX_RING, c.RxSize); err != nil {
			return fmt.Errorf("setsockopt XDP_RX_RING %d: %w", c.RxSize, err)
		}
	}
	if !c.NoTx {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_TX_RING, c.TxSize); err != nil {
			return fmt.Errorf("setsockopt XDP_TX_RING %d: %w", c.TxSize, err)
		}
	}
	var off unix.XDPMmapOffsets
	optlen := uint32(unsafe.Sizeof(off))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&optlen)), 0); e != 0 {
		return fmt.Errorf("getsockopt XDP_MMAP_OFFSETS: %w", e)
	}
	if optlen != uint32(unsafe.Sizeof(off)) {
		return fmt.Errorf("getsockopt XDP_MMAP_OFFSETS: %d bytes, want %d (kernel without ring flags)", optlen, unsafe.Sizeof(off))
	}
	if err := s.fill.mmap(s.fd, unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, c.FillSize, false); err != nil {
		return fmt.Errorf("mmap fill ring: %w", err)
	}
	if err := s.comp.mmap(s.fd, unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, c.CompletionSize, false); err != nil {
		return fmt.Errorf("mmap completion ring: %w", err)
	}
	if !c.NoRx {
		if err := s.rx.mmap(s.fd, unix.XDP_PGOFF_RX_RING, off.Rx, c.RxSize, true); err != nil {
			return fmt.Errorf("mmap rx ring: %w", err)
		}
	}
	if !c.NoTx {
		if err := s.tx.mmap(s.fd, unix.XDP_PGOFF_TX_RING, off.Tx, c.TxSize, true); err != nil {
			return fmt.Errorf("mmap tx ring: %w", err)
		}
	}
	// The kernel starts all indexes at 0; read them anyway.
	for _, r := range []*ring{&s.fill, &s.comp, &s.rx, &s.tx} {
		if r.mem != nil {
			r.cachedProd = atomic.LoadUint32(r.producer)
			r.cachedCons = atomic.LoadUint32(r.consumer)
		}
	}
	return nil
}

func (r *ring) mmap(fd int, pgoff int64, off unix.XDPRingOffset, n int, isDesc bool) error {
	entry := uint64(8)
	if isDesc {
		entry = uint64(unsafe.Sizeof(Desc{}))
	}
	mem, err := unix.Mmap(fd, pgoff, int(off.Desc+uint64(n)*entry),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return err
	}
	base := unsafe.Pointer(&mem[0])
	r.mem = mem
	r.producer = (*uint32)(unsafe.Add(base, off.Producer))
	r.consumer = (*uint32)(unsafe.Add(base, off.Consumer))
	r.flags = (*uint32)(unsafe.Add(base, off.Flags))
	r.size = uint32(n)
	r.mask = uint32(n - 1)
	if isDesc {
		r.descs = unsafe.Slice((*Desc)(unsafe.Add(base, off.Desc)), n)
	} else {
		r.addrs = unsafe.Slice((*uint64)(unsafe.Add(base, off.Desc)), n)
	}
	return nil
}

func setsockopt(fd, opt int, p unsafe.Pointer, size uintptr) error {
	if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt),
		uintptr(p), size, 0); e != 0 {
		return e
	}
	return nil
}

// Fd returns the socket's file descriptor (for poll, and for XSKMAP entries).
func (s *Socket) Fd() int { return s.fd }

// ZeroCopy reports whether the kernel bound the socket in zero-copy mode.
func (s *Socket) ZeroCopy() bool { return s.zeroCopy }

// Config returns the socket's configuration with defaults filled in.
func (s *Socket) Config() Config { return s.cfg }

// FrameSize returns the UMEM frame size in bytes.
func (s *Socket) FrameSize() int { return int(s.u.frameSize) }

// FrameStart returns the address of the frame that contains addr.
func (s *Socket) FrameStart(addr uint64) uint64 { return addr & s.u.frameMask }

// Frame returns the whole frame that contains addr: frame[addr-FrameStart(addr):]
// is the packet, the bytes before it are headroom a worker may prepend into.
// The view is valid while the caller owns the frame: from Receive or
// AllocFrame until the frame is passed to Fill, Transmit or FreeFrame (or the
// Socket is closed). Writing to it after that corrupts a packet in flight.
func (s *Socket) Frame(addr uint64) []byte {
	start := addr & s.u.frameMask
	end := start + s.u.frameSize
	return s.u.mem[start:end:end]
}

// Packet returns the bytes of d (d.Len bytes at d.Addr), capped at the end of
// its frame. It is valid for the same time as Frame.
func (s *Socket) Packet(d Desc) []byte {
	end := (d.Addr & s.u.frameMask) + s.u.frameSize
	return s.u.mem[d.Addr : d.Addr+uint64(d.Len) : end]
}

// AllocFrame pops a frame from the free stack and returns its start address;
// ok is false when the stack is empty.
func (s *Socket) AllocFrame() (addr uint64, ok bool) {
	f := s.u.free
	if len(f) == 0 {
		return 0, false
	}
	addr = f[len(f)-1]
	s.u.free = f[:len(f)-1]
	return addr, true
}

// FreeFrame returns the frame containing addr to the free stack. The caller
// must own the frame; freeing a frame twice corrupts the UMEM accounting.
func (s *Socket) FreeFrame(addr uint64) {
	if len(s.u.free) < cap(s.u.free) {
		s.u.free = append(s.u.free, addr&s.u.frameMask)
	}
}

// FreeFrames returns the number of frames on the free stack.
func (s *Socket) FreeFrames() int { return len(s.u.free) }

// NumFrames returns the number of frames in the UMEM.
func (s *Socket) NumFrames() int { return cap(s.u.free) }

// Fill gives frames to the kernel for RX and returns how many fit in the fill
// ring; the caller keeps ownership of addrs[n:].
func (s *Socket) Fill(addrs []uint64) int {
	r := &s.fill
	n := min(uint32(len(addrs)), r.prodFree(uint32(len(addrs))))
	if n == 0 {
		return 0
	}
	prod := r.cachedProd
	for i := range n {
		r.addrs[prod&r.mask] = addrs[i] & s.u.frameMask
		prod++
	}
	s.publishFill(prod, n)
	return int(n)
}

// FillFromFree moves up to n frames (n <= 0: as many as fit) from the free
// stack into the fill ring and returns how many it moved. Call it every
// batch to keep the fill ring deep: an empty fill ring drops packets
// (Stats.RxFillRingEmptyDescs).
func (s *Socket) FillFromFree(n int) int {
	r := &s.fill
	want := uint32(len(s.u.free))
	if n > 0 {
		want = min(want, uint32(n))
	}
	if want == 0 {
		return 0
	}
	k := min(want, r.prodFree(want))
	if k == 0 {
		return 0
	}
	free := s.u.free
	top := uint32(len(free))
	prod := r.cachedProd
	for i := range k {
		r.addrs[prod&r.mask] = free[top-1-i]
		prod++
	}
	s.u.free = free[:top-k]
	s.publishFill(prod, k)
	return int(k)
}

func (s *Socket) publishFill(prod, n uint32) {
	s.fill.cachedProd = prod
	atomic.StoreUint32(s.fill.producer, prod)
	s.st.Filled += uint64(n)
	// A zero-copy driver that ran out of fill entries sleeps until woken.
	// Copy mode never sets this flag.
	if s.wakeup && s.fill.needWakeup() {
		s.st.RxWakeups++
		unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	}
}

// Receive copies up to len(descs) received descriptors into descs, releases
// their RX ring entries and returns how many it copied. The frames now belong
// to the caller (see Frame). Receive makes no system call.
func (s *Socket) Receive(descs []Desc) int {
	r := &s.rx
	if r.mem == nil {
		return 0
	}
	n := min(uint32(len(descs)), r.consAvail(uint32(len(descs))))
	if n == 0 {
		return 0
	}
	cons := r.cachedCons
	for i := range n {
		descs[i] = r.descs[cons&r.mask]
		cons++
	}
	r.cachedCons = cons
	atomic.StoreUint32(r.consumer, cons)
	s.st.Received += uint64(n)
	return int(n)
}

// RxPending reports whether the RX ring holds descriptors (one atomic load).
func (s *Socket) RxPending() bool {
	if s.rx.mem == nil {
		return false
	}
	return s.rx.consAvail(1) > 0
}

// Transmit queues descs on the TX ring, kicks the kernel if it needs it and
// returns how many were queued; the caller keeps ownership of descs[n:]
// (retry them or FreeFrame them). A descriptor may point anywhere inside a
// frame (e.g. into the headroom after an in-place encapsulation) but must
// not cross the frame's end. Queued frames come back through Complete.
func (s *Socket) Transmit(descs []Desc) int {
	r := &s.tx
	if r.mem == nil || len(descs) == 0 {
		return 0
	}
	n := min(uint32(len(descs)), r.prodFree(uint32(len(descs))))
	if n < uint32(len(descs)) {
		s.st.TxDeferred++
	}
	if n > 0 {
		prod := r.cachedProd
		for i := range n {
			r.descs[prod&r.mask] = descs[i]
			prod++
		}
		r.cachedProd = prod
		atomic.StoreUint32(r.producer, prod)
		s.st.Transmitted += uint64(n)
	}
	s.kick()
	return int(n)
}

// Kick asks the kernel to transmit what the TX ring still holds (after
// sendto returned EAGAIN/ENOBUFS, say). Call it when a worker has nothing
// else to do; it makes no system call when the ring is drained.
func (s *Socket) Kick() {
	if s.tx.mem != nil && atomic.LoadUint32(s.tx.consumer) != s.tx.cachedProd {
		s.kick()
	}
}

// kick calls sendto when the kernel needs it: always in copy mode (the
// kernel transmits copy-mode frames only inside sendmsg), otherwise when the
// TX ring's need_wakeup flag is set. Errors are counted, never returned: the
// descriptors stay in the ring and the next kick retries them.
//
// sendto is a RawSyscall: it never blocks (MSG_DONTWAIT) and a worker
// calls it every round; through Syscall, sysmon would see the worker's P
// in a system call on every round and keep waking every 20 µs on the
// worker's CPU (see YieldOS).
func (s *Socket) kick() {
	if s.zeroCopy && s.wakeup && !s.tx.needWakeup() {
		return
	}
	for try := 0; try < 4; try++ {
		s.st.Kicks++
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			s.st.KickEAGAIN++
			// Copy mode sends at most its budget per call and says EAGAIN
			// when more is left; keep going while the kernel makes
			// progress, else (completion ring full) leave it to the next
			// batch.
			before := s.tx.cachedCons
			s.tx.cachedCons = atomic.LoadUint32(s.tx.consumer)
			if s.tx.cachedCons == before || s.tx.cachedCons == s.tx.cachedProd {
				return
			}
		case unix.ENOBUFS:
			s.st.KickENOBUFS++
			return
		case unix.EBUSY:
			s.st.KickEBUSY++
			return
		default:
			s.st.KickOther++
			return
		}
	}
}

// Complete moves every address on the completion ring back to the free
// stack and returns how many frames it reclaimed. Call it every batch: a
// full completion ring stops copy-mode transmission (sendto says EAGAIN).
func (s *Socket) Complete() int {
	r := &s.comp
	n := r.consAvail(r.size)
	if n == 0 {
		return 0
	}
	u := s.u
	cons := r.cachedCons
	for range n {
		if len(u.free) < cap(u.free) {
			u.free = append(u.free, r.addrs[cons&r.mask]&u.frameMask)
		}
		cons++
	}
	r.cachedCons = cons
	atomic.StoreUint32(r.consumer, cons)
	s.st.Completed += uint64(n)
	return int(n)
}

// TxOutstanding returns how many transmitted frames have not come back
// through Complete yet (queued on TX, in flight, or on the completion ring).
func (s *Socket) TxOutstanding() int {
	return int(s.st.Transmitted - s.st.Completed)
}

// Stats returns the kernel's XDP_STATISTICS for the socket plus the socket's
// own counters. It works on RX-only and TX-only sockets alike and never
// panics; err is set only when the getsockopt fails.
func (s *Socket) Stats() (Stats, error) {
	st := s.st
	if s.closed {
		return st, ErrClosed
	}
	var ks unix.XDPStatistics
	optlen := uint32(unsafe.Sizeof(ks))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&ks)), uintptr(unsafe.Pointer(&optlen)), 0); e != 0 {
		return st, fmt.Errorf("getsockopt XDP_STATISTICS: %w", e)
	}
	st.RxDropped = ks.Rx_dropped
	st.RxInvalidDescs = ks.Rx_invalid_descs
	st.TxInvalidDescs = ks.Tx_invalid_descs
	st.RxRingFull = ks.Rx_ring_full
	st.RxFillRingEmptyDescs = ks.Rx_fill_ring_empty_descs
	st.TxRingEmptyDescs = ks.Tx_ring_empty_descs
	return st, nil
}

// Close unmaps the rings and closes the socket; the UMEM is unmapped when the
// last socket sharing it closes. Views from Frame and Packet are invalid
// afterwards. Close is idempotent.
func (s *Socket) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, r := range []*ring{&s.fill, &s.comp, &s.rx, &s.tx} {
		if r.mem != nil {
			if err := unix.Munmap(r.mem); err != nil {
				errs = append(errs, fmt.Errorf("munmap ring: %w", err))
			}
			*r = ring{}
		}
	}
	if s.fd >= 0 {
		if err := unix.Close(s.fd); err != nil {
			errs = append(errs, fmt.Errorf("close xsk: %w", err))
		}
		s.fd = -1
	}
	if s.u != nil {
		s.u.refs--
		if s.u.refs == 0 && s.u.mem != nil {
			if err := unix.Munmap(s.u.mem); err != nil {
				errs = append(errs, fmt.Errorf("munmap umem: %w", err))
			}
			s.u.mem = nil
		}
	}
	return errors.Join(errs...)
}
