//go:build linux

package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oakwire/oakwire/internal/testbed"
)

// FloodMeasure is one UDP flood: what the sender sent and the sink got.
type FloodMeasure struct {
	Sender       FloodResult `json:"sender"`
	Sink         SinkResult  `json:"sink"`
	SentPPS      float64     `json:"sent_pps"`
	DeliveredPPS float64     `json:"delivered_pps"`
	LossPct      float64     `json:"loss_pct"`
}

// TCPMeasure is one iperf3 run.
type TCPMeasure struct {
	Gbps        float64 `json:"gbps"`
	Retransmits int64   `json:"retransmits"`
	Seconds     float64 `json:"seconds"`
}

// readyWriter collects a tool's stderr and closes ready when the tool
// writes readyLine.
type readyWriter struct {
	mu    sync.Mutex // guards buf and once's effect
	buf   bytes.Buffer
	once  sync.Once
	ready chan struct{}
}

func newReadyWriter() *readyWriter { return &readyWriter{ready: make(chan struct{})} }

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if bytes.Contains(w.buf.Bytes(), []byte(readyLine+"\n")) {
		w.once.Do(func() { close(w.ready) })
	}
	return len(p), nil
}

func (w *readyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.TrimSpace(w.buf.String())
}

// runner runs load tools inside the topology's namespaces.
type runner struct {
	cfg  *Config
	topo *Topology
}

func (r *runner) toolCmd(ctx context.Context, ns string, args ...string) *exec.Cmd {
	argv := append(append([]string{}, r.cfg.Tool...), args...)
	cmd := testbed.Command(ctx, ns, argv...)
	cmd.Env = append(append(os.Environ(), "GOMAXPROCS=1"), r.cfg.ToolEnv...)
	return cmd
}

// proc is a started server tool; done closes when it has exited (and
// been reaped).
type proc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	errw *readyWriter
	done chan struct{}
	err  error // valid after done
}

// stop kills the process (by its PID) if it still runs and reaps it.
func (p *proc) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// wait waits for the process at most d, then kills it.
func (p *proc) wait(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.stop()
		return fmt.Errorf("killed after %v", d)
	}
}

// startServer starts a server tool in ns (tracked by the bed) and waits
// until it reports ready.
func (r *runner) startServer(ctx context.Context, ns string, args ...string) (*proc, error) {
	p := &proc{cmd: r.toolCmd(ctx, ns, args...), out: &bytes.Buffer{}, errw: newReadyWriter(), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.errw
	if err := r.topo.Bed.Start(p.cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", args[0], err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	select {
	case <-p.errw.ready:
		return p, nil
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.stop()
	}
	return nil, fmt.Errorf("%s not ready (%v): %s", args[0], p.err, p.errw.String())
}

// runClient runs a client tool in ns bounded by d and decodes its JSON.
func (r *runner) runClient(ctx context.Context, d time.Duration, ns string, v any, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	cmd := r.toolCmd(ctx, ns, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", args[0], err, strings.TrimSpace(errb.String()))
	}
	if err := json.Unmarshal(out.Bytes(), v); err != nil {
		return fmt.Errorf("%s: output %q: %w", args[0], out.String(), err)
	}
	return nil
}

func itoa(i int) string                { return strconv.Itoa(i) }
func ap(a netip.Addr, p uint16) string { return netip.AddrPortFrom(a, p).String() }

// probe checks that the echo path works at all (a few requests).
func (r *runner) probe(ctx context.Context, target netip.Addr) error {
	srv, err := r.startServer(ctx, r.topo.Server.NS, "udpecho", "--listen", ap(netip.IPv4Unspecified(), r.topo.Ports.Echo), "--duration", "10s")
	if err != nil {
		return err
	}
	defer srv.stop()
	var res RRResult
	if err := r.runClient(ctx, 10*time.Second, r.topo.Client.NS, &res, "rr", "--dst", ap(target, r.topo.Ports.Echo),
		"--count", "5", "--warmup", "0", "--timeout", "500ms", "--duration", "5s"); err != nil {
		return err
	}
	if res.Count == 0 {
		return fmt.Errorf("probe: no answer from %v (%d lost)", ap(target, r.topo.Ports.Echo), res.Lost)
	}
	return nil
}

func (r *runner) flood(ctx context.Context, target netip.Addr) (FloodMeasure, error) {
	return r.floodAt(ctx, target, 0, r.cfg.FloodDuration, time.Second)
}

// floodAt runs udpsink and udpflood for d at rate packets/s (0: as fast
// as the sender goes); the sink exits idle after the last packet.
func (r *runner) floodAt(ctx context.Context, target netip.Addr, rate float64, d, idle time.Duration) (FloodMeasure, error) {
	c := r.cfg
	var m FloodMeasure
	pause := 300 * time.Millisecond
	sinkDur := d + pause + 5*time.Second
	sink, err := r.startServer(ctx, r.topo.Server.NS, "udpsink", "--listen", ap(netip.IPv4Unspecified(), r.topo.Ports.Flood),
		"--duration", sinkDur.String(), "--idle", idle.String(), "--cpu", itoa(c.SinkCPU))
	if err != nil {
		return m, err
	}
	defer sink.stop()
	batch := "64"
	if rate > 0 {
		batch = "16" // smaller bursts: pacing is per batch
	}
	ferr := r.runClient(ctx, d+pause+10*time.Second, r.topo.Client.NS, &m.Sender, "udpflood",
		"--dst", ap(target, r.topo.Ports.Flood), "--size", "64", "--batch", batch,
		"--rate", strconv.FormatFloat(rate, 'f', 0, 64),
		"--count", strconv.FormatUint(c.FloodCount, 10), "--duration", d.String(),
		"--pause", pause.String(), "--cpu", itoa(c.FloodCPU))
	if ferr != nil {
		return m, ferr
	}
	if err := sink.wait(sinkDur + 5*time.Second); err != nil {
		return m, fmt.Errorf("udpsink: %w: %s", err, sink.errw.String())
	}
	if err := json.Unmarshal(sink.out.Bytes(), &m.Sink); err != nil {
		return m, fmt.Errorf("udpsink: output %q: %w", sink.out.String(), err)
	}
	if m.Sender.Seconds > 0 {
		m.SentPPS = float64(m.Sender.Sent) / m.Sender.Seconds
	}
	if w := max(m.Sender.Seconds, m.Sink.Seconds); w > 0 {
		m.DeliveredPPS = float64(m.Sink.Received) / w
	}
	if m.Sender.Sent > 0 {
		m.LossPct = max(0, 100*(1-float64(m.Sink.Received)/float64(m.Sender.Sent)))
	}
	return m, nil
}

// LossFreeMeasure is the highest paced rate found to deliver with at most
// Config.LossFreeMaxPct loss (RFC 2544's throughput, by binary search
// between 0 and the flood's offered rate).
type LossFreeMeasure struct {
	// PPS is the highest loss-free rate offered (0: none found).
	PPS float64 `json:"pps"`
	// FromFlood: the unpaced flood itself lost no more than the bound, so
	// its delivered rate is the loss-free rate and no search ran.
	FromFlood bool    `json:"from_flood,omitempty"`
	Probes    []Probe `json:"probes,omitempty"`
	MaxPct    float64 `json:"max_loss_pct"`
}

// Probe is one paced run of the loss-free search.
type Probe struct {
	RatePPS  float64 `json:"rate_pps"`
	Sent     uint64  `json:"sent"`
	Received uint64  `json:"received"`
	LossPct  float64 `json:"loss_pct"`
}

// lossFree searches the highest rate that delivers with at most
// cfg.LossFreeMaxPct loss, in cfg.LossFreeSteps paced runs of
// cfg.LossFreeProbe each, between 0 and the flood's offered rate.
func (r *runner) lossFree(ctx context.Context, target netip.Addr, f FloodMeasure) (LossFreeMeasure, error) {
	c := r.cfg
	m := LossFreeMeasure{MaxPct: c.LossFreeMaxPct}
	if f.LossPct <= c.LossFreeMaxPct {
		m.PPS, m.FromFlood = f.DeliveredPPS, true
		return m, nil
	}
	lo, hi := 0.0, f.SentPPS
	for range c.LossFreeSteps {
		rate := (lo + hi) / 2
		p, err := r.floodAt(ctx, target, rate, c.LossFreeProbe, 300*time.Millisecond)
		if err != nil {
			return m, err
		}
		m.Probes = append(m.Probes, Probe{RatePPS: rate, Sent: p.Sender.Sent, Received: p.Sink.Received, LossPct: p.LossPct})
		if p.LossPct <= c.LossFreeMaxPct {
			lo, m.PPS = rate, rate
		} else {
			hi = rate
		}
	}
	return m, nil
}

func (r *runner) rr(ctx context.Context, target netip.Addr) (RRResult, error) {
	c := r.cfg
	var res RRResult
	bound := 30 * time.Second
	srv, err := r.startServer(ctx, r.topo.Server.NS, "udpecho", "--listen", ap(netip.IPv4Unspecified(), r.topo.Ports.Echo),
		"--duration", (bound + 10*time.Second).String(), "--cpu", itoa(c.RRCPU))
	if err != nil {
		return res, err
	}
	defer srv.stop()
	err = r.runClient(ctx, bound+10*time.Second, r.topo.Client.NS, &res, "rr", "--dst", ap(target, r.topo.Ports.Echo),
		"--count", itoa(c.RRCount), "--warmup", "200", "--duration", bound.String(), "--cpu", itoa(c.RRCPU))
	return res, err
}

// iperf3 JSON (the fields used).
type iperfJSON struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			Seconds       float64 `json:"seconds"`
			BitsPerSecond float64 `json:"bits_per_second"`
			Retransmits   int64   `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

func (r *runner) tcp(ctx context.Context, target netip.Addr) (TCPMeasure, error) {
	c := r.cfg
	var m TCPMeasure
	secs := max(1, int(c.TCPDuration.Round(time.Second)/time.Second))
	port := strconv.Itoa(int(r.topo.Ports.TCP))
	srv := &proc{cmd: testbed.Command(ctx, r.topo.Server.NS, "iperf3", "-s", "-1", "-p", port), out: &bytes.Buffer{}, done: make(chan struct{})}
	srv.cmd.Stdout, srv.cmd.Stderr = srv.out, srv.out
	if err := r.topo.Bed.Start(srv.cmd); err != nil {
		return m, fmt.Errorf("iperf3 server: %w", err)
	}
	go func() { srv.err = srv.cmd.Wait(); close(srv.done) }()
	defer srv.stop()
	var lastErr error
	for try := range 10 {
		time.Sleep(time.Duration(100*(try+1)) * time.Millisecond)
		cctx, cancel := context.WithTimeout(ctx, time.Duration(secs+15)*time.Second)
		out, err := testbed.Command(cctx, r.topo.Client.NS, "iperf3", "-c", target.String(), "-p", port,
			"-t", strconv.Itoa(secs), "-J", "--connect-timeout", "2000").Output()
		cancel()
		var j iperfJSON
		if jerr := json.Unmarshal(out, &j); jerr != nil {
			lastErr = errors.Join(err, fmt.Errorf("iperf3 output: %w", jerr))
			continue
		}
		if j.Error != "" {
			lastErr = fmt.Errorf("iperf3: %s", j.Error)
			if strings.Contains(j.Error, "connect") {
				continue
			}
			return m, lastErr
		}
		m.Gbps = j.End.SumReceived.BitsPerSecond / 1e9
		m.Seconds = j.End.SumReceived.Seconds
		m.Retransmits = j.End.SumSent.Retransmits
		return m, nil
	}
	srv.stop()
	return m, fmt.Errorf("iperf3 client: %w (server: %s)", lastErr, strings.TrimSpace(srv.out.String()))
}
