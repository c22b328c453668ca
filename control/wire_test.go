package control

import (
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/wire.golden")

// TestWireGolden drives root and a cluster through every endpoint in a
// fixed order and compares each answer, byte for byte, with
// testdata/wire.golden (recorded before the wire types moved to package
// api): the JSON of the API does not change under a refactoring. Random
// values (epochs) are masked; every step waits for root's notifications to
// be delivered, so the cluster's caches and the nodes' streams are the
// same in every run.
func TestWireGolden(t *testing.T) {
	_, rdb := startRedis(t)
	root, R := startRoot(t, rdb, rootOpts{token: tok, sweep: -1})
	_, C := startCluster(t, rdb, R, clusterOpts{token: tok, id: "c1"})
	ctx := context.Background()
	within(t, 5*time.Second, "cluster registered and synced", func() bool {
		n, _ := rdb.Exists(ctx, DefaultPrefix+"{c:c1}:xgen").Result()
		return n == 1
	})
	// settle waits until root delivered every notification: a cluster
	// answers a job update only after it pushed the change to its nodes.
	busy := func() bool {
		n := root.notify
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, q := range n.queues {
			q.mu.Lock()
			busy := len(q.items) > 0
			q.mu.Unlock()
			if busy {
				return true
			}
		}
		return false
	}
	settle := func() {
		for deadline := time.Now().Add(5 * time.Second); busy(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("notifications not delivered within 5 s")
			}
		}
	}
	mask := regexp.MustCompile(`"epoch":"[0-9a-f]+"`)
	var out strings.Builder
	step := func(method, url, body string) {
		t.Helper()
		st, b := call(t, method, url, body, tok)
		path := strings.TrimPrefix(strings.TrimPrefix(url, R), C)
		who := "root"
		if strings.HasPrefix(url, C) {
			who = "cluster"
		}
		fmt.Fprintf(&out, "%s %s %s\n", who, method, path)
		if body != "" {
			fmt.Fprintf(&out, "> %s\n", body)
		}
		fmt.Fprintf(&out, "< %d %s\n", st, mask.ReplaceAllString(strings.TrimSpace(string(b)), `"epoch":"EPOCH"`))
		settle()
	}
	const job = "app.ns.web.default"
	step("POST", R+"/api/net/service/deploy", svcBody("svc1", "web", `,"RR_ip":"10.30.5.5","RR_ip_v6":"fdff:2000::55","closest_ip":null`))
	step("POST", R+"/api/net/service/deploy", svcBody("svc1", "web", ""))
	step("POST", R+"/api/net/service/deploy", svcBody("svc2", "web", ""))
	step("POST", R+"/api/net/service/deploy", `{"_id":"svc3","deployment_descriptor":{"app_name":"app","app_ns":"ns","service_name":"db","service_ns":"default","extra":1}}`)
	step("POST", R+"/api/net/instance/deploy", `{"_id":"svc1","instance_number":0,"cluster_id":"c1"}`)
	step("POST", R+"/api/net/instance/deploy", `{"_id":"svc1","instance_number":1,"cluster_id":"c1"}`)
	step("POST", R+"/api/net/instance/deploy", `{"_id":"svc1","instance_number":1,"cluster_id":"c1"}`)
	step("GET", R+"/api/net/service/"+job+"/instances", "")
	step("GET", R+"/api/net/service/ip/10.30.5.5/instances", "")
	step("GET", R+"/api/net/service/ip/fdff::1/instances", "")
	step("GET", R+"/api/net/subnet?node_id=n9", "")
	step("DELETE", R+"/api/net/subnet/n9", "")
	step("GET", R+"/api/pubnet/service/netinfo/available-ip?v=4", "")
	step("GET", R+"/api/pubnet/service/netinfo/available-ip?v=6&kind=RR", "")
	step("GET", R+"/api/pubnet/service/netinfo/available-ip?v=6&kind=instance", "")
	step("POST", R+"/api/net/cluster", `{"cluster_id":"c3","cluster_address":"10.0.0.5","cluster_port":10110}`)
	step("DELETE", R+"/api/net/cluster/c3", "")

	step("POST", C+"/api/node/register", `{"node_id":"n1","node_ip":"198.18.0.1","location":{"lat":48.1,"long":11.5}}`)
	step("POST", C+"/api/node/register", `{"node_id":"n2","node_ip":"198.18.0.2","tunnel_port":50200}`)
	step("POST", C+"/api/node/register", `{"node_id":"n2","node_ip":"198.18.0.2","tunnel_port":50200}`)
	step("GET", C+"/api/node/resolve?node_id=n1&job="+job, "")
	step("GET", C+"/api/node/resolve?node_id=n2&ip=10.30.5.5", "")
	step("GET", C+"/api/node/resolve?node_id=n2&ip=10.30.0.2", "") // svc3's RR IP
	step("POST", C+"/api/node/instance/deployed", `{"node_id":"n2","job_name":"`+job+`","instance_number":0,"namespace_ip":"10.18.0.130","namespace_ip_v6":"fc00::202"}`)
	step("GET", C+"/api/node/watch?node_id=n1&since=0&timeout=0", "")
	step("GET", C+"/api/node/watch?node_id=n1&since=1&timeout=0&peers=delta", "")
	step("GET", C+"/api/node/watch?node_id=n1&since=0&timeout=0&epoch=0000", "")
	step("GET", C+"/api/node/peers?node_id=n1", "")
	step("POST", R+"/api/net/service/net_deploy_status", `{"job_id":"svc1","instances":[{"instance_number":1,"namespace_ip":"10.18.0.131","host_ip":"198.18.0.2","host_port":50200}]}`)
	step("POST", R+"/api/net/service/net_undeploy_status", `{"job_id":"svc1","instances":[{"instance_number":1,"host_ip":"198.18.0.2","host_port":50200}]}`)
	step("POST", C+"/api/node/instance/undeployed", `{"node_id":"n2","job_name":"`+job+`","instance_number":0}`)
	step("GET", C+"/api/node/watch?node_id=n2&since=0&timeout=0&peers=delta", "")
	step("PUT", R+"/api/net/cluster/c5/nodes/n7", `{"ip":"198.18.0.7","port":50103}`)
	step("PUT", R+"/api/net/cluster/c5/nodes", `{"nodes":[{"node_id":"n7","ip":"198.18.0.7","port":50103},{"node_id":"n8","ip":"198.18.0.8","port":1,"public_ip":"203.0.113.8","public_port":2}]}`)
	step("DELETE", R+"/api/net/cluster/c5/nodes/n8", "")
	step("GET", R+"/api/net/cluster/c1/peers", "")
	step("GET", R+"/api/net/cluster/c1/peers?of=c5", "")
	step("POST", C+"/api/net/deployment", `{"job_name":"`+job+`"}`)
	step("POST", C+"/api/net/job/update", `{"job_name":"`+job+`","instance_number":0,"type":"DEPLOYMENT"}`)
	step("POST", C+"/api/net/peers/update", `{}`)
	step("DELETE", C+"/api/node/interest/"+job+"?node_id=n1", "")
	step("DELETE", R+"/api/net/interest/"+job+"?cluster_id=c1", "")
	step("DELETE", R+"/api/net/svc1/0", "")
	step("DELETE", R+"/api/net/svc1/-1", "")
	step("DELETE", R+"/api/net/service/svc1", "")
	step("DELETE", R+"/api/net/service/svc1", "")
	step("DELETE", C+"/api/net/deployment/"+job, "")
	step("DELETE", C+"/api/node/n2", "")
	step("POST", C+"/api/node/register", `{"node_id":"n3","node_ip":"1.2.3"}`)
	step("POST", R+"/api/net/service/net_deploy_status", `{"job_id":"svc3","instances":[{"instance_number":0}]}`)

	got := out.String()
	const file = "testdata/wire.golden"
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := range max(len(gl), len(wl)) {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("line %d differs:\n got %s\nwant %s", i+1, g, w)
			}
		}
	}
}
