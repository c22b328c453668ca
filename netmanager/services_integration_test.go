package netmanager

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control"
	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// The service machinery against the real control plane: a private Redis,
// a root and a cluster service manager on loopback, two nodes. Node 1 runs
// Services over the real client; node 2 reports instances.
func TestServicesAgainstControlPlane(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	alloc, err := ipam.NewRedis(rdb, ipam.Config{}, control.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	root, err := control.NewRoot(control.RootConfig{Log: quietLog}, rdb, alloc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.Close() })
	rootURL := serveControl(t, listenLoopback(t), root.Handler())
	cln := listenLoopback(t)
	cl, err := control.NewCluster(control.ClusterConfig{ClusterID: "c1", RootURL: rootURL, Advertise: cln.Addr().String(),
		WatchPoll: 50 * time.Millisecond, Log: quietLog}, rdb)
	if err != nil {
		t.Fatal(err)
	}
	cl.Start()
	t.Cleanup(func() { _ = cl.Close() })
	clURL := serveControl(t, cln, cl.Handler())
	ctx := context.Background()
	waitFor(t, "the cluster to register with root", func() bool {
		ok, _ := rdb.HExists(ctx, control.DefaultPrefix+"{r}:clusters", "c1").Result()
		return ok
	})

	// A service with one instance, which node 2 runs.
	var dep struct {
		JobName       string          `json:"job_name"`
		ServiceIPList []api.ServiceIP `json:"service_ip_list"`
	}
	post(t, rootURL+"/api/net/service/deploy",
		`{"_id":"s1","deployment_descriptor":{"app_name":"app","app_ns":"ns","microservice_name":"web","microservice_namespace":"default"}}`, &dep)
	post(t, rootURL+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, nil)
	post(t, rootURL+"/api/net/instance/deploy", `{"_id":"s1","instance_number":1,"cluster_id":"c1"}`, nil)
	n1 := nodeclient.New(clURL, "node1", nodeclient.Options{})
	n2 := nodeclient.New(clURL, "node2", nodeclient.Options{})
	if _, err := n1.Register(ctx, netip.MustParseAddr("198.18.0.1"), 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := n2.Register(ctx, netip.MustParseAddr("198.18.0.2"), 50200, nil); err != nil {
		t.Fatal(err)
	}
	if err := n2.ReportDeployed(ctx, dep.JobName, 0, netip.MustParseAddr("10.18.0.66"), netip.MustParseAddr("fc00::102")); err != nil {
		t.Fatal(err)
	}

	sink := &fakeSink{}
	s := NewServices(NewServiceSource(n1, 2*time.Second), sink, ServiceOptions{Logger: quietLog})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(rctx); close(done) }()
	t.Cleanup(cancel)

	// The first watch resyncs: node 1 learns its peer.
	node2 := netip.MustParseAddrPort("198.18.0.2:50200")
	waitFor(t, "the peer set", func() bool { return slices.Contains(sink.peerSet(), node2) })

	// A miss on the RR service IP resolves the service.
	var rr4 netip.Addr
	for _, ip := range dep.ServiceIPList {
		if ip.IpType == "RR" {
			rr4 = ip.Address
		}
	}
	for range 100 {
		s.Miss(rr4)
	}
	waitFor(t, "the resolved service", func() bool { return slices.Equal(sink.instances(dep.JobName), []uint32{0}) })
	sink.mu.Lock()
	in := sink.insts[0]
	sink.mu.Unlock()
	if in.Node != node2 || in.NS4 != netip.MustParseAddr("10.18.0.66") || in.NS6 != netip.MustParseAddr("fc00::102") {
		t.Fatalf("instance %+v", in)
	}
	// An unknown address: one query, then negative hits.
	for range 100 {
		s.Miss(netip.MustParseAddr("10.30.99.99"))
	}
	waitFor(t, "the unknown address", func() bool { return s.Stats().ResolveNotFound == 1 })

	// Node 2 starts instance 1: node 1's watch brings it.
	if err := n2.ReportDeployed(ctx, dep.JobName, 1, netip.MustParseAddr("10.18.0.67"), netip.MustParseAddr("fc00::103")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watch to bring instance 1", func() bool {
		return slices.Equal(sink.instances(dep.JobName), []uint32{0, 1})
	})
	st := s.Stats()
	if st.Resolves != 1 || st.ResolveNotFound != 1 || st.Resyncs < 1 || st.WatchChanges < 1 {
		t.Fatalf("stats %+v", st)
	}

	// Idle expiry drops the interest at the cluster.
	cancel()
	<-done
	s.View.opt.IdleTimeout = time.Nanosecond
	if n := s.View.ExpireIdle(ctx, s.src); n != 1 {
		t.Fatalf("%d expired", n)
	}
	if st := s.Stats(); st.DropErrors != 0 || st.Services != 0 {
		t.Fatalf("stats after expiry %+v", st)
	}
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serveControl serves h on ln until the test ends.
func serveControl(t *testing.T, ln net.Listener, h fasthttp.RequestHandler) string {
	t.Helper()
	srv := control.NewServer(h, quietLog)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.ShutdownWithContext(ctx)
	})
	return "http://" + ln.Addr().String()
}

func post(t *testing.T, url, body string, out any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %s", url, resp.Status)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
}
