package xsk

import (
	"errors"
	"fmt"
)

// Sentinel errors of package xsk.
var (
	// ErrNotSupported is returned on systems without AF_XDP (every OS but Linux).
	ErrNotSupported = fmt.Errorf("xsk: AF_XDP: %w on this system", errors.ErrUnsupported)
	// ErrInvalidConfig wraps every Config validation failure.
	ErrInvalidConfig = errors.New("xsk: invalid config")
	// ErrClosed is returned by calls on a closed Socket or Poller.
	ErrClosed = errors.New("xsk: closed")
)

// Desc is one packet descriptor: the UMEM address of the first packet byte,
// the packet length and the descriptor options. Its layout is the kernel's
// struct xdp_desc (include/uapi/linux/if_xdp.h), so RX/TX ring entries are
// copied without conversion. Desc is also what crosses between workers on an
// SPSC ring: frames stay put, descriptors move.
type Desc struct {
	Addr    uint64
	Len     uint32
	Options uint32
}

// BindMode selects how the socket binds to the queue.
type BindMode uint8

const (
	// BindAuto lets the kernel try zero-copy and fall back to copy mode
	// (bind flags without XDP_COPY/XDP_ZEROCOPY). Socket.ZeroCopy reports
	// what was chosen.
	BindAuto BindMode = iota
	// BindCopy forces copy mode (XDP_COPY). veth only has copy mode.
	BindCopy
	// BindZeroCopy forces zero-copy (XDP_ZEROCOPY); bind fails if the driver
	// cannot do it.
	BindZeroCopy
)

func (m BindMode) String() string {
	switch m {
	case BindAuto:
		return "auto"
	case BindCopy:
		return "copy"
	case BindZeroCopy:
		return "zerocopy"
	}
	return fmt.Sprintf("BindMode(%d)", m)
}

// Defaults used for zero fields of Config.
const (
	DefaultNumFrames = 4096
	DefaultFrameSize = 2048
	DefaultRingSize  = 2048
)

// KernelHeadroom is XDP_PACKET_HEADROOM: on RX the kernel places the packet
// this many bytes (plus Config.Headroom) after the start of its frame, so a
// worker can prepend an outer header in place.
const KernelHeadroom = 256

// Config describes one socket and, for the first socket of a UMEM, the UMEM.
// Zero fields take the defaults above.
type Config struct {
	Ifindex int // interface to bind to, in the calling thread's network namespace
	Queue   int // queue id on that interface

	NumFrames int // frames in the UMEM
	FrameSize int // 2048 or 4096 (aligned chunk mode needs a power of two)
	// Headroom is the UMEM headroom the kernel adds in front of RX packets,
	// on top of KernelHeadroom. Default 0: the 256 bytes the kernel already
	// leaves are enough for a 48-byte IPv6+UDP outer header.
	Headroom int

	FillSize       int // fill ring entries, power of two
	CompletionSize int // completion ring entries, power of two
	RxSize         int // RX ring entries, power of two
	TxSize         int // TX ring entries, power of two
	NoRx           bool
	NoTx           bool

	Mode BindMode
	// NoNeedWakeup disables XDP_USE_NEED_WAKEUP; then every Transmit kicks.
	NoNeedWakeup bool
}

func pow2(n int) bool { return n > 0 && n&(n-1) == 0 }

// withDefaults fills zero fields and validates the result.
func (c Config) withDefaults() (Config, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.NumFrames, DefaultNumFrames)
	def(&c.FrameSize, DefaultFrameSize)
	def(&c.FillSize, DefaultRingSize)
	def(&c.CompletionSize, DefaultRingSize)
	def(&c.RxSize, DefaultRingSize)
	def(&c.TxSize, DefaultRingSize)
	switch {
	case c.Ifindex <= 0:
		return c, fmt.Errorf("%w: ifindex %d", ErrInvalidConfig, c.Ifindex)
	case c.Queue < 0:
		return c, fmt.Errorf("%w: queue %d", ErrInvalidConfig, c.Queue)
	case c.FrameSize != 2048 && c.FrameSize != 4096:
		return c, fmt.Errorf("%w: frame size %d not 2048 or 4096", ErrInvalidConfig, c.FrameSize)
	case c.NumFrames < 1 || c.NumFrames > 1<<20:
		return c, fmt.Errorf("%w: %d frames", ErrInvalidConfig, c.NumFrames)
	case c.Headroom < 0 || c.Headroom+KernelHeadroom+128 > c.FrameSize:
		return c, fmt.Errorf("%w: headroom %d in %d-byte frames", ErrInvalidConfig, c.Headroom, c.FrameSize)
	case !pow2(c.FillSize) || !pow2(c.CompletionSize) || !pow2(c.RxSize) || !pow2(c.TxSize):
		return c, fmt.Errorf("%w: ring sizes %d/%d/%d/%d must be powers of two",
			ErrInvalidConfig, c.FillSize, c.CompletionSize, c.RxSize, c.TxSize)
	case c.NoRx && c.NoTx:
		return c, fmt.Errorf("%w: neither RX nor TX ring", ErrInvalidConfig)
	case c.Mode > BindZeroCopy:
		return c, fmt.Errorf("%w: bind mode %d", ErrInvalidConfig, c.Mode)
	}
	return c, nil
}

// Stats are the kernel's XDP_STATISTICS for the socket plus this socket's
// own counters. Every field is a running total since the socket was made.
type Stats struct {
	// From getsockopt(XDP_STATISTICS).
	RxDropped             uint64 // dropped for other reasons than ring full (e.g. frame too small)
	RxInvalidDescs        uint64 // invalid fill-ring addresses
	TxInvalidDescs        uint64 // invalid TX descriptors
	RxRingFull            uint64 // dropped: RX ring full (userspace behind)
	RxFillRingEmptyDescs  uint64 // dropped: fill ring empty (userspace behind)
	TxRingEmptyDescs      uint64 // kicks that found the TX ring empty
	Received, Transmitted uint64 // descriptors moved through RX and TX
	Completed, Filled     uint64 // descriptors moved through completion and fill
	Kicks                 uint64 // sendto calls
	KickEAGAIN            uint64 // sendto returned EAGAIN (ring or cq full; retried next batch)
	KickENOBUFS           uint64 // sendto returned ENOBUFS (skb alloc; retried next batch)
	KickEBUSY             uint64 // sendto returned EBUSY (retried next batch)
	KickOther             uint64 // sendto returned another errno (counted, retried)
	TxDeferred            uint64 // Transmit calls that found the TX ring full
	RxWakeups             uint64 // recvfrom calls made because the fill ring asked for a wakeup
}
