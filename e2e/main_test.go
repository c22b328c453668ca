// Package e2e holds Oakwire's end-to-end tests (SPEC §7): real
// redis-server, root and cluster service managers and one netmanager
// process per emulated node, driven through the same APIs an orchestrator
// uses (internal/deploy). They need root; outside CI they skip without it.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/deploy"
)

// binDir holds the binaries, built once for all tests of the package.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "oakwire-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		err = deploy.Build(ctx, filepath.Join(dir, "bin"))
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		binDir = filepath.Join(dir, "bin")
	}
	return m.Run()
}
