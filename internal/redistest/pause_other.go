//go:build !unix

package redistest

// Pause skips the test: pausing a process needs SIGSTOP (unix).
func (s *Server) Pause() (resume func()) {
	s.tb.Skip("redistest: pausing redis-server needs SIGSTOP (unix)")
	return func() {}
}
