//go:build linux

package perf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"
)

// freeUDPPort returns a loopback UDP port that was free a moment ago.
func freeUDPPort(t *testing.T) int {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

type toolRun struct {
	out  bytes.Buffer
	errw *readyWriter
	code chan int
}

// startTool runs a server tool in a goroutine and waits until it is ready.
func startTool(t *testing.T, args ...string) *toolRun {
	r := &toolRun{errw: newReadyWriter(), code: make(chan int, 1)}
	go func() { r.code <- RunTool(args, &r.out, r.errw) }()
	select {
	case <-r.errw.ready:
	case c := <-r.code:
		t.Fatalf("%s exited %d: %s", args[0], c, r.errw.String())
	case <-time.After(5 * time.Second):
		t.Fatalf("%s not ready", args[0])
	}
	return r
}

// TestToolsLoopback runs the load tools against each other on 127.0.0.1
// (bounded: a few hundred packets, a few seconds).
func TestToolsLoopback(t *testing.T) {
	port := freeUDPPort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	sink := startTool(t, "udpsink", "--listen", addr, "--duration", "5s", "--idle", "300ms")
	var fout, ferr bytes.Buffer
	if c := RunTool([]string{"udpflood", "--dst", addr, "--count", "640", "--duration", "2s", "--warmup", "3", "--pause", "10ms"}, &fout, &ferr); c != 0 {
		t.Fatalf("udpflood: %d: %s", c, ferr.String())
	}
	var fr FloodResult
	if err := json.Unmarshal(fout.Bytes(), &fr); err != nil || fr.Sent != 640 {
		t.Fatalf("udpflood: %v %+v", err, fr)
	}
	if c := <-sink.code; c != 0 {
		t.Fatalf("udpsink: %d: %s", c, sink.errw.String())
	}
	var sr SinkResult
	if err := json.Unmarshal(sink.out.Bytes(), &sr); err != nil {
		t.Fatal(err)
	}
	if sr.Received != 640 || sr.Warmup != 3 {
		t.Errorf("udpsink: %+v (want 640 data packets and 3 warm-up)", sr)
	}

	port = freeUDPPort(t)
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	echo := startTool(t, "udpecho", "--listen", addr, "--duration", "3s", "--count", "1000")
	var rout, rerr bytes.Buffer
	if c := RunTool([]string{"rr", "--dst", addr, "--count", "200", "--warmup", "10", "--duration", "3s"}, &rout, &rerr); c != 0 {
		t.Fatalf("rr: %d: %s", c, rerr.String())
	}
	var rr RRResult
	if err := json.Unmarshal(rout.Bytes(), &rr); err != nil {
		t.Fatal(err)
	}
	if rr.Count != 200 || rr.Lost != 0 || rr.P50us <= 0 || rr.P99us < rr.P50us || rr.P999us < rr.P99us {
		t.Errorf("rr: %+v", rr)
	}
	<-echo.code // bounded by --duration
}

func TestToolFlags(t *testing.T) {
	var out, errb bytes.Buffer
	for _, args := range [][]string{
		nil, {"nope"}, {"udpflood", "--dst", "x"}, {"udpflood", "--dst", "127.0.0.1:9", "--duration", "1h"},
		{"rr", "--dst", "127.0.0.1:9", "--size", "4"}, {"udpsink", "--batch", "0"},
	} {
		if c := RunTool(args, &out, &errb); c == 0 {
			t.Errorf("RunTool(%q) = 0, want an error", args)
		}
	}
}
