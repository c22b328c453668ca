// Package redisproc starts private redis-server processes: one standalone
// server, or a three-master Redis Cluster. Every server listens on a free
// loopback port, keeps its files in the directory given, persists nothing,
// and is killed by PID on Stop (and when the program that started it dies).
// The perf suite uses it directly; tests through internal/redistest, which
// adds skipping, temporary directories and cleanup.
//
// The redis-server and redis-cli programs must be on PATH (make deps
// installs them).
package redisproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// startTimeout bounds how long a server may take to answer PING.
const startTimeout = 10 * time.Second

// Server is one private redis-server on 127.0.0.1.
type Server struct {
	// Addr is "127.0.0.1:port"; it stays the same across Restart.
	Addr string

	bin  string
	dir  string
	args []string

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd  // nil while stopped
	done chan struct{}
}

// URL is the server's address as a redis:// URL for database 0.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Stop kills the server and waits for it to exit. Stopping a stopped
// server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart starts the server again on the same port (stopping it first if it
// runs) and waits until it answers PING. It starts empty: nothing persists.
func (s *Server) Restart() error {
	s.Stop()
	var err error
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		// The port was ours a moment ago; a bind failure here means the
		// kernel has not released it yet, so try again shortly.
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("redisproc: restart redis-server on %s: %w", s.Addr, err)
}

// start runs the process and waits until it answers PING or exits.
func (s *Server) start() error {
	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	dieWithParent(cmd)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	if err := waitReady(s.Addr, cmd.Process.Pid, done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%w (exit: %v): %s", err, waitErr, lastLines(out.String(), 5))
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

func baseArgs(port int, dir string) []string {
	return []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--dir", dir,
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--loglevel", "warning",
		"--logfile", "",
	}
}

// Cluster is a three-master Redis Cluster without replicas.
type Cluster struct {
	servers []*Server
}

// StartCluster starts three masters with cluster mode on (their files in
// subdirectories of dir), joins them with redis-cli --cluster create, and
// waits until every node reports cluster_state:ok. The caller must call
// Stop; when it fails part way it stops what it started.
func StartCluster(dir string) (*Cluster, error) {
	n := 0
	c, err := startCluster(func() string {
		n++
		d := filepath.Join(dir, strconv.Itoa(n))
		_ = os.MkdirAll(d, 0o755)
		return d
	})
	if err != nil && c != nil {
		c.Stop()
	}
	return c, err
}

// Stop kills every master.
func (c *Cluster) Stop() {
	for _, s := range c.servers {
		s.Stop()
	}
}

func startCluster(tempDir func() string) (*Cluster, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("needs redis-server on PATH: %w", err)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("needs redis-cli on PATH: %w", err)
	}
	c := &Cluster{}
	for i := range 3 {
		dir := tempDir()
		var lastErr error
		var s *Server
		for range 10 {
			port, err := freePort(true)
			if err != nil {
				lastErr = err
				continue
			}
			s = &Server{
				Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
				bin:  bin,
				dir:  dir,
				args: append(baseArgs(port, dir),
					"--cluster-enabled", "yes",
					"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
					"--cluster-node-timeout", "2000"),
			}
			if lastErr = s.start(); lastErr == nil {
				break
			}
			s = nil
			_ = os.Remove(filepath.Join(dir, "nodes.conf"))
		}
		if s == nil {
			return c, fmt.Errorf("start cluster node %d: %w", i, lastErr)
		}
		c.servers = append(c.servers, s)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		return c, fmt.Errorf("redis-cli --cluster create: %w: %s", err, lastLines(string(out), 10))
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range c.servers {
		for {
			info, err := Command(s.Addr, "CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				return c, fmt.Errorf("cluster node %s not ok: %v: %s", s.Addr, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c, nil
}

// Addrs returns the masters' "127.0.0.1:port" addresses.
func (c *Cluster) Addrs() []string {
	a := make([]string, len(c.servers))
	for i, s := range c.servers {
		a[i] = s.Addr
	}
	return a
}

// Servers returns the masters, for tests that stop one of them.
func (c *Cluster) Servers() []*Server { return c.servers }

// freePort returns a loopback port that was free a moment ago; with bus set,
// port+10000 (the cluster bus port) was free as well. The caller must cope
// with losing the race for it (retry on bind failure).
func freePort(bus bool) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("listen: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !bus {
			_ = l.Close()
			return port, nil
		}
		if port+10000 > 65535 {
			_ = l.Close()
			continue
		}
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		_ = l.Close()
		if err != nil {
			continue
		}
		_ = l2.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair")
}

// waitReady polls PING until the server answers or exited is closed. The
// answering server must be process pid: another test's server may have
// taken the port between freePort and the bind.
func waitReady(addr string, pid int, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return errors.New("redis-server exited")
		default:
		}
		if reply, err := Command(addr, "PING"); err == nil && reply == "PONG" {
			info, err := Command(addr, "INFO", "server")
			if err == nil && strings.Contains(info, "process_id:"+strconv.Itoa(pid)+"\r\n") {
				return nil
			}
			if err == nil {
				return fmt.Errorf("port %s answered by another process", addr)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG from %s within %v", addr, startTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Command sends one command in RESP to addr and returns a simple or bulk string
// reply. It is enough for PING and CLUSTER INFO, and keeps this package
// free of a client library.
func Command(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	var buf []byte
	tmp := make([]byte, 4096)
	for {
		n, err := conn.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if reply, ok, perr := parseReply(buf); ok || perr != nil {
			return reply, perr
		}
		if err != nil {
			return "", err
		}
	}
}

// parseReply decodes a complete simple string, error or bulk string.
func parseReply(b []byte) (reply string, complete bool, err error) {
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 {
		return "", false, nil
	}
	line := string(b[1:i])
	switch b[0] {
	case '+':
		return line, true, nil
	case '-':
		return "", true, errors.New(line)
	case '$':
		n, err := strconv.Atoi(line)
		if err != nil {
			return "", true, fmt.Errorf("bad bulk length %q", line)
		}
		if n < 0 {
			return "", true, nil
		}
		if len(b) < i+2+n+2 {
			return "", false, nil
		}
		return string(b[i+2 : i+2+n]), true, nil
	default:
		return "", true, fmt.Errorf("unexpected reply %q", line)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
