package control

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control/nodeclient"
)

// TestBadRequests sends malformed, ill-typed, incomplete, unknown,
// conflicting, oversized and unauthenticated requests to root and cluster:
// each gets the right status and an error naming the problem, and Redis is
// byte-for-byte unchanged (DUMP of every key under the prefix).
func TestBadRequests(t *testing.T) {
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{token: tok})
	_, C := startCluster(t, rdb, R, clusterOpts{token: tok, id: "c1"})
	ctx := context.Background()

	// Fixture: a cluster, a service with instance 0, a node interested in it.
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"`+strings.TrimPrefix(C, "http://")[:9]+`","cluster_port":`+C[strings.LastIndexByte(C, ':')+1:]+`}`, tok, nil)
	var dep api.ServiceIPs
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("svc1", "web", ""), tok, &dep)
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"svc1","instance_number":0,"cluster_id":"c1"}`, tok, nil)
	n1 := nodeclient.New(C, "node1", nodeclient.Options{Token: tok})
	if _, err := n1.Register(ctx, netip.MustParseAddr("198.18.0.1"), 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.ResolveByName(ctx, "app.ns.web.default"); err != nil {
		t.Fatal(err)
	}
	rrIP := dep.ServiceIPList[1].Address.String()

	big := `{"cluster_id":"c1","cluster_address":"` + strings.Repeat("a", 2<<20) + `","cluster_port":1}`
	cases := []struct {
		name, method, url, body, token string
		status                         int
		code, mention                  string
	}{
		{"malformed json", "POST", R + "/api/net/cluster", `{"cluster_id":`, tok, 400, "bad_json", "body"},
		{"empty body", "POST", R + "/api/net/cluster", ``, tok, 400, "bad_json", "body"},
		{"json array", "POST", R + "/api/net/service/deploy", `[1,2]`, tok, 400, "bad_type", "body"},
		{"port as string", "POST", R + "/api/net/cluster", `{"cluster_id":"c2","cluster_address":"h","cluster_port":"eighty"}`, tok, 400, "bad_type", "cluster_port"},
		{"missing address", "POST", R + "/api/net/cluster", `{"cluster_id":"c2","cluster_port":80}`, tok, 400, "missing_field", "cluster_address"},
		{"port range", "POST", R + "/api/net/cluster", `{"cluster_id":"c2","cluster_address":"h","cluster_port":70000}`, tok, 400, "bad_port", "cluster_port"},
		{"bad cluster id", "POST", R + "/api/net/cluster", `{"cluster_id":"c 2","cluster_address":"h","cluster_port":80}`, tok, 400, "bad_id", "cluster_id"},
		{"missing _id", "POST", R + "/api/net/service/deploy", `{"deployment_descriptor":{}}`, tok, 400, "missing_field", "_id"},
		{"_id number", "POST", R + "/api/net/service/deploy", `{"_id":5,"deployment_descriptor":{}}`, tok, 400, "bad_type", "_id"},
		{"missing descriptor", "POST", R + "/api/net/service/deploy", `{"_id":"s2"}`, tok, 400, "missing_field", "deployment_descriptor"},
		{"bad name char", "POST", R + "/api/net/service/deploy", `{"_id":"s2","deployment_descriptor":{"app_name":"my-app","app_ns":"a","microservice_name":"b","microservice_namespace":"c"}}`, tok, 400, "bad_name", "app_name"},
		{"name too long", "POST", R + "/api/net/service/deploy", `{"_id":"s2","deployment_descriptor":{"app_name":"a","app_ns":"a","microservice_name":"` + strings.Repeat("b", 31) + `","microservice_namespace":"c"}}`, tok, 400, "bad_name", "microservice_name"},
		{"missing namespace", "POST", R + "/api/net/service/deploy", `{"_id":"s2","deployment_descriptor":{"app_name":"a","app_ns":"a","microservice_name":"b"}}`, tok, 400, "missing_field", "microservice_namespace"},
		{"RR_ip outside pool", "POST", R + "/api/net/service/deploy", svcBody("s2", "x", `,"RR_ip":"10.31.0.1"`), tok, 400, "out_of_pool", "RR_ip"},
		{"RR_ip not an IP", "POST", R + "/api/net/service/deploy", svcBody("s2", "x", `,"RR_ip":"abc"`), tok, 400, "bad_address", "RR_ip"},
		{"RR_ip v6 in v4 field", "POST", R + "/api/net/service/deploy", svcBody("s2", "x", `,"RR_ip":"fdff:2000::9"`), tok, 400, "bad_address", "RR_ip"},
		{"closest v6 in RR range", "POST", R + "/api/net/service/deploy", svcBody("s2", "x", `,"closest_ip_v6":"fdff:2000::5"`), tok, 400, "out_of_pool", "closest_ip_v6"},
		{"custom IP in use", "POST", R + "/api/net/service/deploy", svcBody("s2", "x", `,"RR_ip":"`+rrIP+`"`), tok, 409, "address_in_use", "RR_ip"},
		{"job name taken", "POST", R + "/api/net/service/deploy", svcBody("s2", "web", ""), tok, 409, "conflict", "job_name"},
		{"instance unknown service", "POST", R + "/api/net/instance/deploy", `{"_id":"nope","instance_number":1,"cluster_id":"c1"}`, tok, 404, "not_found", "_id"},
		{"instance unknown cluster", "POST", R + "/api/net/instance/deploy", `{"_id":"svc1","instance_number":1,"cluster_id":"c9"}`, tok, 404, "not_found", "cluster_id"},
		{"instance negative", "POST", R + "/api/net/instance/deploy", `{"_id":"svc1","instance_number":-2,"cluster_id":"c1"}`, tok, 400, "bad_instance_number", "instance_number"},
		{"instance fraction", "POST", R + "/api/net/instance/deploy", `{"_id":"svc1","instance_number":1.5,"cluster_id":"c1"}`, tok, 400, "bad_type", "instance_number"},
		{"instance no cluster", "POST", R + "/api/net/instance/deploy", `{"_id":"svc1","instance_number":1}`, tok, 400, "missing_field", "cluster_id"},
		{"nsIP outside workers", "POST", R + "/api/net/service/net_deploy_status", `{"job_id":"svc1","instances":[{"instance_number":0,"namespace_ip":"10.30.0.5","host_ip":"198.18.0.1","host_port":50103}]}`, tok, 400, "out_of_pool", "namespace_ip"},
		{"status unknown instance", "POST", R + "/api/net/service/net_deploy_status", `{"job_id":"svc1","instances":[{"instance_number":0,"namespace_ip":"10.18.0.2","host_ip":"198.18.0.1","host_port":50103},{"instance_number":7,"namespace_ip":"10.18.0.3","host_ip":"198.18.0.1","host_port":50103}]}`, tok, 404, "not_found", "instance 7"},
		{"status port zero", "POST", R + "/api/net/service/net_deploy_status", `{"job_id":"svc1","instances":[{"instance_number":0,"namespace_ip":"10.18.0.2","host_ip":"198.18.0.1","host_port":0}]}`, tok, 400, "bad_port", "host_port"},
		{"status instances object", "POST", R + "/api/net/service/net_deploy_status", `{"job_id":"svc1","instances":{}}`, tok, 400, "bad_type", "instances"},
		{"bad job in path", "GET", R + "/api/net/service/a.b.c/instances", ``, tok, 400, "bad_name", "job_name"},
		{"unknown job", "GET", R + "/api/net/service/a.b.c.d/instances", ``, tok, 404, "not_found", "job_name"},
		{"ip outside pools", "GET", R + "/api/net/service/ip/10.31.0.1/instances", ``, tok, 400, "out_of_pool", "ip"},
		{"ip not an IP", "GET", R + "/api/net/service/ip/not-an-ip/instances", ``, tok, 400, "bad_address", "ip"},
		{"ip free", "GET", R + "/api/net/service/ip/10.30.200.1/instances", ``, tok, 404, "not_found", "ip"},
		{"delete unknown service", "DELETE", R + "/api/net/service/nope", ``, tok, 404, "not_found", "_id"},
		{"delete service with instances", "DELETE", R + "/api/net/service/svc1", ``, tok, 409, "conflict", "instances"},
		{"delete bad instance number", "DELETE", R + "/api/net/svc1/abc", ``, tok, 400, "bad_instance_number", "instance_number"},
		{"delete unknown instance", "DELETE", R + "/api/net/svc1/5", ``, tok, 404, "not_found", "instance_number"},
		{"interest bad cluster id", "DELETE", R + "/api/net/interest/app.ns.web.default?cluster_id=a%20b", ``, tok, 400, "bad_id", "cluster_id"},
		{"release unknown subnet", "DELETE", R + "/api/net/subnet/ghost", ``, tok, 404, "not_found", "node_id"},
		{"subnet bad node id", "GET", R + "/api/net/subnet?node_id=a%20b", ``, tok, 400, "bad_id", "node_id"},
		{"preview bad family", "GET", R + "/api/pubnet/service/netinfo/available-ip?v=5", ``, tok, 400, "bad_param", "v"},
		{"unknown endpoint", "GET", R + "/api/net/nothing", ``, tok, 404, "not_found", "no such endpoint"},
		{"wrong method", "PUT", R + "/api/net/cluster", `{}`, tok, 405, "method_not_allowed", "method"},
		{"oversized body", "POST", R + "/api/net/cluster", big, tok, 413, "body_too_large", "body"},
		{"missing token", "GET", R + "/api/net/service/app.ns.web.default/instances", ``, "", 401, "unauthorized", "Authorization"},
		{"wrong token", "GET", R + "/api/net/service/app.ns.web.default/instances", ``, "not-" + tok, 401, "unauthorized", "Authorization"},
		// cluster
		{"node without ip", "POST", C + "/api/node/register", `{"node_id":"n2"}`, tok, 400, "missing_field", "node_ip"},
		{"node bad ip", "POST", C + "/api/node/register", `{"node_id":"n2","node_ip":"1.2.3"}`, tok, 400, "bad_address", "node_ip"},
		{"node bad location", "POST", C + "/api/node/register", `{"node_id":"n2","node_ip":"198.18.0.9","location":{"lat":100,"long":0}}`, tok, 400, "bad_location", "location"},
		{"node port type", "POST", C + "/api/node/register", `{"node_id":"n2","node_ip":"198.18.0.9","tunnel_port":[1]}`, tok, 400, "bad_type", "tunnel_port"},
		{"resolve without node", "GET", C + "/api/node/resolve?job=app.ns.web.default", ``, tok, 400, "missing_field", "node_id"},
		{"resolve unknown node", "GET", C + "/api/node/resolve?node_id=ghost&job=app.ns.web.default", ``, tok, 404, "not_found", "node_id"},
		{"resolve ip and job", "GET", C + "/api/node/resolve?node_id=node1&job=app.ns.web.default&ip=10.30.0.1", ``, tok, 400, "missing_field", "ip, job"},
		{"resolve unknown job", "GET", C + "/api/node/resolve?node_id=node1&job=a.b.c.zzz", ``, tok, 404, "not_found", "job_name"},
		{"deployed outside subnet", "POST", C + "/api/node/instance/deployed", `{"node_id":"node1","job_name":"app.ns.web.default","instance_number":0,"namespace_ip":"10.18.7.2"}`, tok, 400, "out_of_pool", "namespace_ip"},
		{"deployed unknown node", "POST", C + "/api/node/instance/deployed", `{"node_id":"ghost","job_name":"app.ns.web.default","instance_number":0,"namespace_ip":"10.18.0.2"}`, tok, 404, "not_found", "node_id"},
		{"job update bad type", "POST", C + "/api/net/job/update", `{"job_name":"app.ns.web.default","instance_number":0,"type":"MOVE"}`, tok, 400, "bad_type", "type"},
		{"watch bad since", "GET", C + "/api/node/watch?node_id=node1&since=abc", ``, tok, 400, "bad_param", "since"},
		{"watch unknown node", "GET", C + "/api/node/watch?node_id=ghost&since=0&timeout=0", ``, tok, 404, "not_found", "node_id"},
		{"cluster missing token", "GET", C + "/api/node/peers?node_id=node1", ``, "", 401, "unauthorized", "Authorization"},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, tc := range cases {
		before := snapshot(t, rdb, DefaultPrefix)
		var st int
		var b []byte
		if len(tc.body) > MaxBody {
			st, b = rawPost(t, tc.url, tc.body, tc.token)
		} else {
			st, b = call(t, tc.method, tc.url, tc.body, tc.token)
		}
		var eb api.ErrorBody
		if err := json.Unmarshal(b, &eb); err != nil {
			t.Errorf("%s: answer %q is not an error body: %v", tc.name, b, err)
			continue
		}
		if st != tc.status || eb.Code != tc.code || !strings.Contains(eb.Error, tc.mention) {
			t.Errorf("%s: %d %s %q; want %d %s mentioning %q", tc.name, st, eb.Code, eb.Error, tc.status, tc.code, tc.mention)
		}
		if d := diffSnap(before, snapshot(t, rdb, DefaultPrefix)); d != "" {
			t.Errorf("%s: Redis changed:\n%s", tc.name, d)
		}
	}
}

// TestRejectedRequestsCounted: requests fasthttp refuses before any handler
// runs (a body over MaxBody, an unreadable header) are answered from the
// one status table and counted in the request metrics like any other.
func TestRejectedRequestsCounted(t *testing.T) {
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{sweep: -1})
	_, C := startCluster(t, rdb, R, clusterOpts{id: "c1"})
	big := `{"cluster_id":"c1","cluster_address":"` + strings.Repeat("a", MaxBody) + `","cluster_port":1}`
	for _, base := range []string{R, C} {
		url := base + "/api/net/cluster"
		if base == C {
			url = base + "/api/node/register"
		}
		st, b := rawPost(t, url, big, "")
		var eb api.ErrorBody
		if err := json.Unmarshal(b, &eb); err != nil || st != 413 || eb.Code != "body_too_large" || !strings.Contains(eb.Error, "body") {
			t.Errorf("%s: %d %s, want 413 body_too_large", url, st, b)
		}
		route := strings.TrimPrefix(url, base)
		if v := metricValue(t, base, `oakwire_http_requests_total{code="413",route="POST `+route+`"}`); v != 1 {
			t.Errorf("%s: 413 counted %v times, want 1", url, v)
		}

		st, b = rawRequest(t, base, "POST "+route+" HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
		if err := json.Unmarshal(b, &eb); err != nil || st != 400 || eb.Code != "bad_request" {
			t.Errorf("%s with a bad Content-Length: %d %s, want 400 bad_request", url, st, b)
		}
		// The header did not parse: there is no route to name.
		if v := metricValue(t, base, `oakwire_http_requests_total{code="400",route="other"}`); v != 1 {
			t.Errorf("%s: 400 counted %v times under route other, want 1", url, v)
		}
	}
}
