// Package bedtest makes testbeds for tests: the part of testbed that needs
// package testing, kept out of the programs (perf, the demo) that build
// beds too.
package bedtest

import (
	"testing"

	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/internal/testenv"
)

// New makes a bed for a test: it needs root (testenv.RequireRoot: skip
// outside CI, fail in CI), fails the test on error and closes the bed in
// t.Cleanup.
func New(tb testing.TB, opts ...testbed.Options) *testbed.Bed {
	tb.Helper()
	testenv.RequireRoot(tb)
	b, err := testbed.New(tb.Name(), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	// Ctrl-C on `go test` runs no Cleanup: the signal handler does.
	stop := b.CloseOnSignal()
	tb.Cleanup(func() {
		stop()
		if err := b.Close(); err != nil {
			tb.Errorf("testbed close: %v", err)
		}
	})
	return b
}
