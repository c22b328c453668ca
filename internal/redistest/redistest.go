// Package redistest starts private redis-server processes for tests
// (internal/redisproc): one standalone server, or a three-master Redis
// Cluster, in the test's temporary directory, killed when the test ends.
//
// Without redis-server and redis-cli on PATH a test is skipped, or fails
// under CI (see internal/testenv).
package redistest

import (
	"errors"
	"testing"

	"github.com/oakwire/oakwire/internal/redisproc"
	"github.com/oakwire/oakwire/internal/testenv"
)

// Server is a redisproc.Server bound to its test: what goes wrong fails
// the test.
type Server struct {
	*redisproc.Server
	tb testing.TB
}

// Start starts a standalone redis-server and registers its cleanup.
func Start(tb testing.TB) *Server {
	tb.Helper()
	testenv.RequireBinary(tb, "redis-server")
	s, err := redisproc.Start(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Stop)
	return &Server{Server: s, tb: tb}
}

// Restart starts the server again on the same port, empty.
func (s *Server) Restart() {
	s.tb.Helper()
	if err := s.Server.Restart(); err != nil {
		s.tb.Fatal(err)
	}
}

// Pause stops the server with SIGSTOP, like a hung server; resume, which
// also runs at the test's cleanup, continues it.
func (s *Server) Pause() (resume func()) {
	s.tb.Helper()
	r, err := s.Server.Pause()
	if errors.Is(err, errors.ErrUnsupported) {
		s.tb.Skip(err)
	}
	if err != nil {
		s.tb.Fatal(err)
	}
	resume = func() {
		if err := r(); err != nil {
			s.tb.Error(err)
		}
	}
	s.tb.Cleanup(resume)
	return resume
}

// Cluster is a redisproc.Cluster bound to its test.
type Cluster struct {
	*redisproc.Cluster
	tb testing.TB
}

// StartCluster starts a three-master cluster and registers its cleanup.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	testenv.RequireBinary(tb, "redis-server")
	testenv.RequireBinary(tb, "redis-cli")
	c, err := redisproc.StartCluster(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Stop)
	return &Cluster{Cluster: c, tb: tb}
}

// Servers are the masters, bound to the test.
func (c *Cluster) Servers() []*Server {
	var out []*Server
	for _, s := range c.Cluster.Servers() {
		out = append(out, &Server{Server: s, tb: c.tb})
	}
	return out
}
