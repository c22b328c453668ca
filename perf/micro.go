//go:build linux

package perf

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// MicroBench is one line of `go test -bench` output.
type MicroBench struct {
	Name       string             `json:"name"`
	Iterations int64              `json:"iterations"`
	NsPerOp    float64            `json:"ns_per_op"`
	BytesPerOp float64            `json:"bytes_per_op"`
	AllocsOp   float64            `json:"allocs_per_op"`
	Metrics    map[string]float64 `json:"metrics"`
	// NsPerPacket and AllocsPerPacket are set for the per-packet
	// benchmarks (those reporting ns/packet); allocs/packet is allocs/op
	// divided by the packets per op.
	NsPerPacket     float64 `json:"ns_per_packet,omitempty"`
	CPUNsPerPacket  float64 `json:"cpu_ns_per_packet,omitempty"`
	AllocsPerPacket float64 `json:"allocs_per_packet"`
	PerPacket       bool    `json:"per_packet"`
}

// MicroResult is the fastpath benchmark run.
type MicroResult struct {
	Command    string       `json:"command"`
	Benchmarks []MicroBench `json:"benchmarks"`
}

// moduleDir finds the Oakwire module root at or above the working
// directory.
func moduleDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/oakwire/oakwire\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("oakwire module root not found above the working directory")
		}
		dir = parent
	}
}

// RunMicro runs the fastpath benchmarks (`go test -run=^$ -bench=.
// -benchmem ./fastpath/`) in the module at dir ("" = found above the
// working directory) and parses them.
func RunMicro(ctx context.Context, dir string, benchtime time.Duration) (*MicroResult, error) {
	if dir == "" {
		d, err := moduleDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("go toolchain: %w", err)
	}
	args := []string{"test", "-run=^$", "-bench=.", "-benchmem", "-count=1", "-benchtime=" + benchtime.String(), "./fastpath/"}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	res := &MicroResult{Command: "go " + strings.Join(args, " ")}
	res.Benchmarks = ParseBench(out)
	if err != nil {
		return res, fmt.Errorf("%s: %w: %s", res.Command, err, strings.TrimSpace(stderr.String()+string(out)))
	}
	if len(res.Benchmarks) == 0 {
		return res, fmt.Errorf("%s: no benchmark lines", res.Command)
	}
	return res, nil
}

// ParseBench parses the benchmark lines of `go test -bench` output.
func ParseBench(out []byte) []MicroBench {
	var bs []MicroBench
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		iters, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		b := MicroBench{Name: f[0], Iterations: iters, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			b.Metrics[f[i+1]] = v
		}
		b.NsPerOp, b.BytesPerOp, b.AllocsOp = b.Metrics["ns/op"], b.Metrics["B/op"], b.Metrics["allocs/op"]
		if nsp, ok := b.Metrics["ns/packet"]; ok && nsp > 0 {
			b.PerPacket = true
			b.NsPerPacket = nsp
			b.CPUNsPerPacket = b.Metrics["cpu-ns/packet"]
			if b.NsPerOp > 0 {
				b.AllocsPerPacket = b.AllocsOp / (b.NsPerOp / nsp)
			}
		} else {
			b.AllocsPerPacket = b.AllocsOp
		}
		bs = append(bs, b)
	}
	return bs
}
