//go:build linux

package loadtool

import (
	"bytes"
	"testing"
)

// TestBenchLoopback runs the perf suite's tools against each other on
// 127.0.0.1 (bounded: a few hundred packets, a few seconds).
func TestBenchLoopback(t *testing.T) {
	sink := startTool(t, Bench, "udpsink", "--listen", "127.0.0.1:0", "--duration", "5s", "--idle", "300ms")
	var fr FloodResult
	runTool(t, Bench, &fr, "udpflood", "--dst", sink.addr, "--count", "640", "--duration", "2s", "--warmup", "3", "--pause", "10ms")
	if fr.Sent != 640 || fr.Warmup != 3 {
		t.Fatalf("udpflood: %+v", fr)
	}
	if c := <-sink.code; c != 0 {
		t.Fatalf("udpsink: %d: %s", c, sink.stderr())
	}
	var sr SinkResult
	decode(t, "udpsink", sink.out.Bytes(), &sr)
	if sr.Received != 640 || sr.Warmup != 3 {
		t.Errorf("udpsink: %+v (want 640 data packets and 3 warm-up)", sr)
	}

	echo := startTool(t, Bench, "udpecho", "--listen", "127.0.0.1:0", "--duration", "3s", "--count", "1000")
	var rr RRResult
	runTool(t, Bench, &rr, "rr", "--dst", echo.addr, "--count", "200", "--warmup", "10", "--duration", "3s")
	if rr.Count != 200 || rr.Lost != 0 || rr.P50us <= 0 || rr.P99us < rr.P50us || rr.P999us < rr.P99us {
		t.Errorf("rr: %+v", rr)
	}
	<-echo.code // bounded by --duration
}

// TestWorkloadFloodSink runs udpsink and udpflood with owload's spellings
// (--listen :PORT for both families, --addr, --seconds, --max-packets),
// over IPv4 and IPv6.
func TestWorkloadFloodSink(t *testing.T) {
	for _, dst := range []string{"127.0.0.1", "[::1]"} {
		sink := startTool(t, Workload, "udpsink", "--listen", ":0", "--seconds", "5", "--idle", "300ms")
		port := sink.addr[len("[::]"):]
		var fr FloodResult
		runTool(t, Workload, &fr, "udpflood", "--addr", dst+port, "--seconds", "2", "--max-packets", "500", "--size", "64")
		if fr.Sent != 500 {
			t.Fatalf("udpflood to %s: %+v", dst, fr)
		}
		if c := <-sink.code; c != 0 {
			t.Fatalf("udpsink: %d: %s", c, sink.stderr())
		}
		var sr SinkResult
		decode(t, "udpsink", sink.out.Bytes(), &sr)
		if sr.Received != 500 || sr.Warmup != uint64(fr.Warmup) {
			t.Errorf("udpsink from %s: %+v, want 500 data packets and %d warm-up", dst, sr, fr.Warmup)
		}
	}
}

func TestBenchFlags(t *testing.T) {
	for _, args := range [][]string{
		{"udpflood", "--dst", "x"}, {"udpflood", "--dst", "127.0.0.1:9", "--duration", "1h"},
		{"rr", "--dst", "127.0.0.1:9", "--size", "4"}, {"udpsink", "--batch", "0"}, {"udpflood", "--addr", "127.0.0.1:9", "--seconds", "x"},
	} {
		var out, errb bytes.Buffer
		if c := Bench.Run(args, &out, &errb); c != 1 {
			t.Errorf("Run(%q) = %d, want 1", args, c)
		}
	}
}
