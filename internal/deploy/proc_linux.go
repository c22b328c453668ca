package deploy

import (
	"github.com/oakwire/oakwire/internal/testbed"

	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// proc is a process started by the deployment.
type proc struct {
	name string
	log  string
	*testbed.Proc
}

// start runs argv inside namespace ns (testbed.Command and Launch: the
// process gets SIGKILL if this process dies first), output appended to
// logPath.
func (d *Deployment) start(name, ns, logPath string, argv ...string) (*proc, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("deploy: closed")
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("deploy: %s: %w", name, err)
	}
	defer lf.Close()
	cmd := testbed.Command(context.Background(), ns, argv...)
	cmd.Env = append(os.Environ(), "OAKWIRE_TOKEN="+d.Token)
	cmd.Stdout, cmd.Stderr = lf, lf
	tp, err := testbed.Launch(cmd)
	if err != nil {
		return nil, fmt.Errorf("deploy: start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, Proc: tp}
	d.procs = append(d.procs, p)
	return p, nil
}

// waitFor polls ok every 50 ms until it holds, p exits, ctx ends or the
// start timeout passes.
func (d *Deployment) waitFor(ctx context.Context, p *proc, what string, ok func() bool) error {
	deadline := time.Now().Add(d.opts.StartTimeout)
	for {
		if ok() {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("deploy: %s: process exited (%v) before ready", what, p.Err())
		case <-ctx.Done():
			return fmt.Errorf("deploy: %s: %w", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("deploy: %s: not ready within %v", what, d.opts.StartTimeout)
		}
	}
}

// DumpLogs writes the last n lines of every process log to w.
func (d *Deployment) DumpLogs(w io.Writer, n int) {
	d.mu.Lock()
	seen := map[string]bool{}
	var logs []string
	for _, p := range d.procs {
		if !seen[p.log] {
			seen[p.log] = true
			logs = append(logs, p.log)
		}
	}
	d.mu.Unlock()
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(w, "---- %s (last %d lines)\n%s\n", filepath.Base(l), len(lines), strings.Join(lines, "\n"))
	}
}

// PIDs lists the deployment's running processes (Redis, the service
// managers, the netmanagers, the servers it started): what the product
// costs on the machine.
func (d *Deployment) PIDs() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	var pids []int
	for _, p := range d.procs {
		if !p.Exited() {
			pids = append(pids, p.Pid())
		}
	}
	return pids
}
