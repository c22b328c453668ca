//go:build unix

package redisproc

import (
	"errors"
	"fmt"
	"syscall"
)

// Pause stops the server with SIGSTOP: it keeps its connections and data
// but answers nothing, like a hung server. resume (SIGCONT) is idempotent;
// a stopped server cannot be paused.
func (s *Server) Pause() (resume func() error, err error) {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return nil, errors.New("redisproc: pause: server not running")
	}
	pid := cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("redisproc: SIGSTOP redis-server %d: %w", pid, err)
	}
	done := false
	return func() error {
		if done {
			return nil
		}
		done = true
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			return fmt.Errorf("redisproc: SIGCONT redis-server %d: %w", pid, err)
		}
		return nil
	}, nil
}
