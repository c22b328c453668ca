//go:build linux

package perf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"

	"github.com/oakwire/oakwire/control"
	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/oakwire/oakwire/ipam"
)

// OpStat is one control-plane operation under concurrent load.
type OpStat struct {
	N       int     `json:"n"`
	Seconds float64 `json:"seconds"`
	PerSec  float64 `json:"per_sec"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
}

// ControlResult is the control-plane measurement (SPEC §9.3): instance
// allocations per second and table-query latency through a real root
// service manager over HTTP on loopback, beside the raw Redis round-trip
// rate with the same concurrency.
type ControlResult struct {
	Conns     int    `json:"conns"`
	Redis     string `json:"redis"`
	Deploys   OpStat `json:"instance_deploys"`
	Resolves  OpStat `json:"resolves"`
	RedisPing OpStat `json:"redis_ping"`
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

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

// RunControl starts a private redis-server and an in-process root service
// manager on loopback and measures it with cfg.ControlConns connections.
// Everything it starts is stopped before it returns, and on Ctrl-C.
func RunControl(ctx context.Context, cfg Config) (*ControlResult, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "netbench-redis-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	srv, err := redistest.StartProcess(dir)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	quit := make(chan struct{})
	defer func() { signal.Stop(sig); close(quit) }()
	go func() {
		select {
		case s := <-sig:
			srv.Stop()
			_ = os.RemoveAll(dir)
			os.Exit(128 + int(s.(syscall.Signal)))
		case <-quit:
		}
	}()

	conns := cfg.ControlConns
	res := &ControlResult{Conns: conns, Redis: srv.Addr}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: conns * 4, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
	defer rdb.Close()
	const prefix = "netbench:"
	alloc, err := ipam.NewRedis(rdb, ipam.Config{}, prefix)
	if err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	root, err := control.NewRoot(control.RootConfig{Prefix: prefix, Log: quietLog, Timeout: 10 * time.Second,
		Notify: control.NotifyConfig{Timeout: 200 * time.Millisecond, MinBackoff: time.Second, MaxBackoff: 10 * time.Second}}, rdb, alloc)
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	defer root.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := control.NewServer(root.Handler(), quietLog)
	go func() { _ = hs.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = hs.ShutdownWithContext(sctx)
	}()
	base := "http://" + ln.Addr().String()
	cl := &fasthttp.Client{MaxConnsPerHost: conns, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	do := func(method, path, body string) error {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI(base + path)
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
	const svc = `{"_id":"s1","deployment_descriptor":{"app_name":"app","app_ns":"ns","microservice_name":"web","microservice_namespace":"default"}}`
	if err := errors.Join(
		do("POST", "/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`),
		do("POST", "/api/net/service/deploy", svc)); err != nil {
		return nil, fmt.Errorf("control setup: %w", err)
	}
	cfg.progress("  control: %d instance deploys", cfg.ControlDeploys)
	res.Deploys, err = concurrent(ctx, conns, cfg.ControlDeploys, func(i int) error {
		return do("POST", "/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s1","instance_number":%d,"cluster_id":"c1"}`, i))
	})
	if err != nil {
		return res, fmt.Errorf("instance deploys: %w", err)
	}
	// Resolve a service with ten instances (as control/bench_test.go
	// does), not the one holding every deployed instance.
	const svc2 = `{"_id":"s2","deployment_descriptor":{"app_name":"app","app_ns":"ns","microservice_name":"q","microservice_namespace":"default"}}`
	if err := do("POST", "/api/net/service/deploy", svc2); err != nil {
		return res, fmt.Errorf("control setup: %w", err)
	}
	for i := range 10 {
		if err := do("POST", "/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s2","instance_number":%d,"cluster_id":"c1"}`, i)); err != nil {
			return res, fmt.Errorf("control setup: %w", err)
		}
	}
	cfg.progress("  control: %d resolves", cfg.ControlQueries)
	res.Resolves, err = concurrent(ctx, conns, cfg.ControlQueries, func(int) error {
		return do("GET", "/api/net/service/app.ns.q.default/instances", "")
	})
	if err != nil {
		return res, fmt.Errorf("resolves: %w", err)
	}
	cfg.progress("  control: %d redis PINGs", cfg.ControlPings)
	res.RedisPing, err = concurrent(ctx, conns, cfg.ControlPings, func(int) error { return rdb.Ping(ctx).Err() })
	if err != nil {
		return res, fmt.Errorf("redis ping: %w", err)
	}
	return res, nil
}
