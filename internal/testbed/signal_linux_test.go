package testbed

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/testenv"
)

const signalChildEnv = "OAKWIRE_TESTBED_SIGNAL_CHILD"

// TestSignalChild is the child half of TestCloseOnSignal; without
// signalChildEnv it does nothing. It builds a bed the way a program would,
// prints the prefix and waits (at most 30 s) for a signal.
func TestSignalChild(t *testing.T) {
	if os.Getenv(signalChildEnv) == "" {
		return
	}
	b, err := New("signal-child")
	if err != nil {
		t.Fatal(err)
	}
	b.CloseOnSignal()
	n, err := b.AddNode("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AddNode("b"); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(exec.Command("sleep", "30")); err != nil {
		t.Fatal(err)
	}
	fmt.Println("prefix", b.Prefix(), n.NS)
	time.Sleep(30 * time.Second)
	t.Fatal("no signal within 30 s")
}

// TestCloseOnSignal: Ctrl-C on a program using CloseOnSignal removes its
// namespaces and kills its processes.
func TestCloseOnSignal(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestSignalChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), signalChildEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	var prefix, nodeNS string
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "prefix" {
			prefix, nodeNS = f[1], f[2]
			break
		}
	}
	if prefix == "" {
		t.Fatalf("child printed no prefix: %v", sc.Err())
	}
	if _, err := os.Stat(netnsDir + "/" + nodeNS); err != nil {
		t.Fatalf("child's namespace missing before the signal: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 128+int(syscall.SIGINT) {
		t.Errorf("child exit: %v, want status %d", err, 128+int(syscall.SIGINT))
	}
	assertNoNamespaces(t, prefix)
}
