package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/testenv"
)

// TestDemo runs `make demo`'s job (deploy.RunDemo) with the AF_XDP data
// plane: every check it prints must pass.
func TestDemo(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "redis-server")
	var out strings.Builder
	err := deploy.RunDemoWith(context.Background(), &out, deploy.Options{BinDir: binDir})
	t.Log("\n" + out.String())
	if err != nil {
		skipIfNoXDP(t, err)
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "All checks passed.") {
		t.Error("demo did not report that all checks passed")
	}
}
