//go:build linux

package perf

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/redisproc"
	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// OpStat is one control-plane operation under concurrent load.
type OpStat struct {
	N       int     `json:"n"`
	Seconds float64 `json:"seconds"`
	PerSec  float64 `json:"per_sec"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	// RootCPUus is the root process's CPU (user + system) per operation,
	// when the root runs as a process of its own.
	RootCPUus float64 `json:"root_cpu_us,omitempty"`
}

// ControlResult is the control-plane measurement (SPEC §9.3): instance
// deploys and table queries through a real root service manager over
// HTTP on loopback, against one Redis and against a three-master Redis
// Cluster, beside the raw EVALSHA rate of the same Redis (redis-benchmark)
// and the raw PING rate with the same concurrency.
type ControlResult struct {
	Conns int `json:"conns"`
	// Services the deploys are spread over (instance i of the run goes to
	// service i mod Services).
	Services int `json:"services"`
	// Root is how the root ran: "process" (the servicemanager binary, its
	// CPU measured from /proc).
	Root string `json:"root"`
	// Redis, Deploys, Resolves, RedisPing, RawEvalsha: the single Redis.
	Redis      string  `json:"redis"`
	Deploys    OpStat  `json:"instance_deploys"`
	Resolves   OpStat  `json:"resolves"`
	RedisPing  OpStat  `json:"redis_ping"`
	RawEvalsha float64 `json:"raw_evalsha_per_sec"`
	// DeployRatio is Deploys.PerSec / RawEvalsha.
	DeployRatio float64 `json:"deploy_ratio"`
	// Cluster is the same against a three-master Redis Cluster (nil if it
	// could not start).
	Cluster *ControlClusterRun `json:"cluster,omitempty"`
}

// ControlClusterRun is the Redis Cluster part of ControlResult.
type ControlClusterRun struct {
	Masters  []string `json:"masters"`
	Deploys  OpStat   `json:"instance_deploys"`
	Resolves OpStat   `json:"resolves"`
	// RawEvalsha is redis-benchmark's EVALSHA rate against one master.
	RawEvalsha float64 `json:"raw_evalsha_per_sec"`
	// Shares: each master's part of the scripts (EVALSHA/EVAL) root ran
	// during the deploy benchmark, in the order of Masters.
	Shares []float64 `json:"master_shares"`
}

// concurrent runs n operations over conns goroutines and returns their
// latencies and the wall time; the first error stops the run.
func concurrent(ctx context.Context, conns, n int, op func(i int) error) (OpStat, error) {
	lat := make([]float64, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var errOnce sync.Once
	var first error
	var done atomic.Int64
	t0 := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				s := time.Now()
				if err := op(i); err != nil {
					errOnce.Do(func() { first = err })
					next.Store(int64(n))
					return
				}
				lat[i] = float64(time.Since(s).Nanoseconds()) / 1e3
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	st := OpStat{N: int(done.Load()), Seconds: el.Seconds()}
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	if first != nil {
		return st, first
	}
	st.PerSec = float64(n) / el.Seconds()
	st.P50us, st.P99us = Percentile(lat, 50), Percentile(lat, 99)
	return st, nil
}

// controlServices is how many services the deploy benchmark spreads its
// instances over: an orchestrator deploys many services, and root's
// state is sharded by service.
const controlServices = 256

// RunControl starts a private redis-server and a private three-master
// Redis Cluster, and against each a root service manager on loopback
// (bin/servicemanager built from this tree, so its CPU is its own), and
// measures it with cfg.ControlConns connections. Everything it starts is
// stopped before it returns, and on Ctrl-C.
func RunControl(ctx context.Context, cfg Config) (*ControlResult, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "netbench-control-")
	if err != nil {
		return nil, err
	}
	var stops []func()
	var stopMu sync.Mutex
	addStop := func(f func()) {
		stopMu.Lock()
		stops = append(stops, f)
		stopMu.Unlock()
	}
	stopAll := func() {
		stopMu.Lock()
		defer stopMu.Unlock()
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		stops = nil
		_ = os.RemoveAll(dir)
	}
	defer stopAll()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	quit := make(chan struct{})
	defer func() { signal.Stop(sig); close(quit) }()
	go func() {
		select {
		case s := <-sig:
			stopAll()
			os.Exit(128 + int(s.(syscall.Signal)))
		case <-quit:
		}
	}()

	res := &ControlResult{Conns: cfg.ControlConns, Services: controlServices, Root: "process"}
	bins := cfg.BinDir
	if bins == "" {
		bins = filepath.Join(dir, "bin")
		if err := deploy.Build(ctx, bins); err != nil {
			return nil, err
		}
	}
	bin := filepath.Join(bins, "servicemanager")

	if err := os.MkdirAll(filepath.Join(dir, "single"), 0o755); err != nil {
		return nil, err
	}
	srv, err := redisproc.Start(filepath.Join(dir, "single"))
	if err != nil {
		return nil, err
	}
	addStop(srv.Stop)
	res.Redis = srv.Addr
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: cfg.ControlConns * 4, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
	defer rdb.Close()
	res.RawEvalsha = rawEvalsha(ctx, cfg, srv.Addr)
	cfg.progress("  control: single Redis %s (raw EVALSHA %.0f/s)", srv.Addr, res.RawEvalsha)
	r, err := startControlRoot(ctx, dir, bin, []string{"--redis", srv.URL()}, addStop)
	if err != nil {
		return res, err
	}
	if res.Deploys, res.Resolves, err = controlLoad(ctx, cfg, r, nil); err != nil {
		return res, err
	}
	if res.RawEvalsha > 0 {
		res.DeployRatio = res.Deploys.PerSec / res.RawEvalsha
	}
	cfg.progress("  control: %d redis PINGs", cfg.ControlPings)
	res.RedisPing, err = concurrent(ctx, cfg.ControlConns, cfg.ControlPings, func(int) error { return rdb.Ping(ctx).Err() })
	if err != nil {
		return res, fmt.Errorf("redis ping: %w", err)
	}

	res.Cluster, err = controlCluster(ctx, cfg, dir, bin, addStop)
	return res, err
}

// controlCluster is RunControl's Redis Cluster part: a private
// three-master cluster, a root on it, the same load, and each master's
// share of the scripts root ran during the deploys.
func controlCluster(ctx context.Context, cfg Config, dir, bin string, addStop func(func())) (*ControlClusterRun, error) {
	cl, err := redisproc.StartCluster(filepath.Join(dir, "cluster"))
	if cl != nil {
		addStop(cl.Stop)
	}
	if err != nil {
		return nil, fmt.Errorf("redis cluster: %w", err)
	}
	cr := &ControlClusterRun{Masters: cl.Addrs()}
	cr.RawEvalsha = rawEvalsha(ctx, cfg, cl.Addrs()[0])
	cfg.progress("  control: Redis Cluster %v (raw EVALSHA on one master %.0f/s)", cl.Addrs(), cr.RawEvalsha)
	r, err := startControlRoot(ctx, dir, bin, []string{"--redis-cluster", strings.Join(cl.Addrs(), ",")}, addStop)
	if err != nil {
		return cr, err
	}
	cr.Deploys, cr.Resolves, err = controlLoad(ctx, cfg, r, func(phase func() error) error {
		before, err := scriptCalls(ctx, cl.Addrs())
		if err != nil {
			return err
		}
		if err := phase(); err != nil {
			return err
		}
		after, err := scriptCalls(ctx, cl.Addrs())
		if err != nil {
			return err
		}
		total := 0.0
		for i := range after {
			total += after[i] - before[i]
		}
		for i := range after {
			cr.Shares = append(cr.Shares, (after[i]-before[i])/max(total, 1))
		}
		return nil
	})
	return cr, err
}

// controlRoot is a root service manager under test.
type controlRoot struct {
	base string
	pid  int
}

// startControlRoot starts the servicemanager binary bin as a root on
// redisArgs, listening on a free loopback port.
func startControlRoot(ctx context.Context, dir, bin string, redisArgs []string, addStop func(func())) (*controlRoot, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	_ = ln.Close() // the root binds it again; nothing else on loopback takes it in between, or the start fails
	conf := filepath.Join(dir, "root-"+strconv.Itoa(len(redisArgs))+".yaml")
	// Budgets for a loaded machine: the point is throughput, not a 503.
	if err := os.WriteFile(conf, []byte("redis-timeout: 5s\nnotify-timeout: 200ms\nlog-level: error\n"), 0o600); err != nil {
		return nil, err
	}
	args := append([]string{"root", "--config", conf, "--listen", addr, "--insecure"}, redisArgs...)
	cmd := exec.Command(bin, args...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	p, err := testbed.Launch(cmd)
	if err != nil {
		return nil, fmt.Errorf("start root: %w", err)
	}
	addStop(func() { p.Stop(syscall.SIGTERM, 3*time.Second) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, _, err := fasthttp.GetTimeout(nil, "http://"+addr+"/healthz", time.Second); err == nil && st == 200 {
			return &controlRoot{base: "http://" + addr, pid: p.Pid()}, nil
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("root exited: %s", bytes.TrimSpace(logs.Bytes()))
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("root not up within 10 s: %s", bytes.TrimSpace(logs.Bytes()))
		}
	}
}

// cpu is the root process's CPU time so far.
func (r *controlRoot) cpu() time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(r.pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command's closing parenthesis; utime and stime are
	// fields 14 and 15 of the line, in clock ticks (USER_HZ, 100).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// controlLoad registers a cluster and controlServices services, then
// measures cfg.ControlDeploys instance deploys spread over them and
// cfg.ControlQueries resolves of a service with ten instances. around,
// when set, wraps the deploy phase (per-master counters).
func controlLoad(ctx context.Context, cfg Config, r *controlRoot, around func(phase func() error) error) (deploys, resolves OpStat, err error) {
	conns := cfg.ControlConns
	cl := &fasthttp.Client{MaxConnsPerHost: conns, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	do := func(method, path, body string) error {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI(r.base + path)
		req.Header.SetMethod(method)
		if body != "" {
			req.Header.SetContentType("application/json")
			req.SetBodyString(body)
		}
		if err := cl.DoTimeout(req, resp, 10*time.Second); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		if resp.StatusCode() != 200 {
			return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode(), resp.Body())
		}
		return nil
	}
	if err := do("POST", "/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`); err != nil {
		return deploys, resolves, fmt.Errorf("control setup: %w", err)
	}
	if _, err := concurrent(ctx, conns, controlServices, func(i int) error {
		return do("POST", "/api/net/service/deploy", fmt.Sprintf(`{"_id":"s%d","deployment_descriptor":{"app_name":"app","app_ns":"ns","microservice_name":"web%d","microservice_namespace":"default"}}`, i, i))
	}); err != nil {
		return deploys, resolves, fmt.Errorf("control setup: %w", err)
	}
	n := cfg.ControlDeploys
	cfg.progress("  control: %d instance deploys over %d services", n, controlServices)
	phase := func() error {
		c0 := r.cpu()
		var err error
		deploys, err = concurrent(ctx, conns, n, func(i int) error {
			return do("POST", "/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s%d","instance_number":%d,"cluster_id":"c1"}`, i%controlServices, i/controlServices))
		})
		if c := r.cpu() - c0; c > 0 && deploys.N > 0 {
			deploys.RootCPUus = float64(c.Microseconds()) / float64(deploys.N)
		}
		return err
	}
	if around != nil {
		err = around(phase)
	} else {
		err = phase()
	}
	if err != nil {
		return deploys, resolves, fmt.Errorf("instance deploys: %w", err)
	}
	// Resolve a service with ten instances, not one holding thousands.
	const svc = `{"_id":"q","deployment_descriptor":{"app_name":"app","app_ns":"ns","microservice_name":"q","microservice_namespace":"default"}}`
	if err := do("POST", "/api/net/service/deploy", svc); err != nil {
		return deploys, resolves, fmt.Errorf("control setup: %w", err)
	}
	for i := range 10 {
		if err := do("POST", "/api/net/instance/deploy", fmt.Sprintf(`{"_id":"q","instance_number":%d,"cluster_id":"c1"}`, i)); err != nil {
			return deploys, resolves, fmt.Errorf("control setup: %w", err)
		}
	}
	cfg.progress("  control: %d resolves", cfg.ControlQueries)
	c0 := r.cpu()
	resolves, err = concurrent(ctx, conns, cfg.ControlQueries, func(int) error {
		return do("GET", "/api/net/service/app.ns.q.default/instances?cluster_id=c1", "")
	})
	if c := r.cpu() - c0; c > 0 && resolves.N > 0 {
		resolves.RootCPUus = float64(c.Microseconds()) / float64(resolves.N)
	}
	if err != nil {
		return deploys, resolves, fmt.Errorf("resolves: %w", err)
	}
	return deploys, resolves, nil
}

var rpsRe = regexp.MustCompile(`([0-9.]+) requests per second`)

// rawEvalsha is redis-benchmark's rate of EVALSHA of a one-key script
// against addr, with the benchmark's concurrency (0 if it cannot run).
func rawEvalsha(ctx context.Context, cfg Config, addr string) float64 {
	host, port, _ := net.SplitHostPort(addr)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	sha, err := c.ScriptLoad(ctx, "return redis.call('INCR', KEYS[1])").Result()
	if err != nil {
		return 0
	}
	n := strconv.Itoa(max(cfg.ControlPings, 20000))
	out, err := exec.CommandContext(ctx, "redis-benchmark", "-h", host, "-p", port, "-c", strconv.Itoa(cfg.ControlConns),
		"-n", n, "-q", "EVALSHA", sha, "1", "{b}k").Output()
	if err != nil {
		return 0
	}
	var last float64
	sc := bufio.NewScanner(bytes.NewReader(bytes.ReplaceAll(out, []byte("\r"), []byte("\n"))))
	for sc.Scan() {
		if m := rpsRe.FindStringSubmatch(sc.Text()); m != nil {
			last, _ = strconv.ParseFloat(m[1], 64)
		}
	}
	_ = c.Del(ctx, "{b}k").Err()
	return last
}

var cmdstatRe = regexp.MustCompile(`(?m)^cmdstat_(evalsha|eval):calls=(\d+)`)

// scriptCalls reads each master's count of scripts run (EVALSHA, EVAL):
// what root sends under the deploy benchmark is scripts, and INFO's other
// counters also count the commands a script runs.
func scriptCalls(ctx context.Context, addrs []string) ([]float64, error) {
	out := make([]float64, len(addrs))
	for i, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		info, err := c.Info(ctx, "commandstats").Result()
		_ = c.Close()
		if err != nil {
			return nil, fmt.Errorf("commandstats of %s: %w", a, err)
		}
		for _, m := range cmdstatRe.FindAllStringSubmatch(info, -1) {
			v, _ := strconv.ParseFloat(m[2], 64)
			out[i] += v
		}
	}
	return out, nil
}
