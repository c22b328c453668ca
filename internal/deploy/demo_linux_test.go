package deploy

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/oakwire/oakwire/internal/testenv"
)

// TestDemoKernelOnly runs the demo with the kernel-only data plane (setup
// and addresses; no service traffic) and checks it leaves no namespace of
// its own behind.
func TestDemoKernelOnly(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "redis-server")
	var out strings.Builder
	if err := RunDemoWith(context.Background(), &out, Options{Dataplane: "none"}); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	for _, want := range []string{"1. Nodes", "2. Service demo.ns.web.default", "RR", "Closest", "3. Containers", "web/0", "client/0", "Cleaning up"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	_, rest, ok := strings.Cut(out.String(), "; namespaces ")
	prefix, _, _ := strings.Cut(rest, "-*")
	if !ok || !strings.HasPrefix(prefix, "ow") {
		t.Fatalf("demo output does not name its namespace prefix")
	}
	for ns := range netnsList(t) {
		if strings.HasPrefix(ns, prefix+"-") {
			t.Errorf("namespace %s left behind", ns)
		}
	}
}

func netnsList(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	m := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			m[f[0]] = true
		}
	}
	return m
}
