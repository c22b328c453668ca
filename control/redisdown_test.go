package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/internal/redistest"
)

// TestRedisDownAndBack runs root and cluster with the production request
// budget (DefaultTimeout) over a client with cmd/servicemanager's Redis
// settings (300 ms per command, one retry), and takes Redis away under
// them twice: hung (SIGSTOP: connections stay open, nothing answers) and
// killed. Every request gets 503 with code redis_unavailable within a
// second (SPEC §5), /healthz stays 200, and once Redis is back, without
// restarting anything, the service deployed before the outage is still
// there and resolvable, and everything works again.
func TestRedisDownAndBack(t *testing.T) {
	srv := redistest.Start(t)
	rdb := newRDB(t, srv.Addr)
	_, R := startRoot(t, rdb, rootOpts{timeout: -1, sweep: -1})
	_, C := startCluster(t, rdb, R, clusterOpts{id: "c1", timeout: -1})
	ctx := context.Background()
	// Where the cluster listens: root notifies it of changes to what its
	// nodes cached (and the cache survives the outage).
	host, port, _ := strings.Cut(strings.TrimPrefix(C, "http://"), ":")
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"`+host+`","cluster_port":`+port+`}`, "", nil)
	var d api.ServiceIPs
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", &d)
	var i0 api.InstanceAnswer
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "", &i0)
	n1 := nodeclient.New(C, "n1", nodeclient.Options{Timeout: 3 * time.Second})
	if _, err := n1.Register(ctx, netip.MustParseAddr("198.18.0.1"), 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.ResolveByName(ctx, "app.ns.web.default"); err != nil {
		t.Fatal(err)
	}
	rrIP := d.ServiceIPList[0].Address.String()

	requests := []struct{ method, url, body string }{
		{"POST", R + "/api/net/instance/deploy", `{"_id":"s1","instance_number":1,"cluster_id":"c1"}`},
		// (A command sent to the hung server may still run once it resumes:
		// deleting an instance that does not exist keeps the outcome fixed.)
		{"DELETE", R + "/api/net/s1/7", ""},
		{"POST", R + "/api/net/service/deploy", svcBody("s2", "api", "")},
		{"GET", R + "/api/net/service/app.ns.web.default/instances", ""},
		{"GET", R + "/api/net/service/ip/" + rrIP + "/instances", ""},
		{"GET", R + "/api/net/subnet?node_id=n9", ""},
		{"GET", R + "/readyz", ""},
		{"GET", C + "/api/node/resolve?node_id=n1&job=app.ns.web.default", ""},
		{"GET", C + "/api/node/watch?node_id=n1&since=0&timeout=5", ""},
		{"GET", C + "/readyz", ""},
	}
	outage := func(how string) {
		t.Helper()
		var wg sync.WaitGroup
		for _, tc := range requests {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				st, b := call(t, tc.method, tc.url, tc.body, "")
				dur := time.Since(start)
				t.Logf("Redis %s: %s %s: %d after %v", how, tc.method, tc.url, st, dur)
				var eb api.ErrorBody
				_ = json.Unmarshal(b, &eb)
				if st != 503 || eb.Code != "redis_unavailable" || dur > time.Second {
					t.Errorf("Redis %s: %s %s: %d %q after %v, want 503 redis_unavailable within 1 s: %s",
						how, tc.method, tc.url, st, eb.Code, dur, b)
				}
			}()
		}
		wg.Wait()
		if st, _ := call(t, "GET", R+"/healthz", "", ""); st != 200 {
			t.Errorf("Redis %s: healthz %d", how, st)
		}
	}
	recovered := func(how string) {
		t.Helper()
		waitFor(t, 5*time.Second, "ready after Redis "+how, func() bool {
			st1, _ := call(t, "GET", R+"/readyz", "", "")
			st2, _ := call(t, "GET", C+"/readyz", "", "")
			return st1 == 200 && st2 == 200
		})
		// The pre-outage service and instance survived, at root and through
		// the cluster.
		var e api.ServiceEntry
		mustCall(t, 200, "GET", R+"/api/net/service/ip/"+rrIP+"/instances", "", "", &e)
		if e.ID != "s1" || len(e.InstanceList) == 0 || e.InstanceList[0].InstanceIP != i0.InstanceIP {
			t.Fatalf("after Redis %s: root has %+v", how, e)
		}
		got, err := n1.ResolveByIP(ctx, netip.MustParseAddr(rrIP))
		if err != nil || got.ID != "s1" || len(got.InstanceList) == 0 {
			t.Fatalf("after Redis %s: node resolves %+v, %v", how, got, err)
		}
	}

	resume := srv.Pause()
	outage("hung")
	resume()
	recovered("hung")

	// Killed: restarted from a snapshot taken just before.
	if err := rdb.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	outage("killed")
	srv.Restart()
	recovered("killed")

	for i := range 3 {
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s1","instance_number":%d,"cluster_id":"c1"}`, i), "", nil)
	}
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s2", "api", ""), "", nil)
	waitFor(t, 3*time.Second, "node sees the 3 instances deployed after the outage", func() bool {
		e, err := n1.ResolveByIP(ctx, netip.MustParseAddr(rrIP))
		return err == nil && len(e.InstanceList) == 3
	})
	// Whatever the outage cut half-way (the deploys sent to the hung server
	// may have prepared once it resumed) left no pending state.
	noPending(t, rdb, "s1")
}
