package e2e

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/testenv"
)

// up starts a deployment for t and closes it when t ends, dumping the
// process logs if t failed.
func up(t *testing.T, o deploy.Options) (*deploy.Deployment, error) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "redis-server")
	o.BinDir = binDir
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	d, err := deploy.Up(ctx, o)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if t.Failed() {
			var b strings.Builder
			d.DumpLogs(&b, 30)
			d.DumpStatus(context.Background(), &b)
			t.Log("process logs:\n" + b.String())
		}
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return d, nil
}

// TestHarness checks the deployment harness itself with the kernel-only
// data plane (no service IPs): processes come up, nodes register, a service
// and its instances get addresses, same-node containers reach each other,
// and Close removes every namespace.
func TestHarness(t *testing.T) {
	d, err := up(t, deploy.Options{Dataplane: "none"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	names := d.Namespaces()
	if len(names) != 5 { // a, b, c, ctl, underlay bridge
		t.Errorf("namespaces %v: want 5", names)
	}
	subnets := map[string]bool{}
	for _, n := range d.Nodes {
		if !n.Subnet.IsValid() || !n.Subnet6.IsValid() {
			t.Fatalf("node %s: subnets %v %v", n.Name, n.Subnet, n.Subnet6)
		}
		if subnets[n.Subnet.String()] {
			t.Errorf("node %s: subnet %v handed out twice", n.Name, n.Subnet)
		}
		subnets[n.Subnet.String()] = true
	}

	svc, err := d.DeployService(ctx, "web1", "demo.ns.web.default")
	if err != nil {
		t.Fatal(err)
	}
	for _, pol := range []string{"RR", "Closest"} {
		ip := svc.IPs[pol]
		if !ip.V4.IsValid() || !ip.V6.IsValid() {
			t.Errorf("service IPs %s: %v", pol, ip)
		}
	}
	b, c := d.Node("b"), d.Node("c")
	i0, err := d.DeployInstance(ctx, "web1", 0, b)
	if err != nil {
		t.Fatal(err)
	}
	i1, err := d.DeployInstance(ctx, "web1", 1, c)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := d.AddClient(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []*deploy.Instance{i0, i1, cl} {
		if !in.Node.Subnet.Contains(in.NSIP.V4) || !in.Node.Subnet6.Contains(in.NSIP.V6) {
			t.Errorf("%s: nsIPs %v outside node %s's subnets %v %v", in.Tag(), in.NSIP, in.Node.Name, in.Node.Subnet, in.Node.Subnet6)
		}
		if !in.IP.V4.IsValid() || !in.IP.V6.IsValid() {
			t.Errorf("%s: instance IPs %v", in.Tag(), in.IP)
		}
	}
	// Root knows where the instances run (reported by the netmanagers
	// through the cluster).
	e, err := d.ServiceEntry(ctx, svc.Job)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.InstanceList) != 2 || e.InstanceList[0].NamespaceIP != i0.NSIP.V4 ||
		e.InstanceList[0].HostIP != b.IP() || e.InstanceList[1].NamespaceIP != i1.NSIP.V4 {
		t.Errorf("root's entry %+v; want instance 0 at %v on %v, 1 at %v", e.InstanceList, i0.NSIP.V4, b.IP(), i1.NSIP.V4)
	}

	// Same node: plain kernel routing through the node's gateway.
	if err := d.StartEcho(ctx, i0); err != nil {
		t.Fatal(err)
	}
	if err := d.Ping(cl, i0.NSIP.V4, 5, time.Second); err != nil {
		t.Error(err)
	}
	if err := d.Ping(cl, i0.NSIP.V6, 5, time.Second); err != nil {
		t.Error(err)
	}
	for _, proto := range []string{"udp", "tcp"} {
		r, err := d.Ask(ctx, cl, proto, netipAddrPort(i0.NSIP.V4, proto), 3, 2, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r.Answered != 6 || r.ByTag()[i0.Tag()] != 6 {
			t.Errorf("%s to %v: %d/%d answered, by %v (%s)", proto, i0.NSIP.V4, r.Answered, r.Sent, r.ByTag(), r.FirstError())
		}
		if p := r.Peers(); len(p) != 1 || p[0] != cl.NSIP.V4 {
			t.Errorf("%s: server saw %v, want the client's nsIP %v", proto, p, cl.NSIP.V4)
		}
	}

	// Status lists the containers; undeploy removes one and its namespace.
	st, err := d.Status(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Containers) != 2 || st.Dataplane.Mode != "none" {
		t.Errorf("status of b: %d containers, dataplane %q", len(st.Containers), st.Dataplane.Mode)
	}
	ns1 := i1.NS
	if err := d.UndeployInstance(ctx, "web1", 1); err != nil {
		t.Fatal(err)
	}
	if nsExists(t, ns1) {
		t.Errorf("namespace %s still there after undeploy", ns1)
	}
	if e, err := d.ServiceEntry(ctx, svc.Job); err != nil || len(e.InstanceList) != 1 {
		t.Errorf("after undeploy root has %+v (%v)", e, err)
	}

	// Restart keeps addresses.
	if err := d.RestartNetManager(ctx, b); err != nil {
		t.Fatal(err)
	}
	st2, err := d.Status(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(st2.Containers) != 2 || st2.Containers[0].NSIP != st.Containers[0].NSIP {
		t.Errorf("after restart: %+v, before %+v", st2.Containers, st.Containers)
	}
	if err := d.Ping(cl, i0.NSIP.V4, 5, time.Second); err != nil {
		t.Error(err)
	}

	// Close removes every namespace of the deployment.
	all := d.Namespaces()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range all {
		if nsExists(t, ns) {
			t.Errorf("namespace %s left after Close", ns)
		}
	}
}

// upWeb starts a deployment of two nodes (a, b) with service web
// (demo.ns.web.default) deployed at root, for t.
func upWeb(t *testing.T) (d *deploy.Deployment, a, b *deploy.Node, svc *deploy.Service) {
	t.Helper()
	d, err := up(t, deploy.Options{Nodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	svc, err = d.DeployService(context.Background(), "web", "demo.ns.web.default")
	if err != nil {
		t.Fatal(err)
	}
	return d, d.Node("a"), d.Node("b"), svc
}

// deployEcho places instance n of service id on node and starts its echo
// servers.
func deployEcho(t *testing.T, d *deploy.Deployment, id string, n int, node *deploy.Node) *deploy.Instance {
	t.Helper()
	ctx := context.Background()
	in, err := d.DeployInstance(ctx, id, n, node)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.StartEcho(ctx, in); err != nil {
		t.Fatal(err)
	}
	return in
}

// addClient deploys a client container on node.
func addClient(t *testing.T, d *deploy.Deployment, node *deploy.Node) *deploy.Instance {
	t.Helper()
	cl, err := d.AddClient(context.Background(), node)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// checkRoundRobin sends 20 flows of 3 requests from client to the RR IPs
// rr, v4 and v6, UDP and TCP, and checks that every request is answered,
// each flow by one instance, the flows split evenly over insts (two), the
// servers see the client's instance IP and the replies come from the RR
// IP.
func checkRoundRobin(t *testing.T, d *deploy.Deployment, client *deploy.Instance, rr deploy.IPPair, insts ...*deploy.Instance) {
	t.Helper()
	for _, ip := range []netip.Addr{rr.V4, rr.V6} {
		for _, proto := range []string{"udp", "tcp"} {
			r := ask(t, d, client, proto, ip, 20, 3, time.Second)
			checkAnswered(t, r, "RR")
			if m := r.Sticky(); m != nil {
				t.Errorf("%s to RR %v: flows %v answered by more than one instance", proto, ip, m)
			}
			flows := r.FlowsByTag()
			for _, in := range insts {
				if n := flows[in.Tag()]; n < 8 || n > 12 {
					t.Errorf("%s to RR %v: %s (%s) got %d of 20 flows (%v), want 10±2", proto, ip, in.Tag(), in.Node.Cluster.ID, n, flows)
				}
			}
			wantPeer := client.IP.V4
			if ip.Is6() {
				wantPeer = client.IP.V6
			}
			if p := r.Peers(); len(p) != 1 || p[0] != wantPeer {
				t.Errorf("%s to RR %v: servers saw sources %v, want the client's instance IP %v", proto, ip, p, wantPeer)
			}
			if f := r.Froms(); len(f) != 1 || f[0] != ip {
				t.Errorf("%s to RR %v: replies came from %v, want the RR IP", proto, ip, f)
			}
		}
	}
}

// netipAddrPort is ip with the echo port of proto.
func netipAddrPort(ip netip.Addr, proto string) netip.AddrPort {
	if proto == "tcp" {
		return netip.AddrPortFrom(ip, deploy.EchoTCPPort)
	}
	return netip.AddrPortFrom(ip, deploy.EchoUDPPort)
}

func nsExists(t *testing.T, name string) bool {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}
