//go:build !unix

package redisproc

import (
	"errors"
	"fmt"
)

// Pause needs SIGSTOP (unix).
func (s *Server) Pause() (resume func() error, err error) {
	return nil, fmt.Errorf("redisproc: pausing redis-server needs SIGSTOP: %w", errors.ErrUnsupported)
}
