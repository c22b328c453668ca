package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/internal/testenv"
)

// TestOakestraReplay replays every call Oakestra's own components make to
// the networking component (oakestra/oakestra's system manager and
// cluster manager ext_requests, go_node_engine/requests, and
// oakestra-net's cluster service manager), with their methods, paths and
// bodies as those components build them (numbers they send as strings
// are strings here), against real Oakwire processes, and checks every
// field the callers read back (docs/api.md "Oakestra compatibility").
//
// The callers are this test; the one Oakestra endpoint root itself calls,
// an Oakestra cluster service manager's POST /api/net/job/update, is a
// recorder listening on node b's underlay address, from where the test
// also makes that cluster's calls (root identifies it by that address).
// Oakestra sends no bearer token; the replay adds Oakwire's (docs/api.md
// says how to run Oakestra's components against an authenticated root).
func TestOakestraReplay(t *testing.T) {
	testenv.RequireBinary(t, "nsenter")
	d, err := up(t, deploy.Options{Nodes: 2, Dataplane: "none"})
	if err != nil {
		t.Fatal(err)
	}
	a, b := d.Node("a"), d.Node("b")
	R, C := d.RootURL, d.ClusterURL
	sysmgr := newReplayer(t, d.Ctl.NS, d.Token) // system manager and cluster manager
	oak := startOakestraCluster(t, b.TB.NS, b.IP())
	oakc := newReplayer(t, b.TB.NS, d.Token) // the Oakestra cluster service manager, from its address

	// --- system manager → root (ext_requests/net_plugin_requests.py) ---
	// net_register_cluster: cluster_address is request.remote_addr of an
	// eventlet server on "::" (an IPv4-mapped IPv6 address),
	// cluster_port the cluster's network_component_port as it came in
	// (a string).
	sysmgr.want(200, "POST", R+"/api/net/cluster",
		fmt.Sprintf(`{"cluster_id":"oak1","cluster_address":"::ffff:%s","cluster_port":"%d"}`, b.IP(), oak.port))
	// net_inform_service_deploy: the whole microservice document.
	const id = "6566f0c0ffee00000000000a"
	job := "demo.default.web.default"
	sysmgr.want(200, "POST", R+"/api/net/service/deploy", `{"deployment_descriptor":{
		"_id":"`+id+`","applicationID":"6566f0c0ffee000000000001","app_name":"demo","app_ns":"default",
		"microservice_name":"web","microservice_namespace":"default","service_name":"web","service_ns":"default",
		"job_name":"`+job+`","virtualization":"container","image":"docker.io/library/nginx:latest",
		"cmd":[],"environment":[],"memory":100,"vcpus":1,"vgpus":0,"storage":0,"port":"80","status":"REQUESTED",
		"instance_list":[],"next_instance_progressive_number":0,"RR_ip":"","RR_ip_v6":"",
		"added_files":[],"constraints":[],"connectivity":[]},"_id":"`+id+`"}`)
	// net_inform_instance_deploy, to the Oakestra cluster and to ours.
	sysmgr.want(200, "POST", R+"/api/net/instance/deploy", `{"instance_number":0,"cluster_id":"oak1","_id":"`+id+`"}`)
	sysmgr.want(200, "POST", R+"/api/net/instance/deploy", `{"instance_number":1,"cluster_id":"`+d.ClusterID+`","_id":"`+id+`"}`)
	// Older system managers name the id system_job_id.
	const id2 = "6566f0c0ffee00000000000b"
	job2 := "demo.default.api.default"
	sysmgr.want(200, "POST", R+"/api/net/service/deploy", `{"deployment_descriptor":{"app_name":"demo","app_ns":"default",
		"microservice_name":"api","microservice_namespace":"default","system_job_id":"`+id2+`"},"system_job_id":"`+id2+`"}`)

	// --- cluster manager → cluster (ext_requests/net_plugin_requests.py) ---
	sysmgr.want(200, "POST", C+"/api/net/deployment", `{"job_name":"`+job+`"}`)

	// --- Oakestra cluster service manager → root
	// (interfaces/root_service_manager_requests.py) ---
	// root_service_manager_get_subnet: reads subnet_addr, subnet_addr_v6.
	sub := oakc.wantJSON(200, "GET", R+"/api/net/subnet", "")
	subnet := mustAddr(t, sub, "subnet_addr")
	subnet6 := mustAddr(t, sub, "subnet_addr_v6")
	// cloud_table_query_service_name: the name with '_', no cluster_id
	// (root takes the caller's address): the answer is stored as the
	// job (system_job_id, job_name, service_ip_list, instance_list).
	e := oakc.wantJSON(200, "GET", R+"/api/net/service/"+strings.ReplaceAll(job, ".", "_")+"/instances", "")
	checkTableEntry(t, e, id, job, 2)
	rr := serviceIP(t, e, "RR")
	// system_manager_notify_deployment_status: host_port as it came
	// from the node (a string), job_id the stored system_job_id.
	ns4, ns6 := subnet.Next().Next(), subnet6.Next().Next()
	oakc.want(200, "POST", R+"/api/net/service/net_deploy_status", fmt.Sprintf(`{"job_id":%q,"instances":[{
		"instance_number":0,"namespace_ip":%q,"namespace_ip_v6":%q,"host_ip":"198.18.0.99","host_port":"50103"}]}`,
		e["system_job_id"], ns4, ns6))
	// root → the Oakestra cluster (interested since its table query):
	// POST /api/net/job/update {job_name, instance_number, type}, as
	// operations/instances_management.py reads it.
	u := oak.next(t)
	if u["job_name"] != job || u["type"] != "DEPLOYMENT" {
		t.Errorf("job update to the Oakestra cluster: %v", u)
	}
	if n, ok := u["instance_number"].(float64); !ok || n != 0 {
		t.Errorf("job update instance_number: %#v, want the number 0", u["instance_number"])
	}
	// cloud_table_query_ip: the IP with '_'.
	e = oakc.wantJSON(200, "GET", R+"/api/net/service/ip/"+strings.ReplaceAll(rr.String(), ".", "_")+"/instances", "")
	checkTableEntry(t, e, id, job, 2)
	in0 := instanceOf(t, e, 0)
	if in0["host_ip"] != "198.18.0.99" || in0["host_port"] != float64(50103) || in0["namespace_ip"] != ns4.String() || in0["namespace_ip_v6"] != ns6.String() {
		t.Errorf("instance 0 after net_deploy_status: %v", in0)
	}
	// The newer cluster service manager sends cluster_id, "None" when it
	// does not know its own: the caller's address decides then too.
	oakc.wantJSON(200, "GET", R+"/api/net/service/"+strings.ReplaceAll(job2, ".", "_")+"/instances?cluster_id=None", "")
	// cloud_remove_interest: no cluster_id either.
	oakc.want(200, "DELETE", R+"/api/net/interest/"+job, "")
	// Not interested in job any more, still in job2: a change of job is
	// not sent, the next change of job2 is (updates to one cluster go in
	// order, so job's would come first).
	sysmgr.want(200, "DELETE", R+"/api/net/"+id+"/1", "")
	sysmgr.want(200, "POST", R+"/api/net/instance/deploy", `{"instance_number":0,"cluster_id":"oak1","_id":"`+id2+`"}`)
	if u := oak.next(t); u["job_name"] != job2 || u["type"] != "DEPLOYMENT" {
		t.Errorf("after dropping its interest in %s the Oakestra cluster got %v, want %s's update", job, u, job2)
	}
	// Unknown service: 404 (Oakestra answers 200 {}: docs/api.md).
	oakc.want(404, "GET", R+"/api/net/service/demo_default_nope_default/instances", "")

	// --- users → root: /api/pubnet/service/netinfo (blueprints/netinfo_blueprints.py) ---
	ni := sysmgr.wantJSON(200, "GET", R+"/api/pubnet/service/netinfo/"+strings.ReplaceAll(job, ".", "_"), "")
	for k, v := range map[string]string{"system_job_id": id, "service_job_id": id, "app_name": "demo", "app_ns": "default", "service_name": "web", "service_ns": "default"} {
		if ni[k] != v {
			t.Errorf("netinfo %s: %#v, want %q", k, ni[k], v)
		}
	}
	if il, _ := ni["instance_list"].([]any); len(il) != 1 {
		t.Errorf("netinfo instance_list: %v", ni["instance_list"])
	} else if in := il[0].(map[string]any); in["cluster_id"] != "oak1" || in["instance_number"] != float64(0) || in["instance_ip"] == nil || in["instance_ip_v6"] == nil {
		t.Errorf("netinfo instance: %v", in)
	}
	if sl, _ := ni["service_ip_list"].([]any); len(sl) != 2 {
		t.Errorf("netinfo service_ip_list: %v", ni["service_ip_list"])
	}
	byIP := sysmgr.wantJSON(200, "GET", R+"/api/pubnet/service/netinfo/ip/"+strings.ReplaceAll(rr.String(), ".", "_"), "")
	if byIP["system_job_id"] != id {
		t.Errorf("netinfo by ip: %v", byIP)
	}
	for _, tc := range []struct {
		query string
		types []string
	}{{"?v=4", []string{"IPv4"}}, {"?v=6", []string{"IPv6"}}, {"", []string{"IPv4", "IPv6"}}} {
		av := sysmgr.wantJSON(200, "GET", R+"/api/pubnet/service/netinfo/available-ip/1"+tc.query, "")
		list, _ := av["available_service_ips"].([]any)
		if len(list) != len(tc.types) {
			t.Errorf("available-ip/1%s: %v", tc.query, av)
			continue
		}
		for i, want := range tc.types {
			ip := list[i].(map[string]any)
			set, unset := "Address", "Address_v6"
			if want == "IPv6" {
				set, unset = unset, set
			}
			if ip["IpType"] != want || ip[set] == nil || ip[unset] != nil {
				t.Errorf("available-ip/1%s [%d]: %v, want %s with %s set and %s null", tc.query, i, ip, want, set, unset)
			}
		}
	}
	sysmgr.want(404, "GET", R+"/api/pubnet/service/netinfo/demo_default_nope_default", "")

	// --- node engine → NetManager socket (go_node_engine/requests/NetManagerRequests.go) ---
	// RegisterSelfToNetworkComponent: the bare cluster host (the harness
	// registered every node so already; again is 200, another cluster 409).
	node := newSocketReplayer(t, a)
	node.want(200, "POST", "/register", `{"client_id":"a","cluster_address":"`+d.Ctl.IP.String()+`"}`)
	node.want(409, "POST", "/register", `{"client_id":"a","cluster_address":"198.18.0.250"}`)
	// AttachNetworkToTask: a container by pid. The orchestrator placed
	// the instance at root first.
	sysmgr.want(200, "POST", R+"/api/net/instance/deploy", `{"instance_number":1,"cluster_id":"`+d.ClusterID+`","_id":"`+id2+`"}`)
	sysmgr.want(200, "POST", R+"/api/net/instance/deploy", `{"instance_number":2,"cluster_id":"`+d.ClusterID+`","_id":"`+id2+`"}`)
	nsPath, err := d.NewNetns("oakc1")
	if err != nil {
		t.Fatal(err)
	}
	pid := startSleeper(t, nsPath)
	dep := node.wantJSON(200, "POST", "/container/deploy", fmt.Sprintf(`{"pid":%d,"serviceName":%q,"instanceNumber":1,"portMappings":"8080:80/tcp"}`, pid, job2))
	nsIP := mustAddr(t, dep, "nsAddress")
	if dep["serviceName"] != job2 || !a.Subnet.Contains(nsIP) || !a.Subnet6.Contains(mustAddr(t, dep, "nsAddressv6")) {
		t.Errorf("container deploy answer: %v", dep)
	}
	// Root learns where it runs through the cluster.
	waitEntry(t, sysmgr, R, job2, func(e map[string]any) bool {
		in := instanceOf(t, e, 1)
		return in["namespace_ip"] == nsIP.String() && in["host_ip"] == a.IP().String() && in["host_port"] == float64(50103)
	})
	// DetachNetworkFromTask: pid -1.
	node.want(200, "POST", "/container/undeploy", fmt.Sprintf(`{"pid":-1,"serviceName":%q,"instanceNumber":1,"portMappings":""}`, job2))
	// CreateNetworkNamespaceForUnikernel / DeleteNamespaceForUnikernel.
	ukName := job2 + ".instance.2"
	t.Cleanup(func() { removeEmptyNetnsFile(ukName) })
	uk := node.wantJSON(200, "POST", "/unikernel/deploy", fmt.Sprintf(`{"pid":0,"serviceName":%q,"instanceNumber":2,"portMappings":""}`, job2))
	ukIP := mustAddr(t, uk, "nsAddress")
	st, err := d.Status(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range st.Containers {
		found = found || c.Job == job2 && c.Instance == 2 && strings.HasSuffix(c.Netns, "/"+ukName) && c.NSIP == ukIP.String()
	}
	if !found {
		t.Errorf("unikernel instance not attached in namespace %s: %+v", ukName, st.Containers)
	}
	waitEntry(t, sysmgr, R, job2, func(e map[string]any) bool {
		return instanceOf(t, e, 2)["namespace_ip"] == ukIP.String()
	})
	node.want(200, "POST", "/unikernel/undeploy", fmt.Sprintf(`{"pid":-1,"serviceName":%q,"instanceNumber":2,"portMappings":""}`, job2))
	if st, err := d.Status(context.Background(), a); err != nil || len(st.Containers) != 0 {
		t.Errorf("containers after the undeploys: %+v %v", st, err)
	}

	// --- system manager → root: undeploy (net_inform_instance_undeploy,
	// net_inform_service_undeploy) ---
	sysmgr.want(200, "DELETE", R+"/api/net/"+id+"/0", "")
	sysmgr.want(200, "DELETE", R+"/api/net/service/"+id, "")
	sysmgr.want(200, "DELETE", R+"/api/net/"+id2+"/-1", "")
	sysmgr.want(200, "DELETE", R+"/api/net/service/"+id2, "")
	sysmgr.want(404, "GET", R+"/api/net/service/"+job+"/instances", "")
}

// replayer sends requests with exact bodies from inside a namespace.
type replayer struct {
	t     *testing.T
	hc    *http.Client
	base  string // for socket replayers: "http://netmanager"
	token string
}

// newReplayer dials from namespace ns (so the source address is the
// namespace's), with the bearer token.
func newReplayer(t *testing.T, ns, token string) *replayer {
	return &replayer{t: t, token: token, hc: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = testbed.Do(ns, func() error {
				var dl net.Dialer
				c, err = dl.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}}
}

// newSocketReplayer calls node n's netmanager on its unix socket, as the
// node engine does (no token).
func newSocketReplayer(t *testing.T, n *deploy.Node) *replayer {
	return &replayer{t: t, base: "http://netmanager", hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", n.Socket)
		}}}}
}

func (r *replayer) do(method, url, body string) (int, []byte) {
	r.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, r.base+url, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// want expects status and returns the answer.
func (r *replayer) want(status int, method, url, body string) []byte {
	r.t.Helper()
	st, b := r.do(method, url, body)
	if st != status {
		r.t.Fatalf("%s %s %s: %d %s, want %d", method, url, body, st, b, status)
	}
	return b
}

// wantJSON expects status and a JSON object.
func (r *replayer) wantJSON(status int, method, url, body string) map[string]any {
	r.t.Helper()
	b := r.want(status, method, url, body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		r.t.Fatalf("%s %s: answer %s: %v", method, url, b, err)
	}
	return m
}

// oakestraCluster records the job updates root sends to an Oakestra
// cluster service manager (its POST /api/net/job/update).
type oakestraCluster struct {
	port    int
	updates chan map[string]any
}

func startOakestraCluster(t *testing.T, ns string, ip netip.Addr) *oakestraCluster {
	t.Helper()
	oc := &oakestraCluster{updates: make(chan map[string]any, 64)}
	var ln net.Listener
	if err := testbed.Do(ns, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	oc.port = ln.Addr().(*net.TCPAddr).Port
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/net/job/update", func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, "Invalid Parameters", 400)
			return
		}
		select {
		case oc.updates <- m:
		default:
		}
		_, _ = io.WriteString(w, "update notification received")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	t.Cleanup(func() { _ = srv.Close(); wg.Wait() })
	return oc
}

// next waits (bounded) for the next job update.
func (oc *oakestraCluster) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case u := <-oc.updates:
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no job update reached the Oakestra cluster within 10 s")
		return nil
	}
}

// checkTableEntry checks the fields Oakestra's cluster service manager
// reads from a table query (mongo_insert_job, mqtt forwarding).
func checkTableEntry(t *testing.T, e map[string]any, id, job string, instances int) {
	t.Helper()
	if e["system_job_id"] != id || e["job_name"] != job {
		t.Errorf("table entry: system_job_id %#v job_name %#v, want %s %s", e["system_job_id"], e["job_name"], id, job)
	}
	sl, _ := e["service_ip_list"].([]any)
	if len(sl) != 2 {
		t.Errorf("service_ip_list: %v", e["service_ip_list"])
	}
	for _, s := range sl {
		m := s.(map[string]any)
		for _, k := range []string{"IpType", "Address", "Address_v6"} {
			if _, ok := m[k].(string); !ok {
				t.Errorf("service_ip_list entry %v: %s not a string", m, k)
			}
		}
	}
	il, _ := e["instance_list"].([]any)
	if len(il) != instances {
		t.Errorf("instance_list: %d instances, want %d: %v", len(il), instances, il)
	}
	for _, x := range il {
		m := x.(map[string]any)
		if _, ok := m["instance_number"].(float64); !ok {
			t.Errorf("instance %v: instance_number not a number", m)
		}
		for _, k := range []string{"instance_ip", "instance_ip_v6", "namespace_ip", "namespace_ip_v6", "host_ip", "cluster_id"} {
			if _, ok := m[k].(string); !ok {
				t.Errorf("instance %v: %s not a string", m, k)
			}
		}
		if _, ok := m["host_port"].(float64); !ok {
			t.Errorf("instance %v: host_port not a number", m)
		}
	}
}

func serviceIP(t *testing.T, e map[string]any, typ string) netip.Addr {
	t.Helper()
	sl, _ := e["service_ip_list"].([]any)
	for _, s := range sl {
		if m := s.(map[string]any); m["IpType"] == typ {
			return mustAddr(t, m, "Address")
		}
	}
	t.Fatalf("no %s service IP in %v", typ, e)
	return netip.Addr{}
}

func instanceOf(t *testing.T, e map[string]any, n int) map[string]any {
	t.Helper()
	il, _ := e["instance_list"].([]any)
	for _, x := range il {
		if m := x.(map[string]any); m["instance_number"] == float64(n) {
			return m
		}
	}
	t.Fatalf("no instance %d in %v", n, e)
	return nil
}

func mustAddr(t *testing.T, m map[string]any, key string) netip.Addr {
	t.Helper()
	s, _ := m[key].(string)
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("%s: %#v in %v is not an IP address", key, m[key], m)
	}
	return a
}

// waitEntry polls root's entry of job (bounded) until ok holds.
func waitEntry(t *testing.T, r *replayer, root, job string, ok func(map[string]any) bool) {
	t.Helper()
	var e map[string]any
	for range 100 {
		if e = r.wantJSON(200, "GET", root+"/api/net/service/"+job+"/instances", ""); ok(e) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("root's entry of %s never got there: %v", job, e)
}

// startSleeper runs `sleep 120` in the namespace at path (a container's
// process, by pid as the node engine passes it) and kills it by PID when
// the test ends.
func startSleeper(t *testing.T, path string) int {
	t.Helper()
	cmd := exec.Command("nsenter", "--net="+path, "sleep", "120")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// Until nsenter has entered the namespace, the pid is still in ours.
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		t.Fatal(err)
	}
	for range 200 {
		var got unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), &got) == nil && got.Ino == want.Ino {
			return cmd.Process.Pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("sleeper %d never entered %s", cmd.Process.Pid, path)
	return 0
}

// removeEmptyNetnsFile removes /run/netns/name if it is an empty file: a
// namespace a netmanager made in its own mount namespace (it runs under
// ip netns exec here) leaves one when it dies before deleting it.
func removeEmptyNetnsFile(name string) {
	p := "/run/netns/" + name
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
		_ = os.Remove(p)
	}
}
