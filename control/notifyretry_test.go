package control

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
)

// fakeCluster is a cluster's job-update endpoint on loopback: it answers
// 503 to the first fail requests, then 200, and records what it accepted.
type fakeCluster struct {
	srv *http.Server

	mu       sync.Mutex // guards fail, attempts, got
	fail     int
	attempts int
	got      []api.JobUpdate
}

// serveFakeCluster serves a fakeCluster on addr ("127.0.0.1:port").
func serveFakeCluster(t *testing.T, addr string, fail int) *fakeCluster {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port was closed a moment ago; the kernel may hold it briefly
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen %s again: %v", addr, err)
	}
	f := &fakeCluster{fail: fail}
	f.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.attempts++
		if r.URL.Path != "/api/net/job/update" || r.Method != http.MethodPost {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		if f.fail > 0 {
			f.fail--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var u api.JobUpdate
		if err := json.Unmarshal(b, &u); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		f.got = append(f.got, u)
	})}
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(func() { _ = f.srv.Close() })
	return f
}

func (f *fakeCluster) received() ([]api.JobUpdate, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.JobUpdate(nil), f.got...), f.attempts
}

// metricValue reads one series (name{labels} exactly as exposed) from a
// /metrics page; 0 when it is absent.
func metricValue(t *testing.T, url, series string) float64 {
	t.Helper()
	_, b := call(t, "GET", url+"/metrics", "", "")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %q: %v", series, v, err)
			}
			return f
		}
	}
	return 0
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr is a loopback address nothing listens on (for now).
func freeAddr(t *testing.T) (host, port string) {
	t.Helper()
	ln := listen(t)
	addr := ln.Addr().String()
	_ = ln.Close()
	host, port, _ = net.SplitHostPort(addr)
	return host, port
}

// TestNotifyRetriesUntilClusterBack: an interested cluster that refuses
// connections, then answers 503, then comes back gets every queued update
// in order; each failed attempt is counted, the cluster is marked
// unreachable while down and reachable again after.
func TestNotifyRetriesUntilClusterBack(t *testing.T) {
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{})
	host, port := freeAddr(t)
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c2","cluster_address":"`+host+`","cluster_port":`+port+`}`, "", nil)
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", nil)
	mustCall(t, 200, "GET", R+"/api/net/service/app.ns.web.default/instances?cluster_id=c2", "", "", nil)
	for n := range 3 {
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s1","instance_number":%d,"cluster_id":"c2"}`, n), "", nil)
	}
	const failed = `oakwire_notify_failed_attempts_total{cluster="c2"}`
	const unreachable = `oakwire_cluster_unreachable{cluster="c2"}`
	waitFor(t, 5*time.Second, "refused attempts counted, cluster marked unreachable", func() bool {
		return metricValue(t, R, failed) >= 3 && metricValue(t, R, unreachable) == 1
	})
	if v := metricValue(t, R, `oakwire_notify_sent_total{cluster="c2"}`); v != 0 {
		t.Fatalf("sent %v while the cluster refused connections", v)
	}

	// Back, but busy for two more attempts.
	before := metricValue(t, R, failed)
	fc := serveFakeCluster(t, net.JoinHostPort(host, port), 2)
	waitFor(t, 5*time.Second, "queued updates delivered", func() bool {
		got, _ := fc.received()
		return len(got) == 3
	})
	got, attempts := fc.received()
	for n, u := range got {
		if u != (api.JobUpdate{JobName: "app.ns.web.default", InstanceNumber: n, Type: "DEPLOYMENT"}) {
			t.Errorf("update %d: %+v", n, u)
		}
	}
	if attempts != 5 {
		t.Errorf("%d attempts reached the cluster, want 2 refused with 503 + 3 delivered", attempts)
	}
	if d := metricValue(t, R, failed) - before; d != 2 {
		t.Errorf("failed attempts grew by %v after the cluster came back, want 2 (the 503s)", d)
	}
	if v := metricValue(t, R, `oakwire_notify_sent_total{cluster="c2"}`); v != 3 {
		t.Errorf("sent %v, want 3", v)
	}
	if v := metricValue(t, R, unreachable); v != 0 {
		t.Errorf("cluster still marked unreachable after delivery: %v", v)
	}
	if v := metricValue(t, R, `oakwire_notify_dropped_total{cluster="c2"}`); v != 0 {
		t.Errorf("dropped %v", v)
	}
}

// TestNotifyFollowsReregisteredCluster: a cluster that comes back at
// another address and re-registers gets the updates queued while it was
// away at its new address, without waiting for another change.
func TestNotifyFollowsReregisteredCluster(t *testing.T) {
	_, rdb := startRedis(t)
	// Long backoff: delivery must not depend on the retry timer.
	_, R := startRoot(t, rdb, rootOpts{notify: &NotifyConfig{MinBackoff: time.Minute, MaxBackoff: time.Minute, Timeout: time.Second}})
	host, port := freeAddr(t)
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c2","cluster_address":"`+host+`","cluster_port":`+port+`}`, "", nil)
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", nil)
	mustCall(t, 200, "GET", R+"/api/net/service/app.ns.web.default/instances?cluster_id=c2", "", "", nil)
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c2"}`, "", nil)
	waitFor(t, 5*time.Second, "first attempt failed", func() bool {
		return metricValue(t, R, `oakwire_notify_failed_attempts_total{cluster="c2"}`) >= 1
	})

	host2, port2 := freeAddr(t)
	fc := serveFakeCluster(t, net.JoinHostPort(host2, port2), 0)
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c2","cluster_address":"`+host2+`","cluster_port":`+port2+`}`, "", nil)
	waitFor(t, 3*time.Second, "update delivered at the new address", func() bool {
		got, _ := fc.received()
		return len(got) == 1
	})
	if got, _ := fc.received(); got[0] != (api.JobUpdate{JobName: "app.ns.web.default", InstanceNumber: 0, Type: "DEPLOYMENT"}) {
		t.Errorf("update %+v", got[0])
	}
}
