package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Build compiles servicemanager, netmanager, owload and oakwire-cni into
// dir (go build, from the module containing this package's source or the
// working directory).
func Build(ctx context.Context, dir string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go" // where make deps and the README put it
	}
	root, err := moduleRoot(ctx, goBin)
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", dir+"/",
		"./cmd/servicemanager", "./cmd/netmanager", "./cmd/owload", "./cmd/oakwire-cni")
	cmd.Dir = root
	// Static, like the Makefile's: owload also runs in container images
	// that hold nothing else (Podman).
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build: go build: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// moduleRoot finds the oakwire module: the working directory's module, else
// the source tree this package was built from.
func moduleRoot(ctx context.Context, goBin string) (string, error) {
	out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if gm := strings.TrimSpace(string(out)); err == nil && gm != "" && gm != os.DevNull {
		if b, err := os.ReadFile(gm); err == nil && bytes.Contains(b, []byte("module github.com/oakwire/oakwire\n")) {
			return filepath.Dir(gm), nil
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		root := filepath.Join(filepath.Dir(file), "..", "..")
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			return root, nil
		}
	}
	return "", errors.New("cannot find the oakwire module (run from its directory)")
}
