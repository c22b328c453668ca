package testbed

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Command returns a command that runs argv inside namespace ns
// (`ip netns exec`, which also gives it a /sys of that namespace). It is not
// tracked: use Start for processes that must die with the bed.
func Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// Run runs argv inside namespace ns, bounded by timeout, and returns its
// combined output.
func Run(timeout time.Duration, ns string, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := Command(ctx, ns, argv...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), ns, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Start starts cmd (for example from Command) and records it, so Close
// kills it by PID if it is still running. `ip netns exec` execs the target,
// so the PID is the program itself. The caller waits for it (cmd.Wait);
// Launch also reaps it.
func (b *Bed) Start(cmd *exec.Cmd) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("testbed: closed")
	}
	if cmd.SysProcAttr == nil {
		// The process dies with the program that started it, even when
		// that program is killed and Close never runs.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	b.procs = append(b.procs, cmd)
	return nil
}

// Proc is a started process that is reaped in the background: Done is
// closed once it has exited and been waited for, and Err is its exit error
// from then on. It is the one way this repository's tests, demo and
// benchmarks run a daemon or tool inside a namespace (Launch, Bed.Launch).
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done
}

// Launch starts cmd (for example from Command) and reaps it in the
// background. Unless cmd sets SysProcAttr, the process gets SIGKILL if the
// program that started it dies first. It is not tracked by any bed: the
// caller stops it (Stop, Kill).
func Launch(cmd *exec.Cmd) (*Proc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Launch is the package's Launch, and Close kills the process if it still
// runs then.
func (b *Bed) Launch(cmd *exec.Cmd) (*Proc, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("testbed: closed")
	}
	p, err := Launch(cmd)
	if err != nil {
		return nil, err
	}
	b.launched = append(b.launched, p)
	return p, nil
}

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the exit error (nil for status 0); valid once Done is closed.
func (p *Proc) Err() error { return p.err }

// Pid is the process's PID (`ip netns exec` execs its target, so for a
// Command it is the program's own).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has exited and been reaped.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends sig, waits up to grace, then kills; it returns whether the
// process is gone (it waits at most 5 s after the kill).
func (p *Proc) Stop(sig syscall.Signal, grace time.Duration) bool {
	if p == nil || p.Exited() {
		return true
	}
	_ = p.Cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return true
	case <-time.After(grace):
	}
	return p.Kill()
}

// Kill sends SIGKILL if the process still runs and waits (at most 5 s)
// until it is reaped; it returns whether it was. Nil-safe.
func (p *Proc) Kill() bool {
	if p == nil || p.Exited() {
		return true
	}
	_ = p.Cmd.Process.Kill()
	select {
	case <-p.done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

// Wait waits for the process to exit at most d, then kills it.
func (p *Proc) Wait(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.Kill()
		return fmt.Errorf("killed after %v", d)
	}
}
