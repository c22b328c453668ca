//go:build linux

package xsk

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Poller implements hybrid polling for one worker: while rounds find work
// the worker only yields (PollerConfig.Yield); after Spin without work it
// blocks in poll(2) on its sockets' fds and an eventfd, for at most Timeout.
// Busy polling received ~13x more packets per second than blocking per
// batch, and pure busy polling starved applications on 2 cores (p99 ≈ 5 ms),
// see DESIGN.md. Wait is for the owning worker only; Notify may be called
// from any goroutine.
type Poller struct {
	cfg       PollerConfig
	pfds      []unix.PollFd // [0] is the eventfd
	efd       int
	timeoutMs int
	spin      spinner
	sleeping  atomic.Bool
	closed    bool
	st        PollerStats
}

// NewPoller creates a poller with its wakeup eventfd.
func NewPoller(cfg PollerConfig) (*Poller, error) {
	cfg = cfg.withDefaults()
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &Poller{
		cfg:       cfg,
		efd:       efd,
		pfds:      []unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}},
		timeoutMs: max(1, int(cfg.Timeout.Milliseconds())),
		spin:      newSpinner(cfg.Spin, cfg.FixedSpin),
	}, nil
}

// Add makes fd (a Socket's Fd) wake a sleeping Wait when it is readable.
func (p *Poller) Add(fd int) {
	p.pfds = append(p.pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
}

// Remove stops watching fd (call it before closing a Socket the poller
// watches: poll(2) on a closed or reused fd misbehaves). Worker side only.
func (p *Poller) Remove(fd int) {
	for i := 1; i < len(p.pfds); i++ {
		if p.pfds[i].Fd == int32(fd) {
			p.pfds = append(p.pfds[:i], p.pfds[i+1:]...)
			i--
		}
	}
}

// Stats returns the poller's counters. Worker side only.
func (p *Poller) Stats() PollerStats { return p.st }

// Wait is called by the worker after every round; didWork says whether the
// round moved any packet. It returns at once (after yielding) while the
// worker is busy or within Spin of its last work, and otherwise blocks until
// a socket is readable, Notify is called, or Timeout passes; slept reports
// whether it blocked. The worker checks its stop condition after every Wait.
func (p *Poller) Wait(didWork bool) (slept bool, err error) {
	if p.closed {
		return false, ErrClosed
	}
	now := nanotime()
	if didWork {
		p.spin.work(now)
		p.yield()
		return false, nil
	}
	if p.spin.idle(now) {
		p.yield()
		return false, nil
	}
	p.sleeping.Store(true)
	if p.cfg.Pending != nil && p.cfg.Pending() {
		p.sleeping.Store(false)
		p.st.Cancelled++
		p.spin.work(now)
		return false, nil
	}
	p.st.Sleeps++
	n, err := unix.Poll(p.pfds, p.timeoutMs)
	p.sleeping.Store(false)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return true, nil
		}
		p.st.PollErrors++
		return true, fmt.Errorf("poll: %w", err)
	}
	if n > 0 {
		p.st.Wakeups++ // the next round finds the work and ends the idle bout
		if p.pfds[0].Revents&unix.POLLIN != 0 {
			p.st.Notified++
			var buf uint64 // drain; EAGAIN when raced is fine
			unix.RawSyscall(unix.SYS_READ, uintptr(p.efd), uintptr(unsafe.Pointer(&buf)), 8)
		}
	}
	return true, nil
}

func (p *Poller) yield() {
	switch p.cfg.Yield {
	case YieldGo:
		runtime.Gosched()
	case YieldOS:
		unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// Notify wakes the worker if it is sleeping in Wait (or about to). It is
// safe for concurrent use and makes a system call only when the worker
// sleeps.
func (p *Poller) Notify() error {
	if !p.sleeping.Load() {
		return nil
	}
	// A RawSyscall, as on every per-round path: an eventfd write never
	// blocks (EFD_NONBLOCK) and Notify runs on other workers' rounds.
	one := uint64(1)
	_, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(p.efd), uintptr(unsafe.Pointer(&one)), 8)
	if e != 0 && e != unix.EAGAIN {
		return fmt.Errorf("eventfd write: %w", e)
	}
	return nil
}

// Close closes the eventfd. The sockets stay open; they belong to the worker.
func (p *Poller) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	if err := unix.Close(p.efd); err != nil {
		return fmt.Errorf("close eventfd: %w", err)
	}
	return nil
}
