package testbed

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// CloseOnSignal makes SIGINT, SIGTERM and SIGHUP close the bed and exit the
// program with status 128+signal, for programs (demo, benchmarks) and tests
// (NewT) that must not leave namespaces behind on Ctrl-C. The returned stop
// undoes it. One handler serves every registered bed, so a signal closes
// them all before the program exits; with none registered the signals have
// their default effect again.
func (b *Bed) CloseOnSignal() (stop func()) {
	onSignal.add(b)
	var once sync.Once
	return func() { once.Do(func() { onSignal.remove(b) }) }
}

// onSignal is the process-wide set of beds CloseOnSignal registered.
var onSignal signalSet

type signalSet struct {
	mu   sync.Mutex // guards beds and ch
	beds map[*Bed]struct{}
	ch   chan os.Signal // nil until the first add; notified while beds is not empty
}

func (s *signalSet) add(b *Bed) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan os.Signal, 1)
		s.beds = map[*Bed]struct{}{}
		go s.wait()
	}
	if len(s.beds) == 0 {
		signal.Notify(s.ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	}
	s.beds[b] = struct{}{}
}

func (s *signalSet) remove(b *Bed) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.beds, b)
	if len(s.beds) == 0 {
		signal.Stop(s.ch)
	}
}

func (s *signalSet) wait() {
	for sig := range s.ch {
		s.mu.Lock()
		if len(s.beds) == 0 { // raced with the last remove
			s.mu.Unlock()
			continue
		}
		for b := range s.beds {
			if err := b.Close(); err != nil {
				fmt.Fprintf(os.Stderr, "testbed %s: close on %v: %v\n", b.prefix, sig, err)
			}
		}
		code := 1
		if n, ok := sig.(syscall.Signal); ok {
			code = 128 + int(n)
		}
		os.Exit(code)
	}
}
