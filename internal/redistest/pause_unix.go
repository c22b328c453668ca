//go:build unix

package redistest

import "syscall"

// Pause stops the server with SIGSTOP: it keeps its connections and data
// but answers nothing, like a hung server. resume (SIGCONT) is idempotent
// and also runs at the test's cleanup; a stopped server cannot be paused.
func (s *Server) Pause() (resume func()) {
	s.tb.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		s.tb.Fatal("redistest: pause: server not running")
	}
	pid := cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		s.tb.Fatalf("redistest: SIGSTOP redis-server %d: %v", pid, err)
	}
	done := false
	resume = func() {
		if done {
			return
		}
		done = true
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			s.tb.Errorf("redistest: SIGCONT redis-server %d: %v", pid, err)
		}
	}
	s.tb.Cleanup(resume)
	return resume
}
