package xsk

import (
	"fmt"
	"sync/atomic"
)

// cacheLine is the padding unit that keeps the producer's and the consumer's
// fields on different cache lines (64 bytes on x86-64 and most arm64; 128
// covers the adjacent-line prefetcher too).
const cacheLine = 128

// SPSC is a bounded lock-free ring of descriptors between exactly one
// producer goroutine (Enqueue) and one consumer goroutine (Dequeue), e.g. a
// worker handing packets to the worker that owns the destination socket.
// Len and Cap may be called from either side. Enqueue and Dequeue never
// allocate and never block; a full ring accepts fewer descriptors than
// offered and the producer decides what to drop (and counts it).
//
// The producer publishes tail with an atomic store after writing the slots;
// the consumer publishes head with an atomic store after reading them. Each
// side keeps a cached copy of the other side's index and reloads it only when
// the cached view says the ring is full (producer) or empty (consumer), so
// the shared cache lines move only once per batch.
type SPSC struct {
	buf  []Desc
	mask uint64
	_    [cacheLine - 32]byte

	tail      atomic.Uint64 // next slot to write; written by the producer
	headCache uint64        // producer's last view of head
	_         [cacheLine - 16]byte

	head      atomic.Uint64 // next slot to read; written by the consumer
	tailCache uint64        // consumer's last view of tail
	_         [cacheLine - 16]byte
}

// NewSPSC returns a ring for capacity descriptors; capacity must be a power
// of two.
func NewSPSC(capacity int) (*SPSC, error) {
	if !pow2(capacity) || capacity > 1<<30 {
		return nil, fmt.Errorf("%w: spsc capacity %d not a power of two", ErrInvalidConfig, capacity)
	}
	return &SPSC{buf: make([]Desc, capacity), mask: uint64(capacity - 1)}, nil
}

// Cap returns the ring's capacity.
func (r *SPSC) Cap() int { return len(r.buf) }

// Len returns the number of queued descriptors (a snapshot).
func (r *SPSC) Len() int {
	h := r.head.Load()
	return int(r.tail.Load() - h)
}

// Enqueue copies as many of ds as fit into the ring and returns how many it
// copied. Producer side only.
func (r *SPSC) Enqueue(ds []Desc) int {
	tail := r.tail.Load() // our own index: no other writer
	size := uint64(len(r.buf))
	free := size - (tail - r.headCache)
	if free < uint64(len(ds)) {
		r.headCache = r.head.Load()
		free = size - (tail - r.headCache)
	}
	n := min(free, uint64(len(ds)))
	if n == 0 {
		return 0
	}
	for i := range n {
		r.buf[(tail+i)&r.mask] = ds[i]
	}
	r.tail.Store(tail + n)
	return int(n)
}

// Dequeue copies up to len(ds) descriptors out of the ring and returns how
// many it copied. Consumer side only.
func (r *SPSC) Dequeue(ds []Desc) int {
	head := r.head.Load()
	avail := r.tailCache - head
	if avail < uint64(len(ds)) {
		r.tailCache = r.tail.Load()
		avail = r.tailCache - head
	}
	n := min(avail, uint64(len(ds)))
	if n == 0 {
		return 0
	}
	for i := range n {
		ds[i] = r.buf[(head+i)&r.mask]
	}
	r.head.Store(head + n)
	return int(n)
}
