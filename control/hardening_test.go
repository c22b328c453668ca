package control

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
)

// TestRoleTokens: with per-role tokens each role reaches only its own
// endpoints (a node's token is refused at root and at the cluster's
// orchestrator and root-facing endpoints: 403), a wrong token of any
// length is 401, and the single-token configuration reaches everything.
func TestRoleTokens(t *testing.T) {
	_, rdb := startRedis(t)
	roles := Tokens{Orchestrator: "orch-secret", Cluster: "cluster-secret", Node: "node-secret"}
	_, R := startRoot(t, rdb, rootOpts{roles: roles, sweep: -1})
	_, C := startCluster(t, rdb, R, clusterOpts{roles: roles, id: "c1"})
	O, K, N := roles.Orchestrator, roles.Cluster, roles.Node
	waitRegistered(t, R, "c1", K)
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", `{"_id":"s1","deployment_descriptor":{"app_name":"a","app_ns":"n","microservice_name":"w","microservice_namespace":"d"}}`, O, nil)
	for _, tc := range []struct {
		name, method, url, body, token string
		status                         int
	}{
		{"orchestrator at root's instance deploy", "POST", R + "/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, O, 200},
		{"node at root's instance deploy", "POST", R + "/api/net/instance/deploy", `{"_id":"s1","instance_number":1,"cluster_id":"c1"}`, N, 403},
		{"cluster at root's instance deploy", "POST", R + "/api/net/instance/deploy", `{"_id":"s1","instance_number":1,"cluster_id":"c1"}`, K, 403},
		{"node at root's subnets", "GET", R + "/api/net/subnet?node_id=n1", ``, N, 403},
		{"cluster at root's subnets", "GET", R + "/api/net/subnet?node_id=n1", ``, K, 200},
		{"orchestrator at root's table query", "GET", R + "/api/net/service/a.n.w.d/instances", ``, O, 200},
		{"node at root's table query", "GET", R + "/api/net/service/a.n.w.d/instances", ``, N, 403},
		{"node at the cluster's node API", "POST", C + "/api/node/register", `{"node_id":"n1","node_ip":"198.18.0.1"}`, N, 200},
		{"cluster at the cluster's node API", "GET", C + "/api/node/peers?node_id=n1", ``, K, 403},
		{"orchestrator at the cluster's node API", "GET", C + "/api/node/peers?node_id=n1", ``, O, 403},
		{"node at the cluster's deployment API", "POST", C + "/api/net/deployment", `{"job_name":"a.n.w.d"}`, N, 403},
		{"orchestrator at the cluster's deployment API", "POST", C + "/api/net/deployment", `{"job_name":"a.n.w.d"}`, O, 200},
		{"node at the cluster's job update", "POST", C + "/api/net/job/update", `{"job_name":"a.n.w.d","instance_number":0,"type":"DEPLOYMENT"}`, N, 403},
		{"no token", "GET", C + "/api/node/peers?node_id=n1", ``, "", 401},
		{"a prefix of the node token", "GET", C + "/api/node/peers?node_id=n1", ``, "node-secre", 401},
		{"the node token and more", "GET", C + "/api/node/peers?node_id=n1", ``, "node-secretX", 401},
		{"a long wrong token", "GET", C + "/api/node/peers?node_id=n1", ``, strings.Repeat("x", 2000), 401},
		{"metrics without a token", "GET", R + "/metrics", ``, "", 401},
		{"metrics with a node token", "GET", C + "/metrics", ``, N, 200},
	} {
		st, b := call(t, tc.method, tc.url, tc.body, tc.token)
		if st != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, st, b, tc.status)
			continue
		}
		if st == 401 || st == 403 {
			var eb api.ErrorBody
			want := map[int]string{401: api.CodeUnauthorized, 403: api.CodeForbidden}[st]
			if json.Unmarshal(b, &eb) != nil || eb.Code != want || !strings.Contains(eb.Error, "Authorization") {
				t.Errorf("%s: answer %s, want code %s naming Authorization", tc.name, b, want)
			}
		}
	}

	// One token for every role, as before role tokens existed.
	_, rdb2 := startRedis(t)
	_, R2 := startRoot(t, rdb2, rootOpts{token: "one", sweep: -1})
	_, C2 := startCluster(t, rdb2, R2, clusterOpts{token: "one", id: "c1"})
	mustCall(t, 200, "POST", R2+"/api/net/service/deploy", `{"_id":"s1","deployment_descriptor":{"app_name":"a","app_ns":"n","microservice_name":"w","microservice_namespace":"d"}}`, "one", nil)
	mustCall(t, 200, "POST", C2+"/api/node/register", `{"node_id":"n1","node_ip":"198.18.0.1"}`, "one", nil)
	mustCall(t, 200, "POST", C2+"/api/net/deployment", `{"job_name":"a.n.w.d"}`, "one", nil)
	mustCall(t, 200, "GET", R2+"/metrics", ``, "one", nil)
	mustCall(t, 401, "GET", R2+"/metrics", ``, "", nil)

	// metrics-open: /metrics without a token, /api/ still needs one.
	_, R3 := startRoot(t, rdb2, rootOpts{token: "one", metrics: true, prefix: "m:", sweep: -1})
	mustCall(t, 200, "GET", R3+"/metrics", ``, "", nil)
	mustCall(t, 401, "GET", R3+"/api/net/subnet", ``, "", nil)
}

// TestTokensValidate: a role without a token of its own or a common one,
// and two roles sharing one, are configuration errors.
func TestTokensValidate(t *testing.T) {
	for _, tc := range []struct {
		t  Tokens
		ok bool
	}{
		{Tokens{}, true},
		{Tokens{All: "a"}, true},
		{Tokens{All: "a", Node: "n"}, true},
		{Tokens{Orchestrator: "o", Cluster: "c", Node: "n"}, true},
		{Tokens{Orchestrator: "o", Cluster: "c"}, false},
		{Tokens{Orchestrator: "o", Cluster: "o", Node: "n"}, false},
	} {
		if err := tc.t.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: Validate() = %v, want ok %v", tc.t, err, tc.ok)
		}
	}
}

// TestOversizedBodyDrained: a client that writes a whole body over the
// limit before it reads gets 413 with an error body, not a reset, for
// bodies of several MiB; the request is counted.
func TestOversizedBodyDrained(t *testing.T) {
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{token: "tok", sweep: -1})
	host := strings.TrimPrefix(R, "http://")
	for _, size := range []int{MaxBody + 1, 4 << 20, 16 << 20} {
		conn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		body := `{"cluster_id":"c1","cluster_address":"` + strings.Repeat("a", size) + `","cluster_port":1}`
		req := "POST /api/net/cluster HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Type: application/json\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n" + body
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		// The whole request first, reading nothing meanwhile.
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatalf("%d bytes: write: %v (the server stopped reading)", size, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%d bytes: read the answer: %v", size, err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		_ = conn.Close()
		var eb api.ErrorBody
		if resp.StatusCode != 413 || json.Unmarshal(b, &eb) != nil || eb.Code != api.CodeBodyTooLarge || !resp.Close {
			t.Errorf("%d bytes: %d %s (close %v), want 413 body_too_large and Connection: close", size, resp.StatusCode, b, resp.Close)
		}
	}
	if v := metricValueTok(t, R, "tok", `oakwire_http_requests_total{code="413",route="POST /api/net/cluster"}`); v != 3 {
		t.Errorf("413 counted %v times, want 3", v)
	}
	// A body within the limit on the same server still works.
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":1}`, "tok", nil)
}

// TestMappedIPv4Refused: ::ffff:a.b.c.d is refused with 400 in every
// address field, IPv4 fields above all; nothing is written.
func TestMappedIPv4Refused(t *testing.T) {
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{sweep: -1})
	_, C := startCluster(t, rdb, R, clusterOpts{id: "c1"})
	// The cluster's start-up (registration, first peer sync) writes in
	// the background: let it finish before comparing snapshots.
	waitRegistered(t, R, "c1", "")
	for i := 0; rdb.Exists(context.Background(), DefaultPrefix+"{c:c1}:xgen").Val() == 0; i++ {
		if i == 200 {
			t.Fatal("the cluster's first peer sync did not happen")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", `{"_id":"s1","deployment_descriptor":{"app_name":"a","app_ns":"n","microservice_name":"w","microservice_namespace":"d"}}`, "", nil)
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "", nil)
	for _, tc := range []struct{ name, url, body, field string }{
		{"RR_ip", R + "/api/net/service/deploy", `{"_id":"s2","deployment_descriptor":{"app_name":"a","app_ns":"n","microservice_name":"x","microservice_namespace":"d","RR_ip":"::ffff:10.30.5.5"}}`, "RR_ip"},
		{"host_ip", R + "/api/net/service/net_deploy_status", `{"job_id":"s1","instances":[{"instance_number":0,"namespace_ip":"10.18.0.2","host_ip":"::ffff:198.18.0.2","host_port":50103}]}`, "host_ip"},
		{"namespace_ip", R + "/api/net/service/net_deploy_status", `{"job_id":"s1","instances":[{"instance_number":0,"namespace_ip":"::ffff:10.18.0.2","host_ip":"198.18.0.2","host_port":50103}]}`, "namespace_ip"},
		{"node_ip", C + "/api/node/register", `{"node_id":"n1","node_ip":"::ffff:198.18.0.1"}`, "node_ip"},
		{"ip path", R + "/api/net/service/ip/::ffff:10.30.0.1/instances", ``, "ip"},
	} {
		before := snapshot(t, rdb, DefaultPrefix)
		method := "POST"
		if tc.body == "" {
			method = "GET"
		}
		st, b := call(t, method, tc.url, tc.body, "")
		var eb api.ErrorBody
		if st != 400 || json.Unmarshal(b, &eb) != nil || eb.Code != api.CodeBadAddress || !strings.Contains(eb.Error, tc.field) || !strings.Contains(eb.Error, "IPv4-mapped") {
			t.Errorf("%s: %d %s, want 400 bad_address naming %s", tc.name, st, b, tc.field)
		}
		if d := diffSnap(before, snapshot(t, rdb, DefaultPrefix)); d != "" {
			t.Errorf("%s: Redis changed:\n%s", tc.name, d)
		}
	}
}

// metricValueTok reads one sample of base's /metrics with a token.
func metricValueTok(t *testing.T, base, token, series string) float64 {
	t.Helper()
	st, b := call(t, "GET", base+"/metrics", "", token)
	if st != 200 {
		t.Fatalf("/metrics: %d", st)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			_, _ = fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// waitRegistered waits (bounded) until cluster cid registered itself with
// root.
func waitRegistered(t *testing.T, root, cid, token string) {
	t.Helper()
	for range 200 {
		if st, _ := call(t, "GET", root+"/api/net/cluster/"+cid+"/peers", "", token); st == 200 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("cluster %s did not register with root", cid)
}
