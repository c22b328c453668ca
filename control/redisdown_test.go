package control

import (
	"context"
	"fmt"
	"github.com/oakwire/oakwire/internal/redistest"
	"testing"
	"time"

	"github.com/oakwire/oakwire/control/nodeclient"
)

// TestRedisDownAndBack stops Redis under running root and cluster
// services: requests get 503 within a second and /readyz fails; after
// Redis restarts (empty: redistest persists nothing) both work again
// without restarting anything.
func TestRedisDownAndBack(t *testing.T) {
	srv := redistest.Start(t)
	rdb := newRDB(t, srv.Addr)
	_, R := startRoot(t, rdb, rootOpts{})
	_, C := startCluster(t, rdb, R, clusterOpts{id: "c1"})
	ctx := context.Background()
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`, "", nil)
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", nil)
	n1 := nodeclient.New(C, "n1", nodeclient.Options{Timeout: 3 * time.Second})
	if _, err := n1.Register(ctx, "198.18.0.1", 0, nil); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	for _, tc := range []struct{ method, url, body string }{
		{"POST", R + "/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`},
		{"POST", R + "/api/net/service/deploy", svcBody("s2", "api", "")},
		{"GET", R + "/api/net/service/app.ns.web.default/instances", ""},
		{"GET", R + "/api/net/subnet?node_id=n9", ""},
		{"GET", R + "/readyz", ""},
		{"GET", C + "/api/node/resolve?node_id=n1&job=app.ns.web.default", ""},
		{"GET", C + "/api/node/watch?node_id=n1&since=0&timeout=5", ""},
		{"GET", C + "/readyz", ""},
	} {
		start := time.Now()
		st, b := call(t, tc.method, tc.url, tc.body, "")
		if d := time.Since(start); st != 503 || d > time.Second {
			t.Errorf("%s %s with Redis down: %d after %v (want 503 within 1 s): %s", tc.method, tc.url, st, d, b)
		}
	}
	st, _ := call(t, "GET", R+"/healthz", "", "")
	if st != 200 {
		t.Errorf("healthz %d with Redis down", st)
	}

	srv.Restart()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st1, _ := call(t, "GET", R+"/readyz", "", "")
		st2, _ := call(t, "GET", C+"/readyz", "", "")
		if st1 == 200 && st2 == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after restart: %d %d", st1, st2)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Everything works again (the restarted Redis is empty).
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`, "", nil)
	var d deployAnswer
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", &d)
	for i := range 3 {
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s1","instance_number":%d,"cluster_id":"c1"}`, i), "", nil)
	}
	if _, err := n1.Register(ctx, "198.18.0.1", 0, nil); err != nil {
		t.Fatal(err)
	}
	e, err := n1.ResolveByIP(ctx, d.ServiceIPList[0].Address)
	if err != nil || len(e.InstanceList) != 3 {
		t.Fatalf("resolve after restart: %+v %v", e, err)
	}
}
