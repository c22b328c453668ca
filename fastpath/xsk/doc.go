// Package xsk is Oakwire's AF_XDP socket layer: one Socket per (interface,
// queue) over a UMEM owned by one worker, a lock-free SPSC descriptor ring
// for handing packets between workers, a hybrid Poller (spin while busy,
// then sleep in poll(2)), and a CPU-topology helper for worker placement.
//
// # Ownership
//
// A worker is a goroutine locked to an OS thread that owns its Sockets
// outright: no method of Socket or Poller.Wait is safe for concurrent use,
// and none takes a lock. Frames never move; descriptors do (STYLE.md 4). A
// frame is, at any moment, in exactly one place: the socket's free-frame
// stack, the fill ring, the RX ring, the worker's hands, the TX ring or the
// completion ring. Receive hands frames to the worker; Fill/FillFromFree and
// Transmit give them to the kernel; Complete and FreeFrame put them back on
// the free stack. A []byte from Frame or Packet is valid only while the
// worker holds the frame. Packets that must leave through another worker's
// socket cross on an SPSC ring as Desc values; the frame's UMEM must then be
// readable by the receiving worker (copy into its own frame), because a UMEM
// and its free stack belong to one worker.
//
// Prime the fill ring (FillFromFree) before the socket is put into the
// XSKMAP: a packet redirected to a socket with an empty fill ring is
// dropped and counted in Stats.RxFillRingEmptyDescs.
//
// FillFromFree(0) moves every free frame into the fill ring; a worker that
// also builds packets of its own (AllocFrame) should pass a bound that keeps
// some frames back.
//
// # Layout in a frame
//
// Frames are aligned chunks of FrameSize (2048 or 4096) bytes. On RX the
// kernel writes the packet KernelHeadroom (XDP_PACKET_HEADROOM, 256) +
// Config.Headroom bytes into its frame: measured on Linux 6.18/veth, copy
// mode, desc.Addr - FrameStart(desc.Addr) == 256 for every packet
// (TestEcho). A worker may therefore prepend an outer header in place and
// transmit Desc{Addr: d.Addr - hdr, Len: d.Len + hdr}; TX descriptors may
// start anywhere in a frame but must not cross its end. The kernel masks
// fill-ring addresses to the frame start and returns TX addresses unchanged
// on the completion ring; the socket masks both back to frame starts.
//
// # Why not asavie/xdp
//
// DESIGN.md chose github.com/asavie/xdp v0.3.3 as the socket layer, to be
// replaced piece by piece where it costs correctness or speed. Reading its
// source, every piece has such a cost, so this package talks to the kernel
// directly through golang.org/x/sys/unix and keeps nothing of asavie/xdp
// (it stays in go.mod for now; nothing here imports it). Trap by trap:
//
//   - Ring indexes are plain loads and stores (its fences are commented
//     out). The kernel requires acquire/release ordering on the shared
//     producer/consumer indexes (net/xdp/xsk_queue.h); without it the
//     compiler may cache an index in a register or reorder the entry writes
//     after the index store. We: sync/atomic loads and stores, once per
//     batch, with cached copies between batches, as cilium/ebpf's ringbuf
//     reader does (see the comment in socket_linux.go).
//   - Receive marks frames free the moment they are received, and GetDescs
//     scans a []bool of all frames linearly to find free ones. A frame still
//     being processed or transmitted can be handed out again. We: an O(1)
//     per-socket free-frame stack; a received frame is the worker's until it
//     gives it back.
//   - Complete(n) discards the completion-ring addresses, so transmitted
//     frames cannot be reclaimed into our own free stack. We: Complete reads
//     every address and pushes its frame on the free stack (TestEcho,
//     TestTxOnly check the stack returns to full).
//   - Transmit calls sendto on every call and panics on an unexpected errno.
//     We: sendto only when the kernel needs it — always in copy mode (copy
//     mode transmits only inside sendmsg), and in zero-copy mode only when
//     the TX ring's need_wakeup flag is set — and every errno (EAGAIN,
//     ENOBUFS, EBUSY, others) is counted in Stats and retried on the next
//     batch or Kick; nothing panics. Copy mode also sends at most 32
//     descriptors per sendto by default (TX_BATCH_SIZE); we raise the budget
//     with XDP_MAX_TX_SKB_BUDGET (Linux 6.16+) to the TX ring size and loop
//     on EAGAIN while the kernel makes progress (TestTxOnly: 64 packets per
//     sendto).
//   - Stats dereferences the RX and fill rings and panics on a TX-only
//     socket. We: Stats is one getsockopt(XDP_STATISTICS) plus our counters,
//     and works on RX-only and TX-only sockets (TestTxOnly).
//   - Tiny defaults (128 frames, 64-entry rings), no UMEM headroom option,
//     no need_wakeup, no shared UMEM, no bind mode. We: 4096 frames and
//     2048-entry rings by default, all configurable; Config.Headroom;
//     XDP_USE_NEED_WAKEUP by default; BindAuto/BindCopy/BindZeroCopy with the
//     mode the kernel chose reported by ZeroCopy (XDP_OPTIONS).
//   - Its built-in XDP program redirects all traffic of a queue, which would
//     swallow ARP, SSH and everything else. The steering program is
//     bpfprog's (tests here build a minimal one with cilium/ebpf asm and
//     attach it with a bpf_link).
//
// # Shared UMEM
//
// NewSharedSocket binds a second socket of the same worker to another
// (interface, queue) over the first socket's UMEM (XDP_SHARED_UMEM) with its
// own fill and completion rings, so a frame received on a container port can
// be transmitted on the uplink without a copy (TestSharedUMEM). Two sockets
// on the same (interface, queue) — which would share one fill ring — are not
// supported.
//
// # Polling
//
// Poller implements DESIGN.md's hybrid polling: rounds that find work, and
// rounds within the spin budget after the last work, only yield; after
// that the worker blocks in poll(2) on its socket fds and an eventfd, at
// most PollerConfig.Timeout, so shutdown is noticed. The budget adapts:
// twice the recent gap between bouts of work (an average), capped by
// PollerConfig.Spin, and none once the gaps are longer than the cap
// (PollerConfig.FixedSpin spins the whole cap every time). Notify (any
// goroutine) writes the eventfd when the worker sleeps;
// PollerConfig.Pending closes the race with work that has no fd (an SPSC
// ring).
//
// On systems other than Linux every constructor returns ErrNotSupported.
package xsk
