package redisproc

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
)

// Start starts a standalone redis-server on a free loopback port, its
// files in dir, nothing persisted. The caller must call Stop.
func Start(dir string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redisproc: needs redis-server on PATH (make deps installs it): %w", err)
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
	return nil, errors.Join(errors.New("redisproc: start redis-server"), lastErr)
}
