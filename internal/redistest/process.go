package redistest

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
)

// StartProcess starts a standalone redis-server outside a test (for the
// benchmark suite): a free loopback port, files in dir, nothing persisted.
// The caller must call Stop. Restart needs a Server from Start.
func StartProcess(dir string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redistest: needs redis-server on PATH (make deps installs it): %w", err)
	}
	var lastErr error
	for range 10 {
		port, err := freePort(false)
		if err != nil {
			lastErr = err
			continue
		}
		s := &Server{
			Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			bin:  bin,
			dir:  dir,
			args: baseArgs(port, dir),
		}
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	return nil, errors.Join(errors.New("redistest: start redis-server"), lastErr)
}
