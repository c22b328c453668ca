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

	"github.com/oakwire/oakwire/internal/loadtool"
	"github.com/oakwire/oakwire/internal/testbed"
)

// FloodMeasure is one UDP flood: what the sender sent and the sink got.
type FloodMeasure struct {
	Sender loadtool.FloodResult `json:"sender"`
	Sink   loadtool.SinkResult  `json:"sink"`
	// SenderCPU and SinkCPU are the tools' CPU time (rusage: user and
	// system), in ns.
	SenderCPU    time.Duration `json:"sender_cpu_ns"`
	SinkCPU      time.Duration `json:"sink_cpu_ns"`
	SentPPS      float64       `json:"sent_pps"`
	DeliveredPPS float64       `json:"delivered_pps"`
	LossPct      float64       `json:"loss_pct"`
}

// TCPMeasure is one iperf3 run.
type TCPMeasure struct {
	Gbps        float64 `json:"gbps"`
	Retransmits int64   `json:"retransmits"`
	Seconds     float64 `json:"seconds"`
}

// readyWriter collects a tool's stderr and closes ready when the tool
// writes its ready line (loadtool.ReadyPrefix).
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
	if bytes.HasPrefix(w.buf.Bytes(), []byte(loadtool.ReadyPrefix)) || bytes.Contains(w.buf.Bytes(), []byte("\n"+loadtool.ReadyPrefix)) {
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
	// owner, when set, is the dataplane's own processes (for CPU).
	owner ProcessOwner
}

func (r *runner) toolCmd(ctx context.Context, ns string, args ...string) *exec.Cmd {
	argv := append(append([]string{}, r.cfg.Tool...), args...)
	cmd := testbed.Command(ctx, ns, argv...)
	cmd.Env = append(append(os.Environ(), "GOMAXPROCS=1"), r.cfg.ToolEnv...)
	return cmd
}

// proc is a started server tool with its output.
type proc struct {
	*testbed.Proc
	out  *bytes.Buffer
	errw *readyWriter
}

// stop kills the process (by its PID) if it still runs and reaps it.
func (p *proc) stop() {
	if p != nil {
		p.Kill()
	}
}

// startServer starts a server tool in ns (tracked by the bed) and waits
// until it reports ready.
func (r *runner) startServer(ctx context.Context, ns string, args ...string) (*proc, error) {
	p := &proc{out: &bytes.Buffer{}, errw: newReadyWriter()}
	cmd := r.toolCmd(ctx, ns, args...)
	cmd.Stdout, cmd.Stderr = p.out, p.errw
	tp, err := r.topo.Bed.Launch(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", args[0], err)
	}
	p.Proc = tp
	select {
	case <-p.errw.ready:
		return p, nil
	case <-p.Done():
	case <-time.After(10 * time.Second):
		p.stop()
	}
	var perr error
	if p.Exited() {
		perr = p.Err()
	}
	return nil, fmt.Errorf("%s not ready (%v): %s", args[0], perr, p.errw.String())
}

// runClient runs a client tool in ns bounded by d and decodes its JSON.
func (r *runner) runClient(ctx context.Context, d time.Duration, ns string, v any, args ...string) error {
	_, err := r.runClientCPU(ctx, d, ns, v, args...)
	return err
}

// runClientCPU is runClient that also returns the tool's CPU time.
func (r *runner) runClientCPU(ctx context.Context, d time.Duration, ns string, v any, args ...string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	cmd := r.toolCmd(ctx, ns, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%s: %w: %s", args[0], err, strings.TrimSpace(errb.String()))
	}
	if err := json.Unmarshal(out.Bytes(), v); err != nil {
		return 0, fmt.Errorf("%s: output %q: %w", args[0], out.String(), err)
	}
	return cpuOf(cmd.ProcessState), nil
}

// cpuOf is an exited process's CPU time.
func cpuOf(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	return ps.UserTime() + ps.SystemTime()
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
	var res loadtool.RRResult
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
	var ferr error
	m.SenderCPU, ferr = r.runClientCPU(ctx, d+pause+10*time.Second, r.topo.Client.NS, &m.Sender, "udpflood",
		"--dst", ap(target, r.topo.Ports.Flood), "--size", "64", "--batch", batch,
		"--rate", strconv.FormatFloat(rate, 'f', 0, 64),
		"--count", strconv.FormatUint(c.FloodCount, 10), "--duration", d.String(),
		"--pause", pause.String(), "--cpu", itoa(c.FloodCPU))
	if ferr != nil {
		return m, ferr
	}
	if err := sink.Wait(sinkDur + 5*time.Second); err != nil {
		return m, fmt.Errorf("udpsink: %w: %s", err, sink.errw.String())
	}
	m.SinkCPU = cpuOf(sink.Cmd.ProcessState)
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

func (r *runner) rr(ctx context.Context, target netip.Addr) (loadtool.RRResult, error) {
	c := r.cfg
	var res loadtool.RRResult
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
	srv := &proc{out: &bytes.Buffer{}}
	cmd := testbed.Command(ctx, r.topo.Server.NS, "iperf3", "-s", "-1", "-p", port)
	cmd.Stdout, cmd.Stderr = srv.out, srv.out
	tp, err := r.topo.Bed.Launch(cmd)
	if err != nil {
		return m, fmt.Errorf("iperf3 server: %w", err)
	}
	srv.Proc = tp
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

// CPUMeasure is the CPU time per delivered packet at a fixed paced rate,
// counted two ways. NsPerPkt counts the CPU time of the processes the
// packets run through: the sender and the sink (their rusage; the kernel's
// send and receive paths, veth, XDP, tc and the overlay run inside their
// system calls or in ksoftirqd), every ksoftirqd thread, and the
// dataplane's own processes (ProcessOwner: Oakwire's daemons, spinning
// included). MachineNsPerPkt is the whole machine's busy time (user, nice,
// system, irq, softirq in /proc/stat) over the run less an equally long
// quiet window's before it: the same thing where nothing else runs, but
// other work on the machine makes it noisy.
type CPUMeasure struct {
	RatePPS   float64 `json:"rate_pps"`
	Delivered uint64  `json:"delivered"`
	LossPct   float64 `json:"loss_pct"`
	// Seconds is the measured window (tools started to sink done).
	Seconds float64 `json:"seconds"`
	// ToolsNs, KsoftirqdNs and DataplaneNs make up NsPerPkt.
	ToolsNs     float64 `json:"tools_ns"`
	KsoftirqdNs float64 `json:"ksoftirqd_ns"`
	DataplaneNs float64 `json:"dataplane_ns"`
	NsPerPkt    float64 `json:"ns_per_packet"`
	// BusyNs and QuietBusyNs are the machine's busy time over the window
	// and over the quiet window (scaled to the same length).
	BusyNs          float64 `json:"busy_ns"`
	QuietBusyNs     float64 `json:"quiet_busy_ns"`
	MachineNsPerPkt float64 `json:"machine_ns_per_packet"`
}

// cpu measures CPUMeasure at cfg.CPURate for cfg.CPUDuration.
func (r *runner) cpu(ctx context.Context, target netip.Addr) (CPUMeasure, error) {
	c := r.cfg
	m := CPUMeasure{RatePPS: c.CPURate}
	q0, err := busyTime()
	if err != nil {
		return m, err
	}
	t0 := time.Now()
	select {
	case <-time.After(c.CPUDuration):
	case <-ctx.Done():
		return m, ctx.Err()
	}
	q1, err := busyTime()
	if err != nil {
		return m, err
	}
	quiet := time.Since(t0)
	var pids []int
	if r.owner != nil {
		pids = r.owner.PIDs()
	}
	k0, d0 := ksoftirqdTime(), procsTime(pids)
	t1 := time.Now()
	f, err := r.floodAt(ctx, target, c.CPURate, c.CPUDuration, 300*time.Millisecond)
	if err != nil {
		return m, err
	}
	b1, err := busyTime()
	if err != nil {
		return m, err
	}
	k1, d1 := ksoftirqdTime(), procsTime(pids)
	win := time.Since(t1)
	m.Delivered, m.LossPct, m.Seconds = f.Sink.Received, f.LossPct, win.Seconds()
	if m.Delivered == 0 {
		return m, errors.New("no packet delivered")
	}
	m.ToolsNs = float64(f.SenderCPU + f.SinkCPU)
	m.KsoftirqdNs, m.DataplaneNs = float64(k1-k0), float64(d1-d0)
	m.NsPerPkt = (m.ToolsNs + m.KsoftirqdNs + m.DataplaneNs) / float64(m.Delivered)
	m.BusyNs = float64(b1 - q1)
	m.QuietBusyNs = float64(q1-q0) * win.Seconds() / quiet.Seconds()
	m.MachineNsPerPkt = max(0, m.BusyNs-m.QuietBusyNs) / float64(m.Delivered)
	return m, nil
}

// busyTime is the CPU time all CPUs spent busy since boot, in ns: user,
// nice, system, irq and softirq of /proc/stat's "cpu" line (not idle,
// iowait or steal; guest time is inside user).
func busyTime() (int64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system _ _ irq softirq
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		ticks += v
	}
	return ticks * int64(time.Second) / userHZ, nil
}

// procTime is process pid's CPU time (user and system, all its threads)
// in ns; 0 when it is gone.
func procTime(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing parenthesis (state is field 3).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0
	}
	return (ut + st) * int64(time.Second) / userHZ
}

func procsTime(pids []int) int64 {
	var t int64
	for _, p := range pids {
		t += procTime(p)
	}
	return t
}

// ksoftirqdTime is the CPU time of every ksoftirqd thread, in ns.
func ksoftirqdTime() int64 {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var t int64
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && bytes.HasPrefix(comm, []byte("ksoftirqd/")) {
			t += procTime(pid)
		}
	}
	return t
}

// userHZ is the unit of /proc/stat (USER_HZ, 100 on every Linux ABI).
const userHZ = 100
