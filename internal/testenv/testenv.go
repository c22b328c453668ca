// Package testenv gates tests on what the machine offers (root, programs on
// PATH). Outside CI a missing capability skips the test with the reason; in
// CI (CI=true) it fails the test, because CI must run every test.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where nothing may
// be skipped for lack of a capability.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skipf skips the test outside CI and fails it in CI.
func Skipf(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if InCI() {
		tb.Fatalf("CI=true forbids skipping: "+format, args...)
	}
	tb.Skipf(format, args...)
}

// RequireRoot needs effective uid 0 (network namespaces, XDP, BPF).
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Skipf(tb, "needs root (euid %d)", os.Geteuid())
	}
}

// RequireBinary needs name on PATH and returns its path.
func RequireBinary(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skipf(tb, "needs %s on PATH (make deps installs it): %v", name, err)
	}
	return p
}
