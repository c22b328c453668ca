package control

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/policy"
)

const tok = "s3cret-token"

func svcBody(id, svc string, extra string) string {
	return fmt.Sprintf(`{"_id":%q,"deployment_descriptor":{"app_name":"app","app_ns":"ns","microservice_name":%q,"microservice_namespace":"default"%s}}`, id, svc, extra)
}

func ipOf(t *testing.T, e api.ServiceIPs, typ string) (netip.Addr, netip.Addr) {
	t.Helper()
	for _, s := range e.ServiceIPList {
		if s.IpType == typ {
			return s.Address, s.AddressV6
		}
	}
	t.Fatalf("no %s IP in %+v", typ, e)
	return netip.Addr{}, netip.Addr{}
}

// TestEndToEnd drives root, cluster and two node clients through real HTTP
// on loopback against a real Redis.
func TestEndToEnd(t *testing.T) {
	_, rdb := startRedis(t)
	root, rootURL := startRoot(t, rdb, rootOpts{token: tok})
	_ = root
	cl, clURL := startCluster(t, rdb, rootURL, clusterOpts{token: tok, id: "c1", retention: 4})
	_ = cl
	ctx := context.Background()

	// The cluster registers itself with root in the background.
	deadline := time.Now().Add(3 * time.Second)
	for {
		if ok, _ := rdb.HExists(ctx, DefaultPrefix+"{r}:clusters", "c1").Result(); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cluster did not register with root")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Deploy a service: one IP pair per policy, in the right ranges.
	var dep api.ServiceIPs
	mustCall(t, 200, "POST", rootURL+"/api/net/service/deploy", svcBody("svc1", "web", ""), tok, &dep)
	if dep.JobName != "app.ns.web.default" {
		t.Fatalf("job_name %q", dep.JobName)
	}
	plan := ipam.DefaultConfig()
	rr4, rr6 := ipOf(t, dep, "RR")
	cl4, cl6 := ipOf(t, dep, "Closest")
	rrP, _ := plan.KindPrefix(ipam.Kind(policy.RR))
	clP, _ := plan.KindPrefix(ipam.Kind(policy.Closest))
	instP, _ := plan.KindPrefix(ipam.KindInstance)
	for _, a := range []netip.Addr{rr4, cl4} {
		if !plan.ServiceV4.Contains(a) {
			t.Errorf("%s outside %s", a, plan.ServiceV4)
		}
	}
	if !rrP.Contains(rr6) || !clP.Contains(cl6) {
		t.Errorf("v6 service IPs %s %s outside %s / %s", rr6, cl6, rrP, clP)
	}
	// Idempotent: same _id again → same IPs.
	var dep2 api.ServiceIPs
	mustCall(t, 200, "POST", rootURL+"/api/net/service/deploy", svcBody("svc1", "web", ""), tok, &dep2)
	if fmt.Sprint(dep2) != fmt.Sprint(dep) {
		t.Errorf("redeploy changed the answer: %+v vs %+v", dep2, dep)
	}

	// Instances: idempotent.
	var i0, i0b, i1 api.InstanceAnswer
	mustCall(t, 200, "POST", rootURL+"/api/net/instance/deploy", `{"_id":"svc1","instance_number":0,"cluster_id":"c1"}`, tok, &i0)
	mustCall(t, 200, "POST", rootURL+"/api/net/instance/deploy", `{"_id":"svc1","instance_number":0,"cluster_id":"c1"}`, tok, &i0b)
	mustCall(t, 200, "POST", rootURL+"/api/net/instance/deploy", `{"_id":"svc1","instance_number":1,"cluster_id":"c1"}`, tok, &i1)
	if i0 != i0b {
		t.Errorf("instance redeploy changed: %+v vs %+v", i0, i0b)
	}
	if i0.InstanceIP == i1.InstanceIP || i0.InstanceIPv6 == i1.InstanceIPv6 {
		t.Errorf("instances share addresses: %+v %+v", i0, i1)
	}
	if !instP.Contains(i0.InstanceIPv6) || !plan.ServiceV4.Contains(i0.InstanceIP) {
		t.Errorf("instance IPs outside pools: %+v", i0)
	}

	// Nodes register through the cluster.
	n1 := nodeclient.New(clURL, "node1", nodeclient.Options{Token: tok})
	n2 := nodeclient.New(clURL, "node2", nodeclient.Options{Token: tok})
	r1, err := n1.Register(ctx, netip.MustParseAddr("198.18.0.1"), 0, &api.Location{Lat: 48.1, Long: 11.5})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := n2.Register(ctx, netip.MustParseAddr("198.18.0.2"), 50200, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Subnet == r2.Subnet || r1.Subnet.Bits() != 26 || r1.SubnetV6.Bits() != 120 {
		t.Fatalf("subnets %+v %+v", r1, r2)
	}
	r1b, err := n1.Register(ctx, netip.MustParseAddr("198.18.0.1"), 0, nil)
	if err != nil || r1b.Subnet != r1.Subnet || r1b.SubnetV6 != r1.SubnetV6 {
		t.Fatalf("re-register: %+v %v (first %+v)", r1b, err, r1)
	}
	if len(r2.Peers) != 1 || r2.Peers[0].IP != netip.MustParseAddr("198.18.0.1") || r2.Peers[0].Port != api.DefaultTunnelPort {
		t.Fatalf("node2 peers %+v", r2.Peers)
	}

	// Resolve by name and by every kind of IP, at the cluster and at root.
	e, err := n1.ResolveByName(ctx, "app.ns.web.default")
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != "svc1" || len(e.InstanceList) != 2 || len(e.ServiceIPList) != 2 {
		t.Fatalf("entry %+v", e)
	}
	for _, ip := range []netip.Addr{rr4, rr6, cl4, cl6, i0.InstanceIP, i1.InstanceIPv6} {
		e2, err := n2.ResolveByIP(ctx, ip)
		if err != nil || e2.ID != "svc1" {
			t.Errorf("cluster resolve %s: %+v %v", ip, e2, err)
		}
		var re api.ServiceEntry
		mustCall(t, 200, "GET", rootURL+"/api/net/service/ip/"+ip.String()+"/instances", "", tok, &re)
		if re.ID != "svc1" {
			t.Errorf("root resolve %s: %+v", ip, re)
		}
	}
	var re api.ServiceEntry
	mustCall(t, 200, "GET", rootURL+"/api/net/service/app_ns_web_default/instances", "", tok, &re) // '_' form
	if _, err := n1.ResolveByIP(ctx, netip.MustParseAddr("10.30.99.99")); err == nil {
		t.Error("resolve of a free IP succeeded")
	}

	// Interests: root knows c1 cares about svc1; the cluster knows both nodes do.
	if ok, _ := rdb.SIsMember(ctx, DefaultPrefix+"{r}:int:svc1", "c1").Result(); !ok {
		t.Error("root: cluster interest not recorded")
	}
	if n, _ := rdb.SCard(ctx, DefaultPrefix+"{c:c1}:jint:app.ns.web.default").Result(); n != 2 {
		t.Errorf("cluster: %d interested nodes, want 2", n)
	}

	// A change at root reaches node1's watch within 1 s: node2 reports
	// instance 0 deployed on it.
	w, err := n1.Watch(ctx, r1.Epoch, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	since := w.Version
	if w.Resync {
		since = w.Version
	}
	type result struct {
		w   api.WatchResponse
		err error
		at  time.Time
	}
	watchFor := func(since uint64, cond func(api.WatchResponse) bool) chan result {
		ch := make(chan result, 1)
		go func() {
			for {
				w, err := n1.Watch(ctx, r1.Epoch, since, 3*time.Second)
				if err != nil || cond(w) {
					ch <- result{w, err, time.Now()}
					return
				}
				since = w.Version
			}
		}()
		return ch
	}
	hasNS := func(w api.WatchResponse) bool {
		for _, c := range w.Changes {
			if c.Service != nil {
				for _, in := range c.Service.InstanceList {
					if in.InstanceNumber == 0 && in.NamespaceIP.IsValid() {
						return true
					}
				}
			}
		}
		return false
	}
	got := watchFor(since, hasNS)
	time.Sleep(50 * time.Millisecond) // the watch is waiting
	nsIP := r2.Subnet.Addr().Next().Next()
	ns6 := r2.SubnetV6.Addr().Next().Next()
	start := time.Now()
	if err := n2.ReportDeployed(ctx, "app.ns.web.default", 0, nsIP, ns6); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-got:
		if res.err != nil {
			t.Fatal(res.err)
		}
		if d := res.at.Sub(start); d > time.Second {
			t.Errorf("change delivered after %v, want within 1 s", d)
		}
		since = res.w.Version
		var inst api.Instance
		for _, c := range res.w.Changes {
			if c.Service != nil {
				inst = c.Service.InstanceList[0]
			}
		}
		if inst.NamespaceIP != nsIP || inst.HostIP != netip.MustParseAddr("198.18.0.2") || inst.HostPort != 50200 {
			t.Errorf("delivered instance %+v", inst)
		}
		t.Logf("root change → node watch in %v", res.at.Sub(start))
	case <-time.After(time.Second):
		t.Fatal("change not delivered within 1 s")
	}
	// root's own record
	mustCall(t, 200, "GET", rootURL+"/api/net/service/app.ns.web.default/instances", "", tok, &re)
	if re.InstanceList[0].NamespaceIP != nsIP {
		t.Errorf("root entry %+v", re.InstanceList[0])
	}
	// Oakestra's net_deploy_status directly, and a wrong-host undeploy report
	// leaves the location alone.
	mustCall(t, 200, "POST", rootURL+"/api/net/service/net_deploy_status",
		fmt.Sprintf(`{"job_id":"svc1","instances":[{"instance_number":1,"namespace_ip":"%s","namespace_ip_v6":"","host_ip":"198.18.0.2","host_port":50200}]}`, nsIP.Next()), tok, nil)
	if err := n1.ReportUndeployed(ctx, "app.ns.web.default", 1); err != nil { // node1 does not run it
		t.Fatal(err)
	}
	mustCall(t, 200, "GET", rootURL+"/api/net/service/app.ns.web.default/instances", "", tok, &re)
	if !re.InstanceList[1].NamespaceIP.IsValid() {
		t.Error("undeploy report of another node cleared the location")
	}
	if err := n2.ReportUndeployed(ctx, "app.ns.web.default", 1); err != nil {
		t.Fatal(err)
	}
	mustCall(t, 200, "GET", rootURL+"/api/net/service/app.ns.web.default/instances", "", tok, &re)
	if re.InstanceList[1].NamespaceIP.IsValid() || re.InstanceList[1].InstanceIP != i1.InstanceIP {
		t.Errorf("after undeploy report: %+v (instance IPs must survive)", re.InstanceList[1])
	}

	// A new instance at root: delivered within 1 s too.
	got = watchFor(since, func(w api.WatchResponse) bool {
		for _, c := range w.Changes {
			if c.Service != nil && len(c.Service.InstanceList) == 3 {
				return true
			}
		}
		return false
	})
	time.Sleep(50 * time.Millisecond)
	start = time.Now()
	mustCall(t, 200, "POST", rootURL+"/api/net/instance/deploy", `{"_id":"svc1","instance_number":2,"cluster_id":"c1"}`, tok, nil)
	select {
	case res := <-got:
		if res.err != nil {
			t.Fatal(res.err)
		}
		if d := res.at.Sub(start); d > time.Second {
			t.Errorf("instance deploy delivered after %v", d)
		}
		since = res.w.Version
	case <-time.After(time.Second):
		t.Fatal("instance deploy not delivered within 1 s")
	}

	// A watcher that missed more than the retained changes (4) re-syncs, and
	// so does one from another epoch.
	seqKey := DefaultPrefix + "{c:c1}:nseq:node1"
	for i := 3; i < 10; i++ {
		before, _ := rdb.Get(ctx, seqKey).Int()
		mustCall(t, 200, "POST", rootURL+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"svc1","instance_number":%d,"cluster_id":"c1"}`, i), tok, nil)
		for end := time.Now().Add(time.Second); ; time.Sleep(5 * time.Millisecond) {
			if now, _ := rdb.Get(ctx, seqKey).Int(); now > before {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("instance %d: no change pushed to node1", i)
			}
		}
	}
	ws, err := n1.Watch(ctx, r1.Epoch, since, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !ws.Resync || len(ws.Services) != 1 || len(ws.Services[0].InstanceList) != 10 || len(ws.Peers) != 1 {
		t.Fatalf("stale watcher: resync=%v services=%d peers=%v", ws.Resync, len(ws.Services), ws.Peers)
	}
	ws2, err := n1.Watch(ctx, "another-epoch", ws.Version, time.Second)
	if err != nil || !ws2.Resync {
		t.Fatalf("other epoch: %+v %v", ws2, err)
	}
	ws3, err := n1.Watch(ctx, r1.Epoch, ws.Version, 100*time.Millisecond)
	if err != nil || ws3.Resync || len(ws3.Changes) != 0 {
		t.Fatalf("current watcher: %+v %v", ws3, err)
	}
	// Peers change: a third node registers.
	got = watchFor(ws.Version, func(w api.WatchResponse) bool { return len(w.Peers) == 2 })
	time.Sleep(50 * time.Millisecond)
	if _, err := nodeclient.New(clURL, "node3", nodeclient.Options{Token: tok}).Register(ctx, netip.MustParseAddr("198.18.0.3"), 0, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-got:
		if res.err != nil {
			t.Fatal(res.err)
		}
	case <-time.After(time.Second):
		t.Fatal("peer change not delivered within 1 s")
	}

	// Interests dropped.
	if err := n1.DropInterest(ctx, "app.ns.web.default"); err != nil {
		t.Fatal(err)
	}
	if err := n2.DropInterest(ctx, "app_ns_web_default"); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.SCard(ctx, DefaultPrefix+"{c:c1}:jint:app.ns.web.default").Result(); n != 0 {
		t.Errorf("cluster: %d nodes still interested", n)
	}
	if ok, _ := rdb.SIsMember(ctx, DefaultPrefix+"{r}:int:svc1", "c1").Result(); ok {
		t.Error("root: cluster still interested after its last node dropped interest")
	}

	// Undeploy: the service cannot go while instances exist; then all go and
	// their addresses are free (unknown to root).
	mustCall(t, 409, "DELETE", rootURL+"/api/net/service/svc1", "", tok, nil)
	var del struct{ Removed []int }
	mustCall(t, 200, "DELETE", rootURL+"/api/net/svc1/-1", "", tok, &del)
	if len(del.Removed) != 10 {
		t.Errorf("removed %v", del.Removed)
	}
	mustCall(t, 404, "GET", rootURL+"/api/net/service/ip/"+i0.InstanceIP.String()+"/instances", "", tok, nil)
	mustCall(t, 200, "DELETE", rootURL+"/api/net/service/svc1", "", tok, nil)
	mustCall(t, 404, "GET", rootURL+"/api/net/service/ip/"+rr4.String()+"/instances", "", tok, nil)
	mustCall(t, 404, "GET", rootURL+"/api/net/service/app.ns.web.default/instances", "", tok, nil)

	// Node deregistration frees its subnet at root.
	if err := n1.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	mustCall(t, 404, "DELETE", rootURL+"/api/net/subnet/node1", "", tok, nil)
	// Cluster deregistration drops its interests.
	mustCall(t, 200, "DELETE", rootURL+"/api/net/cluster/c1", "", tok, nil)
	mustCall(t, 404, "DELETE", rootURL+"/api/net/cluster/c1", "", tok, nil)
}

// TestOnePolicyAddressesAndQuarantine checks SPEC §2's example (one policy:
// S → 10.30.0.1, S1 → .2, S2 → .3), exhaustion (507) and that freed
// addresses come back only after the quarantine.
func TestOnePolicyAddressesAndQuarantine(t *testing.T) {
	_, rdb := startRedis(t)
	plan := ipam.Config{ServiceV4: netip.MustParsePrefix("10.30.0.0/29"), Quarantine: 700 * time.Millisecond}
	_, rootURL := startRoot(t, rdb, rootOpts{policies: []string{"RR"}, plan: plan})
	mustCall(t, 200, "POST", rootURL+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":1}`, "", nil)
	var s api.ServiceIPs
	mustCall(t, 200, "POST", rootURL+"/api/net/service/deploy", svcBody("S", "s", ""), "", &s)
	if len(s.ServiceIPList) != 1 || s.ServiceIPList[0].Address != netip.MustParseAddr("10.30.0.1") || s.ServiceIPList[0].AddressV6 != netip.MustParseAddr("fdff:2000::1") {
		// RR keeps its registry kind (2) when it is the only enabled
		// policy: its v6 range is fdff:2000::/21 whatever else is enabled.
		t.Fatalf("service IPs %+v, want 10.30.0.1 / fdff:2000::1", s.ServiceIPList)
	}
	deploy := func(n int) (int, api.InstanceAnswer) {
		var ia api.InstanceAnswer
		st, b := call(t, "POST", rootURL+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"S","instance_number":%d,"cluster_id":"c1"}`, n), "")
		if st == 200 {
			_ = jsonUnmarshal(b, &ia)
		} else if st == 507 && !strings.Contains(string(b), `"pool_exhausted"`) {
			t.Fatalf("507 without pool_exhausted: %s", b)
		}
		return st, ia
	}
	for n, want := range []string{"10.30.0.2", "10.30.0.3", "10.30.0.4", "10.30.0.5", "10.30.0.6"} {
		st, ia := deploy(n)
		if st != 200 || ia.InstanceIP.String() != want {
			t.Fatalf("instance %d: %d %+v, want %s", n, st, ia, want)
		}
	}
	if st, _ := deploy(5); st != 507 {
		t.Fatalf("full pool: status %d, want 507", st)
	}
	mustCall(t, 200, "DELETE", rootURL+"/api/net/S/0", "", "", nil)
	if st, _ := deploy(5); st != 507 {
		t.Fatalf("freed address reused inside quarantine: status %d", st)
	}
	time.Sleep(800 * time.Millisecond)
	st, ia := deploy(5)
	if st != 200 || ia.InstanceIP != netip.MustParseAddr("10.30.0.2") {
		t.Fatalf("after quarantine: %d %+v, want 10.30.0.2 back", st, ia)
	}
}
