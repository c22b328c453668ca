package loadtool

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// toolRun is a server tool running in a goroutine.
type toolRun struct {
	addr string       // from its ready line
	out  bytes.Buffer // stdout: read only after code
	code chan int
	mu   sync.Mutex // guards errs
	errs strings.Builder
}

func (r *toolRun) stderr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errs.String()
}

// startTool runs a server tool of suite s and waits for its ready line.
func startTool(t *testing.T, s Suite, args ...string) *toolRun {
	t.Helper()
	r := &toolRun{code: make(chan int, 1)}
	pr, pw := io.Pipe()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			r.mu.Lock()
			r.errs.WriteString(sc.Text() + "\n")
			r.mu.Unlock()
			if a, ok := strings.CutPrefix(sc.Text(), ReadyPrefix); ok {
				addr <- a
			}
		}
	}()
	go func() {
		c := s.Run(args, &r.out, pw)
		pw.Close()
		r.code <- c
	}()
	select {
	case r.addr = <-addr:
	case c := <-r.code:
		t.Fatalf("%s exited %d: %s", args[0], c, r.stderr())
	case <-time.After(5 * time.Second):
		t.Fatalf("%s not ready", args[0])
	}
	return r
}

// runTool runs a client tool of suite s and decodes its JSON into v.
func runTool(t *testing.T, s Suite, v any, args ...string) {
	t.Helper()
	var out, errb bytes.Buffer
	if c := s.Run(args, &out, &errb); c != 0 {
		t.Fatalf("%s: exit %d: %s", args[0], c, errb.String())
	}
	decode(t, args[0], out.Bytes(), v)
}

// TestWorkloadAsk runs owload's tagged echo servers and askers against
// each other on loopback: every request answered by the server's tag,
// with the source address it saw.
func TestWorkloadAsk(t *testing.T) {
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			srv := startTool(t, Workload, proto+"echo", "--listen", "127.0.0.1:0", "--tag", "srv1", "--max-seconds", "5")
			var r AskResult
			runTool(t, Workload, &r, proto+"ask", "--addr", srv.addr, "--flows", "2", "--per-flow", "3", "--timeout", "2s")
			if r.Proto != proto || r.Sent != 6 || r.Answered != 6 || r.ByTag()["srv1"] != 6 || r.P50us <= 0 {
				t.Fatalf("%+v (%s)", r, r.Failures())
			}
			if len(r.FlowsByTag()) != 1 || r.Sticky() != nil || len(r.Peers()) != 1 || r.Peers()[0].String() != "127.0.0.1" {
				t.Errorf("flows %v, sticky %v, peers %v", r.FlowsByTag(), r.Sticky(), r.Peers())
			}
		})
	}
}

// TestWorkloadAskMaxFail: with nothing listening, --max-fail stops
// sending after that many failures and reports the rest unsent.
func TestWorkloadAskMaxFail(t *testing.T) {
	srv := startTool(t, Workload, "udpecho", "--listen", "127.0.0.1:0", "--max-seconds", "1")
	<-srv.code // gone: its port answers nothing now
	var r AskResult
	runTool(t, Workload, &r, "udpask", "--addr", srv.addr, "--flows", "3", "--per-flow", "2", "--timeout", "100ms", "--max-fail", "2")
	if r.Sent != 6 || r.Answered != 0 || !strings.Contains(r.Failures(), "not sent") {
		t.Errorf("%+v: %s", r, r.Failures())
	}
}

func TestSuiteUsage(t *testing.T) {
	for _, c := range []struct {
		s    Suite
		args []string
	}{
		{Bench, nil}, {Bench, []string{"nope"}}, {Bench, []string{"tcpask"}}, {Workload, []string{"rr"}},
		{Workload, []string{"udpask", "--help"}},
	} {
		var out, errb bytes.Buffer
		if got := c.s.Run(c.args, &out, &errb); got != 2 {
			t.Errorf("Run(%q) = %d, want 2 (usage)", c.args, got)
		}
	}
	for _, s := range []Suite{Bench, Workload} {
		for _, n := range s.Names() {
			if !s.Has(n) {
				t.Errorf("suite %d names %q but has no such tool", s, n)
			}
		}
	}
}

func TestWorkloadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"udpask"}, {"tcpask", "--addr", "127.0.0.1:9", "--flows", "0"}, {"udpask", "--addr", "127.0.0.1:9", "--timeout", "1m"},
		{"udpecho", "--max-seconds", "0"}, {"tcpecho", "--nope"},
	} {
		var out, errb bytes.Buffer
		if c := Workload.Run(args, &out, &errb); c != 1 {
			t.Errorf("Run(%q) = %d, want 1: %s", args, c, errb.String())
		}
	}
}

func decode(t *testing.T, what string, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: output %q: %v", what, b, err)
	}
}
