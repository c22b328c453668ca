package control

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// benchConns is the client concurrency of the control-plane benchmarks.
const benchConns = 64

// benchRun runs n operations over benchConns goroutines and returns each
// operation's latency.
func benchRun(b *testing.B, n int, op func(i int) error) []time.Duration {
	b.Helper()
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range benchConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := op(i); err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(err)
	}
	return lat
}

// processCPU is this process's CPU time (user and system) so far. In the
// control-plane benchmarks that is root and its load client together:
// steadier than a rate on a shared machine, and what a change to root
// moves is root's part.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func pct(lat []time.Duration, p float64) float64 {
	s := slices.Clone(lat)
	slices.Sort(s)
	return float64(s[int(float64(len(s)-1)*p)].Microseconds())
}

var benchClient = &fasthttp.Client{MaxConnsPerHost: benchConns, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}

func benchDo(method, url, body string) error {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(method)
	if body != "" {
		req.Header.SetContentType("application/json")
		req.SetBodyString(body)
	}
	if err := benchClient.Do(req, resp); err != nil {
		return err
	}
	if resp.StatusCode() != 200 {
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode(), resp.Body())
	}
	return nil
}

// BenchmarkControlPlane measures, with 64 concurrent connections over real
// HTTP on loopback against a real Redis: instance deploys per second
// (allocation + store + answer), resolve latency p50/p99 (GET the service
// entry by job name), and the raw Redis PING rate with the same
// concurrency for comparison. b.N is bounded so the address pool (65534
// v4 addresses) never runs out.
func BenchmarkControlPlane(b *testing.B) {
	_, rdb := startRedis(b)
	b.Run("InstanceDeploy", func(b *testing.B) {
		n := min(b.N, 40000)
		rdb.FlushAll(context.Background())
		_, R := startRoot(b, rdb, rootOpts{})
		if err := benchDo("POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`); err != nil {
			b.Fatal(err)
		}
		// Spread over services, as an orchestrator's deploys are (and as
		// perf's control section measures): root shards by service.
		const services = 256
		for s := range services {
			if err := benchDo("POST", R+"/api/net/service/deploy", svcBody(fmt.Sprintf("s%d", s), fmt.Sprintf("web%d", s), "")); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		t0, c0 := time.Now(), processCPU()
		lat := benchRun(b, n, func(i int) error {
			return benchDo("POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s%d","instance_number":%d,"cluster_id":"c1"}`, i%services, i/services))
		})
		el, cpu := time.Since(t0), processCPU()-c0
		b.StopTimer()
		b.ReportMetric(float64(n)/el.Seconds(), "deploys/s")
		b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/deploy")
		b.ReportMetric(pct(lat, 0.5), "p50-µs")
		b.ReportMetric(pct(lat, 0.99), "p99-µs")
	})
	b.Run("Resolve", func(b *testing.B) {
		rdb.FlushAll(context.Background())
		_, R := startRoot(b, rdb, rootOpts{})
		for _, u := range []struct{ path, body string }{
			{"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`},
			{"/api/net/service/deploy", svcBody("s1", "web", "")},
		} {
			if err := benchDo("POST", R+u.path, u.body); err != nil {
				b.Fatal(err)
			}
		}
		for i := range 10 {
			if err := benchDo("POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s1","instance_number":%d,"cluster_id":"c1"}`, i)); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		t0 := time.Now()
		lat := benchRun(b, b.N, func(int) error {
			return benchDo("GET", R+"/api/net/service/app.ns.web.default/instances", "")
		})
		el := time.Since(t0)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/el.Seconds(), "resolves/s")
		b.ReportMetric(pct(lat, 0.5), "p50-µs")
		b.ReportMetric(pct(lat, 0.99), "p99-µs")
	})
	b.Run("RedisPing", func(b *testing.B) {
		ctx := context.Background()
		b.ResetTimer()
		t0 := time.Now()
		lat := benchRun(b, b.N, func(int) error { return rdb.Ping(ctx).Err() })
		el := time.Since(t0)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/el.Seconds(), "pings/s")
		b.ReportMetric(pct(lat, 0.5), "p50-µs")
		b.ReportMetric(pct(lat, 0.99), "p99-µs")
	})
}

// BenchmarkDeployHandler is root's handler of an instance deploy without
// the HTTP connection: the request context is filled in memory and the
// handler called by 64 goroutines against a real Redis (so the batcher
// batches as under load). It isolates what root's code and its Redis
// client cost per deploy from the HTTP system calls; run it with
// -benchtime 20000x (past 40,000 deploys it redeploys, a cheaper path).
func BenchmarkDeployHandler(b *testing.B) {
	_, rdb := startRedis(b)
	r, R := startRoot(b, rdb, rootOpts{})
	if err := benchDo("POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`); err != nil {
		b.Fatal(err)
	}
	const services = 256
	for s := range services {
		if err := benchDo("POST", R+"/api/net/service/deploy", svcBody(fmt.Sprintf("s%d", s), fmt.Sprintf("web%d", s), "")); err != nil {
			b.Fatal(err)
		}
	}
	h := r.Handler()
	var next atomic.Int64
	var failed atomic.Value
	b.ReportAllocs()
	b.SetParallelism(benchConns / max(1, runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	c0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		var ctx fasthttp.RequestCtx
		var body []byte
		for pb.Next() {
			i := int(next.Add(1)-1) % 40000
			ctx.Request.Reset()
			ctx.Response.Reset()
			ctx.Request.Header.SetMethod("POST")
			ctx.Request.SetRequestURI("/api/net/instance/deploy")
			ctx.Request.Header.SetContentType("application/json")
			body = fmt.Appendf(body[:0], `{"_id":"s%d","instance_number":%d,"cluster_id":"c1"}`, i%services, i/services)
			ctx.Request.SetBody(body)
			h(&ctx)
			if ctx.Response.StatusCode() != 200 {
				failed.Store(fmt.Errorf("deploy %d: %d %s", i, ctx.Response.StatusCode(), ctx.Response.Body()))
			}
		}
	})
	cpu := processCPU() - c0
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/deploy")
}
