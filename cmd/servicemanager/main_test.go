package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/valyala/fasthttp"
	"gopkg.in/yaml.v3"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs servicemanager with args until the test ends and returns its
// address once it serves.
func start(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, io.Discard, ready) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("servicemanager %v: %v", args, err)
		}
	})
	select {
	case a := <-ready:
		return "http://" + a
	case err := <-done:
		t.Fatalf("servicemanager %v: %v", args, err)
	case <-time.After(10 * time.Second):
		t.Fatal("servicemanager did not start")
	}
	return ""
}

var client = &fasthttp.Client{MaxConnsPerHost: 1024}

func do(t *testing.T, method, url, body, token string) (int, []byte) {
	t.Helper()
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(method)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.SetBodyString(body)
	}
	if err := client.DoTimeout(req, resp, 10*time.Second); err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return 0, nil
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...)
}

// TestRootReplicasOnRedisCluster runs two root replicas through the
// --redis-cluster flag against a real 3-master Redis Cluster and fires 500
// concurrent instance deploys at them: every address is unique.
func TestRootReplicasOnRedisCluster(t *testing.T) {
	rc := redistest.StartCluster(t)
	seeds := strings.Join(rc.Addrs(), ",")
	// 500 concurrent deploys while other test binaries share the two CPUs:
	// the default 300 ms Redis budget would fail dials on a busy accept
	// queue rather than on a dead Redis, which is not what this test is about.
	cfg := filepath.Join(t.TempDir(), "root.yaml")
	if err := os.WriteFile(cfg, []byte("redis-timeout: 3s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := start(t, "root", "--config", cfg, "--listen", freeAddr(t), "--redis-cluster", seeds, "--insecure")
	b := start(t, "root", "--config", cfg, "--listen", freeAddr(t), "--redis-cluster", seeds, "--insecure", "--redis-prefix", "oakwire:")
	urls := []string{a, b}
	if st, body := do(t, "POST", a+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`, ""); st != 200 {
		t.Fatalf("register cluster: %d %s", st, body)
	}
	const services, perService = 4, 125
	var mu sync.Mutex
	seen := map[string]string{}
	claim := func(addr, who string) {
		mu.Lock()
		defer mu.Unlock()
		if p, ok := seen[addr]; ok && p != who {
			t.Errorf("address %s handed to %s and %s", addr, p, who)
		}
		seen[addr] = who
	}
	for s := range services {
		st, body := do(t, "POST", urls[s%2]+"/api/net/service/deploy",
			fmt.Sprintf(`{"_id":"s%d","deployment_descriptor":{"app_name":"a","app_ns":"b","microservice_name":"m%d","microservice_namespace":"n"}}`, s, s), "")
		if st != 200 {
			t.Fatalf("deploy service: %d %s", st, body)
		}
		var d struct {
			ServiceIPList []struct{ IpType, Address, Address_v6 string } `json:"service_ip_list"`
		}
		_ = json.Unmarshal(body, &d)
		for _, ip := range d.ServiceIPList {
			claim(ip.Address, fmt.Sprintf("s%d/%s", s, ip.IpType))
			claim(ip.Address_v6, fmt.Sprintf("s%d/%s", s, ip.IpType))
		}
	}
	var wg sync.WaitGroup
	for i := range services * perService {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, n := i%services, i/services
			st, body := do(t, "POST", urls[i%2]+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s%d","instance_number":%d,"cluster_id":"c1"}`, s, n), "")
			if st != 200 {
				t.Errorf("deploy s%d/%d: %d %s", s, n, st, body)
				return
			}
			var ia struct {
				IP   string `json:"instance_ip"`
				IPv6 string `json:"instance_ip_v6"`
			}
			_ = json.Unmarshal(body, &ia)
			claim(ia.IP, fmt.Sprintf("s%d/%d", s, n))
			claim(ia.IPv6, fmt.Sprintf("s%d/%d", s, n))
		}()
	}
	wg.Wait()
	if want := 2 * (services*2 + services*perService); len(seen) != want {
		t.Errorf("%d distinct addresses, want %d", len(seen), want)
	}
	// The other multi-key scripts on Redis Cluster: lookups with interest,
	// bulk instance removal, service deletion.
	for _, u := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/api/net/service/a.b.m0.n/instances?cluster_id=c1", 200},
		{"DELETE", "/api/net/interest/a_b_m0_n?cluster_id=c1", 200},
		{"DELETE", "/api/net/s0/-1", 200},
		{"DELETE", "/api/net/service/s0", 200},
		{"GET", "/api/net/service/a.b.m0.n/instances", 404},
		{"DELETE", "/api/net/cluster/c1", 200},
	} {
		if st, body := do(t, u.method, b+u.path, "", ""); st != u.want {
			t.Errorf("%s %s: %d %s, want %d", u.method, u.path, st, body, u.want)
		}
	}
	// The cluster role on the same Redis Cluster (redis-cluster from the
	// YAML file): node registration, resolve, and a pushed change.
	ccfg := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(ccfg, []byte("redis-cluster: ["+seeds+"]\ninsecure: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := start(t, "cluster", "--config", ccfg, "--listen", freeAddr(t), "--root", a, "--cluster-id", "cc")
	for _, u := range []struct{ method, path, body string }{
		{"POST", "/api/node/register", `{"node_id":"n1","node_ip":"198.18.0.1"}`},
		{"GET", "/api/node/resolve?node_id=n1&job=a.b.m1.n", ""},
	} {
		if st, body := do(t, u.method, c+u.path, u.body, ""); st != 200 {
			t.Fatalf("%s %s: %d %s", u.method, u.path, st, body)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, _ := do(t, "POST", a+"/api/net/instance/deploy", `{"_id":"s1","instance_number":999,"cluster_id":"cc"}`, "")
		if st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster cc never registered at root: %d", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var since uint64
	for end := time.Now().Add(3 * time.Second); ; {
		st, body := do(t, "GET", c+fmt.Sprintf("/api/node/watch?node_id=n1&since=%d&timeout=1", since), "", "")
		if st == 200 && strings.Contains(string(body), `"instance_number":999`) {
			break
		}
		var w struct{ Version uint64 }
		_ = json.Unmarshal(body, &w)
		if st != 200 || time.Now().After(end) {
			t.Fatalf("watch on Redis Cluster: %d, no instance 999 pushed", st)
		}
		since = w.Version
	}
}

// TestAuthAndConfig: without OAKWIRE_TOKEN and --insecure the process
// refuses to start; with a token every /api/ request needs it; the YAML
// file's keys apply and flags win over them.
func TestAuthAndConfig(t *testing.T) {
	srv := redistest.Start(t)
	t.Setenv("OAKWIRE_TOKEN", "")
	if err := run(context.Background(), []string{"root", "--listen", freeAddr(t), "--redis", srv.URL()}, io.Discard, nil); err == nil || !strings.Contains(err.Error(), "OAKWIRE_TOKEN") {
		t.Fatalf("started without token: %v", err)
	}
	t.Setenv("OAKWIRE_TOKEN", "tok")
	cfg := filepath.Join(t.TempDir(), "root.yaml")
	if err := os.WriteFile(cfg, []byte("listen: 127.0.0.1:1\nredis: "+srv.URL()+"\npolicies: [RR]\nquarantine: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := start(t, "root", "--config", cfg, "--listen", freeAddr(t)) // the flag wins over listen: 127.0.0.1:1
	if st, _ := do(t, "GET", r+"/api/net/subnet?node_id=n1", "", ""); st != 401 {
		t.Errorf("no token: %d, want 401", st)
	}
	if st, _ := do(t, "GET", r+"/api/net/subnet?node_id=n1", "", "wrong"); st != 401 {
		t.Errorf("wrong token: %d, want 401", st)
	}
	if st, b := do(t, "GET", r+"/api/net/subnet?node_id=n1", "", "tok"); st != 200 {
		t.Errorf("token: %d %s", st, b)
	}
	if st, _ := do(t, "GET", r+"/healthz", "", ""); st != 200 {
		t.Errorf("healthz needs no token: %d", st)
	}
	do(t, "POST", r+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`, "tok")
	st, b := do(t, "POST", r+"/api/net/service/deploy", `{"_id":"s","deployment_descriptor":{"app_name":"a","app_ns":"b","microservice_name":"c","microservice_namespace":"d"}}`, "tok")
	if st != 200 || !strings.Contains(string(b), `"10.30.0.1"`) || strings.Contains(string(b), "Closest") {
		t.Errorf("one-policy config not applied: %d %s", st, b)
	}
	// A cluster with the same token registers itself and serves nodes.
	c := start(t, "cluster", "--listen", freeAddr(t), "--redis", srv.URL(), "--root", r, "--cluster-id", "c7")
	if st, b := do(t, "POST", c+"/api/node/register", `{"node_id":"n1","node_ip":"198.18.0.1"}`, "tok"); st != 200 {
		t.Errorf("node register via cluster: %d %s", st, b)
	}
	if st, _ := do(t, "GET", c+"/metrics", "", ""); st != 401 {
		t.Errorf("metrics without a token (no --metrics-open): %d, want 401", st)
	}
	if st, m := do(t, "GET", c+"/metrics", "", "tok"); st != 200 || !strings.Contains(string(m), `oakwire_http_requests_total{code="200",route="POST /api/node/register"} 1`) ||
		!strings.Contains(string(m), `oakwire_build_info{bpf="",commit=`) {
		t.Errorf("metrics: %d", st)
	}
}

// TestExampleConfigsParse keeps configs/*.yaml in step with Config.
func TestExampleConfigsParse(t *testing.T) {
	for _, f := range []string{"../../configs/root.yaml", "../../configs/cluster.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		var c Config
		if err := dec.Decode(&c); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		if c.Listen == "" || c.Redis == "" {
			t.Errorf("%s: listen/redis not read", f)
		}
	}
}
