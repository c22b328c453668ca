//go:build linux

package perf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/loadtool"
)

// Config configures one run of the suite. Zero fields take the defaults
// of DefaultConfig (or SmokeConfig with Smoke set).
type Config struct {
	// Dataplanes to measure, in the first round's order (Dataplanes
	// lists the names).
	Dataplanes []string `json:"dataplanes"`
	// Oakwire are netmanager settings for the oakwire dataplanes (zero:
	// netmanager's defaults).
	Oakwire OakwireSettings `json:"oakwire"`
	// BinDir holds the servicemanager, netmanager and owload binaries
	// the oakwire dataplanes run; empty: Run builds them (deploy.Build)
	// into a temporary directory once.
	BinDir string `json:"-"`
	// Rounds of interleaved measurements (order rotated each round).
	Rounds int  `json:"rounds"`
	Smoke  bool `json:"smoke"`
	// Out is the results root: the run writes Out/<timestamp>/ and copies
	// it to Out/latest/.
	Out string `json:"out"`
	// Tool is the argv prefix that runs a load tool (loadtool.Bench) inside a
	// namespace, e.g. [/path/netbench]; default: this executable.
	Tool []string `json:"tool"`
	// ToolEnv is added to the load tools' environment (GOMAXPROCS=1 is
	// always set).
	ToolEnv []string `json:"-"`

	FloodDuration time.Duration `json:"flood_duration"`
	FloodCount    uint64        `json:"flood_count"`
	// The loss-free rate: when a flood loses more than LossFreeMaxPct
	// percent, LossFreeSteps paced runs of LossFreeProbe each search the
	// highest rate that does not (0 steps: no search).
	LossFreeSteps  int           `json:"loss_free_steps"`
	LossFreeProbe  time.Duration `json:"loss_free_probe"`
	LossFreeMaxPct float64       `json:"loss_free_max_pct"`
	RRCount        int           `json:"rr_count"`
	TCPDuration    time.Duration `json:"tcp_duration"`
	// CPU per packet: a paced flood at CPURate packets/s for CPUDuration
	// (a rate every dataplane delivers without loss), the machine's busy
	// CPU time over it, less what an equally long quiet window before it
	// used (0 rate: not measured).
	CPURate     float64       `json:"cpu_rate_pps"`
	CPUDuration time.Duration `json:"cpu_duration"`
	// CPUs: the flood sender and the sink on different CPUs, the
	// request/response client and server on one (DESIGN.md).
	FloodCPU int `json:"flood_cpu"`
	SinkCPU  int `json:"sink_cpu"`
	RRCPU    int `json:"rr_cpu"`

	// Micro runs the fastpath benchmarks with `go test` in ModuleDir
	// (default: the module root above the working directory).
	Micro     bool          `json:"micro"`
	MicroTime time.Duration `json:"micro_benchtime"`
	ModuleDir string        `json:"-"`
	// Control runs the control-plane measurement against a private
	// redis-server.
	Control        bool `json:"control"`
	ControlDeploys int  `json:"control_deploys"`
	ControlQueries int  `json:"control_queries"`
	ControlPings   int  `json:"control_pings"`
	ControlConns   int  `json:"control_conns"`

	// Progress receives progress lines (default os.Stderr; io.Discard to
	// silence).
	Progress io.Writer `json:"-"`
}

// DefaultConfig is the full run (about 1 minute per round).
func DefaultConfig() Config {
	return Config{
		Dataplanes:    []string{"routed", "kernel", OakwireName, OakwireAFXDPName},
		Rounds:        3,
		Out:           "results",
		FloodDuration: 5 * time.Second, FloodCount: 5_000_000,
		LossFreeSteps: 5, LossFreeProbe: 2 * time.Second, LossFreeMaxPct: 0.1,
		RRCount:     20000,
		TCPDuration: 5 * time.Second,
		CPURate:     40_000, CPUDuration: 3 * time.Second,
		FloodCPU: 0, SinkCPU: 1, RRCPU: 0,
		Micro: true, MicroTime: time.Second,
		Control: true, ControlDeploys: 20000, ControlQueries: 50000, ControlPings: 200000, ControlConns: 64,
	}
}

// SmokeConfig is the short run: one round, short durations, small counts;
// the whole run stays under 2 minutes.
func SmokeConfig() Config {
	c := DefaultConfig()
	c.Smoke = true
	c.Rounds = 1
	c.FloodDuration, c.FloodCount = time.Second, 1_000_000
	c.LossFreeSteps, c.LossFreeProbe = 3, 500*time.Millisecond
	c.RRCount = 2000
	c.TCPDuration = time.Second
	c.CPUDuration = time.Second
	c.MicroTime = 100 * time.Millisecond
	c.ControlDeploys, c.ControlQueries, c.ControlPings = 2000, 5000, 20000
	return c
}

func (c *Config) fill() error {
	d := DefaultConfig()
	if c.Smoke {
		d = SmokeConfig()
	}
	if len(c.Dataplanes) == 0 {
		c.Dataplanes = d.Dataplanes
	}
	for _, n := range c.Dataplanes {
		if !slices.Contains(Dataplanes, n) {
			return fmt.Errorf("config: dataplane %q: want one of %v", n, Dataplanes)
		}
	}
	if c.CPURate < 0 || c.CPURate > 10e6 {
		return errors.New("config: cpu rate out of range (0–10M packets/s)")
	}
	if c.CPUDuration <= 0 {
		c.CPUDuration = d.CPUDuration
	}
	if c.Rounds <= 0 {
		c.Rounds = d.Rounds
	}
	if c.Out == "" {
		c.Out = d.Out
	}
	if len(c.Tool) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("tool: %w", err)
		}
		c.Tool = []string{exe}
	}
	if c.FloodDuration <= 0 {
		c.FloodDuration = d.FloodDuration
	}
	if c.LossFreeSteps < 0 || c.LossFreeSteps > 20 {
		return errors.New("config: loss-free steps out of range (0–20)")
	}
	if c.LossFreeProbe <= 0 {
		c.LossFreeProbe = d.LossFreeProbe
	}
	if c.LossFreeMaxPct <= 0 {
		c.LossFreeMaxPct = d.LossFreeMaxPct
	}
	if c.FloodCount == 0 {
		c.FloodCount = d.FloodCount
	}
	if c.RRCount <= 0 {
		c.RRCount = d.RRCount
	}
	if c.TCPDuration <= 0 {
		c.TCPDuration = d.TCPDuration
	}
	if c.MicroTime <= 0 {
		c.MicroTime = d.MicroTime
	}
	if c.ControlDeploys <= 0 {
		c.ControlDeploys = d.ControlDeploys
	}
	if c.ControlQueries <= 0 {
		c.ControlQueries = d.ControlQueries
	}
	if c.ControlPings <= 0 {
		c.ControlPings = d.ControlPings
	}
	if c.ControlConns <= 0 {
		c.ControlConns = d.ControlConns
	}
	if c.Progress == nil {
		c.Progress = os.Stderr
	}
	if c.FloodDuration > 5*time.Minute || c.TCPDuration > 5*time.Minute || c.CPUDuration > 5*time.Minute || c.Rounds > 50 {
		return errors.New("config: durations or rounds out of range")
	}
	if c.ControlDeploys > 60000 {
		return errors.New("config: control deploys > 60000 would exhaust the service pool")
	}
	return nil
}

// RoundResult is one dataplane in one round.
type RoundResult struct {
	Dataplane string `json:"dataplane"`
	Round     int    `json:"round"`
	Position  int    `json:"position"` // place in the round's order
	Target    string `json:"target,omitempty"`
	// Load1 is the 1-minute load average when the round started: other
	// work on the machine shows up here before it skews the numbers.
	Load1    float64            `json:"load1"`
	Info     map[string]string  `json:"info,omitempty"`
	Flood    *FloodMeasure      `json:"flood,omitempty"`
	LossFree *LossFreeMeasure   `json:"loss_free,omitempty"`
	RR       *loadtool.RRResult `json:"rr,omitempty"`
	TCP      *TCPMeasure        `json:"tcp,omitempty"`
	CPU      *CPUMeasure        `json:"cpu,omitempty"`
	Errors   []string           `json:"errors,omitempty"`
	// Counters are the dataplane's own non-zero counters for the round
	// (Counterer), read after Teardown.
	Counters map[string]uint64 `json:"counters,omitempty"`
}

// DPSummary is one dataplane over all rounds.
type DPSummary struct {
	Dataplane    string            `json:"dataplane"`
	Info         map[string]string `json:"info,omitempty"`
	SentPPS      Summary           `json:"sent_pps"`
	DeliveredPPS Summary           `json:"delivered_pps"`
	LossFreePPS  Summary           `json:"loss_free_pps"`
	LossPct      Summary           `json:"loss_pct"`
	P50us        Summary           `json:"p50_us"`
	P99us        Summary           `json:"p99_us"`
	P999us       Summary           `json:"p999_us"`
	RRLost       Summary           `json:"rr_lost"`
	TCPGbps      Summary           `json:"tcp_gbps"`
	CPUNsPerPkt  Summary           `json:"cpu_ns_per_packet"`
	Errors       int               `json:"errors"`
}

// Ratios of an oakwire dataplane's medians to a baseline's; NaN when
// either is missing (JSON null).
type Ratios struct {
	Dataplane    string    `json:"dataplane"`
	Baseline     string    `json:"baseline"`
	DeliveredPPS jsonFloat `json:"delivered_pps"`
	LossFreePPS  jsonFloat `json:"loss_free_pps"`
	P50us        jsonFloat `json:"p50_us"`
	P99us        jsonFloat `json:"p99_us"`
	TCPGbps      jsonFloat `json:"tcp_gbps"`
	CPUNsPerPkt  jsonFloat `json:"cpu_ns_per_packet"`
}

// Report is everything one run measured.
type Report struct {
	Started  time.Time      `json:"started"`
	Elapsed  float64        `json:"elapsed_seconds"`
	Machine  Machine        `json:"machine"`
	Config   Config         `json:"config"`
	Measured []string       `json:"measured"`
	Rounds   []RoundResult  `json:"rounds"`
	Summary  []DPSummary    `json:"summary"`
	Ratios   []Ratios       `json:"ratios"`
	Micro    *MicroResult   `json:"micro,omitempty"`
	Control  *ControlResult `json:"control,omitempty"`
	Notes    []string       `json:"notes,omitempty"`
	// Failures are parts of the suite that did not measure what they
	// should (a section that failed, allocations on a per-packet path, a
	// requested dataplane missing); netbench exits non-zero when there
	// are any, as it does for failed measurements in Rounds.
	Failures []string `json:"failures,omitempty"`
	// Dir is where the files were written.
	Dir string `json:"-"`
}

// jsonFloat marshals NaN and ±Inf as null.
type jsonFloat float64

func (f jsonFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return []byte("null"), nil
	}
	return fmt.Appendf(nil, "%g", v), nil
}

func (f *jsonFloat) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = jsonFloat(math.NaN())
		return nil
	}
	var v float64
	_, err := fmt.Sscan(string(b), &v)
	*f = jsonFloat(v)
	return err
}

func (c *Config) progress(format string, a ...any) {
	fmt.Fprintf(c.Progress, "netbench: "+format+"\n", a...)
}

// Run runs the suite and writes the report files. It returns the report
// also when some measurements failed (their errors are in the report); an
// error means no report could be written.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now(), Config: cfg, Machine: DescribeMachine(), Measured: cfg.Dataplanes}
	if cfg.BinDir == "" && slices.ContainsFunc(cfg.Dataplanes, isOakwire) {
		dir, err := os.MkdirTemp("", "oakwire-bench-bin-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.progress("building servicemanager, netmanager, owload into %s", dir)
		if err := deploy.Build(ctx, dir); err != nil {
			return nil, err
		}
		cfg.BinDir = dir
	}

	total := cfg.Rounds * len(rep.Measured)
	step := 0
	for round := range cfg.Rounds {
		order := rotate(rep.Measured, round)
		for pos, name := range order {
			step++
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			cfg.progress("[%d/%d] round %d/%d: %s", step, total, round+1, cfg.Rounds, name)
			rr := runOne(ctx, &cfg, name, round, pos)
			for _, e := range rr.Errors {
				cfg.progress("  %s: error: %s", name, e)
			}
			rep.Rounds = append(rep.Rounds, rr)
		}
	}
	rep.summarize()

	if cfg.Micro {
		cfg.progress("micro: go test -bench ./fastpath/ (benchtime %v)", cfg.MicroTime)
		m, err := RunMicro(ctx, cfg.ModuleDir, cfg.MicroTime)
		if err != nil {
			rep.Failures = append(rep.Failures, "micro benchmarks: "+err.Error())
		}
		if m != nil {
			for _, b := range m.Benchmarks {
				if b.AllocsOp > 0 {
					rep.Failures = append(rep.Failures, fmt.Sprintf("micro: %s allocates (%g allocs/op; SPEC §9.1 wants 0)", b.Name, b.AllocsOp))
				}
			}
		}
		rep.Micro = m
	}
	if cfg.Control {
		cfg.progress("control plane: one redis-server and a 3-master Redis Cluster, a root servicemanager, %d connections", cfg.ControlConns)
		c, err := RunControl(ctx, cfg)
		if err != nil {
			rep.Failures = append(rep.Failures, "control plane: "+err.Error())
		}
		rep.Control = c
	}
	rep.Elapsed = time.Since(rep.Started).Seconds()
	dir, err := rep.Write(cfg.Out)
	if err != nil {
		return rep, err
	}
	rep.Dir = dir
	cfg.progress("report: %s", filepath.Join(dir, "report.md"))
	return rep, nil
}

// rotate returns names rotated left by r.
func rotate(names []string, r int) []string {
	if len(names) == 0 {
		return nil
	}
	r %= len(names)
	return append(slices.Clone(names[r:]), names[:r]...)
}

// runOne builds a fresh topology, sets dataplane name up and measures it.
// The topology is removed before it returns, also on failure; Ctrl-C
// removes it too.
func runOne(ctx context.Context, cfg *Config, name string, round, pos int) (res RoundResult) {
	res = RoundResult{Dataplane: name, Round: round + 1, Position: pos + 1, Load1: load1()}
	fail := func(what string, err error) { res.Errors = append(res.Errors, what+": "+err.Error()) }
	topo, err := NewTopology("perf-" + name)
	if err != nil {
		fail("topology", err)
		return res
	}
	defer func() {
		if err := topo.Close(); err != nil {
			fail("testbed close", err)
		}
	}()
	dp := newDataplane(name, cfg)
	err = dp.Setup(ctx, topo)
	defer func() {
		if err := dp.Teardown(); err != nil {
			fail("teardown", err)
		}
		if c, ok := dp.(Counterer); ok {
			res.Counters = c.Counters()
		}
	}()
	if err != nil {
		fail("setup", err)
		return res
	}
	if d, ok := dp.(Describer); ok {
		res.Info = d.Describe()
	}
	target := dp.Target().Addr()
	res.Target = dp.Target().String()
	r := &runner{cfg: cfg, topo: topo}
	r.owner, _ = dp.(ProcessOwner)
	if err := r.probe(ctx, target); err != nil {
		fail("probe", err)
		return res
	}
	cfg.progress("  %s: udp flood %v (sender cpu %d, sink cpu %d)", name, cfg.FloodDuration, cfg.FloodCPU, cfg.SinkCPU)
	if m, err := r.flood(ctx, target); err != nil {
		fail("flood", err)
	} else {
		res.Flood = &m
		cfg.progress("  %s: %.0f pps delivered of %.0f sent (%.2f %% lost)", name, m.DeliveredPPS, m.SentPPS, m.LossPct)
		if cfg.LossFreeSteps > 0 {
			if m.LossPct > cfg.LossFreeMaxPct {
				cfg.progress("  %s: loss-free rate: %d paced runs of %v", name, cfg.LossFreeSteps, cfg.LossFreeProbe)
			}
			if lf, err := r.lossFree(ctx, target, m); err != nil {
				fail("loss-free", err)
			} else {
				res.LossFree = &lf
				cfg.progress("  %s: loss-free (≤ %.1f %% lost) at %.0f pps", name, cfg.LossFreeMaxPct, lf.PPS)
			}
		}
	}
	cfg.progress("  %s: request/response x%d (cpu %d)", name, cfg.RRCount, cfg.RRCPU)
	if m, err := r.rr(ctx, target); err != nil {
		fail("rr", err)
	} else {
		res.RR = &m
		cfg.progress("  %s: p50 %.0f µs, p99 %.0f µs, p99.9 %.0f µs, %d lost", name, m.P50us, m.P99us, m.P999us, m.Lost)
	}
	cfg.progress("  %s: tcp iperf3 %v", name, cfg.TCPDuration)
	if m, err := r.tcp(ctx, target); err != nil {
		fail("tcp", err)
	} else {
		res.TCP = &m
		cfg.progress("  %s: %.2f Gbit/s", name, m.Gbps)
	}
	if cfg.CPURate > 0 {
		cfg.progress("  %s: cpu per packet at %.0f pps paced, %v", name, cfg.CPURate, cfg.CPUDuration)
		if m, err := r.cpu(ctx, target); err != nil {
			fail("cpu", err)
		} else {
			res.CPU = &m
			cfg.progress("  %s: %.0f ns of CPU per delivered packet (%.2f %% lost)", name, m.NsPerPkt, m.LossPct)
		}
	}
	return res
}

func (rep *Report) summarize() {
	rep.Summary = nil
	for _, name := range rep.Measured {
		s := DPSummary{Dataplane: name}
		var sent, deliv, loss, lossFree, p50, p99, p999, lost, tcp, cpu []float64
		for _, r := range rep.Rounds {
			if r.Dataplane != name {
				continue
			}
			if r.Info != nil {
				s.Info = r.Info
			}
			s.Errors += len(r.Errors)
			if f := r.Flood; f != nil {
				sent, deliv, loss = append(sent, f.SentPPS), append(deliv, f.DeliveredPPS), append(loss, f.LossPct)
			}
			if lf := r.LossFree; lf != nil {
				lossFree = append(lossFree, lf.PPS)
			}
			if x := r.RR; x != nil && x.Count > 0 {
				p50, p99, p999 = append(p50, x.P50us), append(p99, x.P99us), append(p999, x.P999us)
				lost = append(lost, float64(x.Lost))
			}
			if t := r.TCP; t != nil {
				tcp = append(tcp, t.Gbps)
			}
			if c := r.CPU; c != nil {
				cpu = append(cpu, c.NsPerPkt)
			}
		}
		s.SentPPS, s.DeliveredPPS, s.LossPct = Summarize(sent), Summarize(deliv), Summarize(loss)
		s.LossFreePPS = Summarize(lossFree)
		s.P50us, s.P99us, s.P999us, s.RRLost = Summarize(p50), Summarize(p99), Summarize(p999), Summarize(lost)
		s.TCPGbps, s.CPUNsPerPkt = Summarize(tcp), Summarize(cpu)
		rep.Summary = append(rep.Summary, s)
	}
	rep.Ratios = nil
	for _, name := range rep.Measured {
		if !isOakwire(name) {
			continue
		}
		ow := rep.summaryOf(name)
		if m := ow.Info["xdp_mode"]; m != "" {
			rep.Machine.XDPMode = m
		}
		for _, base := range []string{"kernel", "routed"} {
			rep.Ratios = append(rep.Ratios, ratios(ow, rep.summaryOf(base)))
		}
	}
}

// ratios are a's medians over b's.
func ratios(a, b DPSummary) Ratios {
	return Ratios{
		Dataplane:    a.Dataplane,
		Baseline:     b.Dataplane,
		DeliveredPPS: jsonFloat(Ratio(a.DeliveredPPS, b.DeliveredPPS)),
		LossFreePPS:  jsonFloat(Ratio(a.LossFreePPS, b.LossFreePPS)),
		P50us:        jsonFloat(Ratio(a.P50us, b.P50us)),
		P99us:        jsonFloat(Ratio(a.P99us, b.P99us)),
		TCPGbps:      jsonFloat(Ratio(a.TCPGbps, b.TCPGbps)),
		CPUNsPerPkt:  jsonFloat(Ratio(a.CPUNsPerPkt, b.CPUNsPerPkt)),
	}
}

// summaryOf returns the summary of name, or an empty one.
func (rep *Report) summaryOf(name string) DPSummary {
	for _, s := range rep.Summary {
		if s.Dataplane == name {
			return s
		}
	}
	return DPSummary{Dataplane: name}
}

// load1 is the 1-minute load average, or NaN.
func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return math.NaN()
	}
	return v
}
