package control

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// testBudget is the services' per-request budget in tests: generous, since
// the race pass runs 500 concurrent deploys at a tenth of normal speed.
// Outage tests do not depend on it: a stopped Redis refuses at once.
const testBudget = 10 * time.Second

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// The client library logs every failed dial; the outage tests make many.
func init() { redis.SetLogger(quietRedisLog{}) }

type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

// newRDB is a client with the short timeouts the service uses, so a dead
// Redis turns into 503 quickly. Tests that stop Redis use it.
func newRDB(t testing.TB, addr string) *redis.Client {
	return newRDBTimeout(t, addr, 300*time.Millisecond)
}

// newLoadRDB is a client for tests that load Redis with hundreds of
// concurrent requests while other test binaries share the two CPUs: a
// 300 ms dial budget then fails on a busy accept queue, not a dead Redis.
func newLoadRDB(t testing.TB, addr string) *redis.Client {
	return newRDBTimeout(t, addr, 3*time.Second)
}

func newRDBTimeout(t testing.TB, addr string, d time.Duration) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: d,
		ReadTimeout: d, WriteTimeout: d,
		PoolTimeout: d, MaxRetries: 1, PoolSize: 256,
		DialerRetries: 1, DialerRetryTimeout: 20 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// listen opens a loopback listener on a free port.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serveOn serves h on ln (real HTTP on loopback) until the test ends.
func serveOn(t testing.TB, ln net.Listener, h fasthttp.RequestHandler) string {
	t.Helper()
	srv := NewServer(h, quietLog)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.ShutdownWithContext(ctx)
	})
	return "http://" + ln.Addr().String()
}

type rootOpts struct {
	prefix   string
	token    string
	roles    Tokens // per-role tokens
	metrics  bool   // MetricsOpen
	policies []string
	plan     ipam.Config
	// timeout is the request budget (default testBudget; negative: the
	// production default).
	timeout time.Duration
	// notify replaces the tests' fast notification settings.
	notify *NotifyConfig
	// alloc wraps the allocator (fault injection).
	alloc func(ipam.Allocator) ipam.Allocator
	// sweep and stale set RootConfig.Sweep and staleAfter (0: defaults).
	sweep, stale time.Duration
}

func startRoot(t testing.TB, rdb redis.UniversalClient, o rootOpts) (*Root, string) {
	t.Helper()
	if o.prefix == "" {
		o.prefix = DefaultPrefix
	}
	ra, err := ipam.NewRedis(rdb, o.plan, o.prefix)
	if err != nil {
		t.Fatalf("ipam: %v", err)
	}
	var alloc ipam.Allocator = ra
	if o.alloc != nil {
		alloc = o.alloc(ra)
	}
	switch {
	case o.timeout == 0:
		o.timeout = testBudget
	case o.timeout < 0:
		o.timeout = 0
	}
	nc := NotifyConfig{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Timeout: time.Second}
	if o.notify != nil {
		nc = *o.notify
	}
	r, err := NewRoot(RootConfig{Prefix: o.prefix, Token: o.token, RoleTokens: o.roles, MetricsOpen: o.metrics, Policies: o.policies, IPAM: o.plan, Log: quietLog,
		Timeout: o.timeout, Notify: nc, Sweep: o.sweep, staleAfter: o.stale}, rdb, alloc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, serveOn(t, listen(t), r.Handler())
}

type clusterOpts struct {
	prefix    string
	token     string
	roles     Tokens // per-role tokens
	id        string
	retention int
	// timeout is the Redis budget per request (default testBudget;
	// negative: the production default).
	timeout time.Duration
}

func startCluster(t testing.TB, rdb redis.UniversalClient, rootURL string, o clusterOpts) (*Cluster, string) {
	t.Helper()
	if o.id == "" {
		o.id = "c1"
	}
	switch {
	case o.timeout == 0:
		o.timeout = testBudget
	case o.timeout < 0:
		o.timeout = 0
	}
	ln := listen(t)
	c, err := NewCluster(ClusterConfig{Prefix: o.prefix, Token: o.token, RoleTokens: o.roles, ClusterID: o.id, RootURL: rootURL,
		Advertise: ln.Addr().String(), WatchRetention: o.retention, Log: quietLog, Timeout: o.timeout, RootTimeout: testBudget}, rdb)
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	t.Cleanup(func() { _ = c.Close() })
	return c, serveOn(t, ln, c.Handler())
}

var httpc = &fasthttp.Client{MaxConnsPerHost: 1024, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}

// call does one HTTP request and returns status and body.
func call(t testing.TB, method, url, body, token string) (int, []byte) {
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
		req.Header.SetContentType("application/json")
		req.SetBodyString(body)
	}
	if err := httpc.DoTimeout(req, resp, 10*time.Second); err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...)
}

// mustCall expects status want and decodes the answer into out (if set).
func mustCall(t testing.TB, want int, method, url, body, token string, out any) {
	t.Helper()
	st, b := call(t, method, url, body, token)
	if st != want {
		t.Fatalf("%s %s %s: status %d, want %d: %s", method, url, body, st, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, url, b, err)
		}
	}
}

// snapshot dumps every key under prefix (value and type, via DUMP).
func snapshot(t testing.TB, rdb redis.UniversalClient, prefix string) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	var keys []string
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(keys)
	for _, k := range keys {
		d, err := rdb.Dump(ctx, k).Result()
		if err != nil {
			t.Fatalf("dump %s: %v", k, err)
		}
		out[k] = d
	}
	return out
}

func diffSnap(a, b map[string]string) string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "- "+k)
		} else if w != v {
			d = append(d, "~ "+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "+ "+k)
		}
	}
	sort.Strings(d)
	return strings.Join(d, "\n")
}

func startRedis(t testing.TB) (*redistest.Server, *redis.Client) {
	t.Helper()
	s := redistest.Start(t)
	return s, newLoadRDB(t, s.Addr)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// rawPost sends a POST over a plain TCP connection, writing the body while
// reading the answer: a server that rejects a body too large answers and
// closes before the body is written, which a normal client reports as a
// write error instead of the answer.
func rawPost(t testing.TB, url, body, token string) (int, []byte) {
	t.Helper()
	hostPath := strings.TrimPrefix(url, "http://")
	host, path, _ := strings.Cut(hostPath, "/")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		hdr := "POST /" + path + " HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\n"
		if token != "" {
			hdr += "Authorization: Bearer " + token + "\r\n"
		}
		hdr += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
		_, _ = io.WriteString(conn, hdr+body)
	}()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// rawRequest writes req (a whole HTTP/1.1 request, as bytes on the wire)
// to the server at base and reads one answer.
func rawRequest(t testing.TB, base, req string) (int, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: %v", base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
