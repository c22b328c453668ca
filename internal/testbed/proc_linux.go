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
// so the PID is the program itself.
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
