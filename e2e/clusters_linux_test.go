package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/pkttest"
	"github.com/oakwire/oakwire/internal/testbed"
)

// TestAcrossClusters is issue 17's acceptance test: root and two clusters
// (own servicemanager processes, own Redis prefixes), four nodes with the
// AF_XDP data plane: a and b in cluster1, c and d in cluster2. Service
// "xweb" has instance 0 on c (cluster2) and instance 1 on b (cluster1);
// clients run on a (cluster1) and d (cluster2). Subtests run in order and
// build on each other. All of it with the kernel tier on and off.
func TestAcrossClusters(t *testing.T) {
	for _, offload := range []string{"on", "off"} {
		t.Run("offload="+offload, func(t *testing.T) { acrossClusters(t, offload) })
	}
}

func acrossClusters(t *testing.T, offload string) {
	d, err := up(t, deploy.Options{Dataplane: "xdp", Nodes: 4, ClusterNodes: []int{2, 2}, Offload: offload})
	if err != nil {
		skipIfNoXDP(t, err)
		t.Fatal(err)
	}
	ctx := context.Background()
	a, b, c, dn := d.Node("a"), d.Node("b"), d.Node("c"), d.Node("d")
	if a.Cluster == c.Cluster || a.Cluster != b.Cluster || c.Cluster != dn.Cluster {
		t.Fatalf("clusters: a %s, b %s, c %s, d %s", a.Cluster.ID, b.Cluster.ID, c.Cluster.ID, dn.Cluster.ID)
	}
	web, err := d.DeployService(ctx, "xweb1", "e2e.ns.xweb.default")
	if err != nil {
		t.Fatal(err)
	}
	i0, i1 := deployEcho(t, d, "xweb1", 0, c), deployEcho(t, d, "xweb1", 1, b)
	client, client2 := addClient(t, d, a), addClient(t, d, dn)
	rr := web.RR()
	t.Logf("RR %v; xweb/0 %v on c (%s), xweb/1 %v on b (%s); clients %v on a, %v on d",
		rr, i0.IP, c.Cluster.ID, i1.IP, b.Cluster.ID, client.IP, client2.IP)

	// Every node accepts tunnel traffic from the other three: each cluster
	// hosts the service and is interested in it, so they are linked.
	for _, n := range d.Nodes {
		waitPeers(t, d, n, 3, 5*time.Second)
	}
	for _, ip := range []netip.Addr{rr.V4, rr.V6} {
		waitAnswered(t, d, client, "udp", ip, 5*time.Second)
	}

	t.Run("RoundRobinSpansClusters", func(t *testing.T) { checkRoundRobin(t, d, client, rr, i0, i1) })

	t.Run("InstanceIPsInTheOtherCluster", func(t *testing.T) {
		for _, tc := range []struct {
			from, to *deploy.Instance
		}{{client, i0}, {client2, i1}} {
			for _, ip := range []netip.Addr{tc.to.IP.V4, tc.to.IP.V6} {
				waitAnswered(t, d, tc.from, "udp", ip, 5*time.Second)
				for _, proto := range []string{"udp", "tcp"} {
					r := ask(t, d, tc.from, proto, ip, 3, 3, time.Second)
					checkAnswered(t, r, "instance IP in the other cluster")
					if r.ByTag()[tc.to.Tag()] != r.Answered {
						t.Errorf("%s from %s to instance IP %v of %s: answered by %v", proto, tc.from.Tag(), ip, tc.to.Tag(), r.ByTag())
					}
				}
				if err := d.Ping(tc.from, ip, 5, time.Second); err != nil {
					t.Errorf("ping from %s to %v: %v", tc.from.Tag(), ip, err)
				}
			}
		}
	})

	t.Run("MoveToTheOtherCluster", func(t *testing.T) {
		// xweb/1 moves from b (cluster1) to c (cluster2); clients in both
		// clusters talk to its instance IP before and after.
		for _, cl := range []*deploy.Instance{client, client2} {
			waitAnswered(t, d, cl, "udp", i1.IP.V4, 5*time.Second)
		}
		before := i1.IP
		moved, err := d.MoveInstance(ctx, "xweb1", 1, c)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if moved.IP != before || moved.Node != c {
			t.Fatalf("after the move: %v on %s, want %v on c", moved.IP, moved.Node.Name, before)
		}
		e, err := d.ServiceEntry(ctx, web.Job)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range e.InstanceList {
			if x.InstanceNumber == 1 && (x.ClusterID != c.Cluster.ID || x.HostIP != c.IP() || x.InstanceIP != before.V4) {
				t.Errorf("root's instance 1 after the move: %+v", x)
			}
		}
		for _, cl := range []*deploy.Instance{client, client2} {
			followsWithin(t, d, cl, moved, start, time.Second)
		}
		for _, cl := range []*deploy.Instance{client, client2} {
			for _, ip := range []netip.Addr{moved.IP.V4, moved.IP.V6} {
				r := ask(t, d, cl, "tcp", ip, 3, 2, time.Second)
				checkAnswered(t, r, "moved instance IP")
				if r.ByTag()[moved.Tag()] != r.Answered {
					t.Errorf("tcp from %s to moved %v: %v", cl.Tag(), ip, r.ByTag())
				}
			}
		}
		r := ask(t, d, client, "udp", rr.V4, 10, 2, time.Second)
		checkAnswered(t, r, "RR after the move")
		if f := r.FlowsByTag(); f[moved.Tag()] == 0 || f[i0.Tag()] == 0 {
			t.Errorf("RR after the move: flows %v", f)
		}
	})

	t.Run("NodeLeavesPeerSets", func(t *testing.T) {
		// d leaves cluster2: within 1 s it is no peer of a and b (cluster1).
		if err := d.RemoveNode(ctx, dn); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for _, n := range []*deploy.Node{a, b} {
			waitPeers(t, d, n, 2, 3*time.Second)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("removed node left cluster1's data planes after %v, want within 1 s", took)
		} else {
			t.Logf("removed node left cluster1's data planes in %v", took.Round(time.Millisecond))
		}
		var pr struct {
			Peers []struct {
				NodeID string `json:"node_id"`
			} `json:"peers"`
		}
		if err := d.ClusterCallOn(ctx, a.Cluster, "GET", "/api/node/peers?node_id=a", nil, &pr); err != nil {
			t.Fatal(err)
		}
		for _, p := range pr.Peers {
			if p.NodeID == "d" {
				t.Errorf("cluster1 still lists d as a's peer: %+v", pr.Peers)
			}
		}
		// Its tunnel packets are dropped now.
		injectDropped(t, d, dn.TB.NS, a, client)
	})

	t.Run("StrangerDropped", func(t *testing.T) {
		x, err := d.Bed.AddNode("x")
		if err != nil {
			t.Fatal(err)
		}
		injectDropped(t, d, x.NS, a, client)
	})
}

// waitPeers waits until n's data plane holds want peers.
func waitPeers(t *testing.T, d *deploy.Deployment, n *deploy.Node, want int, within time.Duration) {
	t.Helper()
	poll(t, within, func() (bool, string) {
		st, err := d.Status(context.Background(), n)
		if err != nil {
			return false, err.Error()
		}
		got := st.Dataplane.Tables["peers"]
		return got == want, fmt.Sprintf("node %s: data plane has %d peers, want %d", n.Name, got, want)
	})
}

// followsWithin checks that from's requests to to's instance IP are
// answered by to (at its new place) in an ask that began within d of
// start.
func followsWithin(t *testing.T, dep *deploy.Deployment, from, to *deploy.Instance, start time.Time, d time.Duration) {
	t.Helper()
	var last string
	for {
		began := time.Since(start)
		r := ask(t, dep, from, "udp", to.IP.V4, 2, 1, 150*time.Millisecond)
		if r.Answered == r.Sent && r.ByTag()[to.Tag()] == r.Sent {
			if began > d {
				t.Errorf("%s followed %s only %v after the move", from.Tag(), to.Tag(), began.Round(time.Millisecond))
			} else {
				t.Logf("%s follows %s %v after the move returned", from.Tag(), to.Tag(), began.Round(time.Millisecond))
			}
			return
		}
		last = fmt.Sprintf("answered by %v of %d (%s)", r.ByTag(), r.Sent, r.Failures())
		if time.Since(start) > 3*d {
			t.Fatalf("%s still not following %s %v after the move: %s", from.Tag(), to.Tag(), 3*d, last)
		}
	}
}

// injectDropped sends tunnel datagrams from namespace ns (a host no cluster
// lists as a peer now), from the tunnel port to node's tunnel port, each
// holding a well-formed IPv4/UDP packet for dst's container, and checks
// that node's steering (the uplink program, or the kernel tier's) drops
// them as not_peer.
func injectDropped(t *testing.T, d *deploy.Deployment, ns string, node *deploy.Node, dst *deploy.Instance) {
	t.Helper()
	const sent = 5
	before := drops(t, d, node, "not_peer")
	inner := pkttest.UDP(netip.MustParseAddr("10.30.0.250"), dst.NSIP.V4, 40000, deploy.EchoUDPPort, []byte("not from a peer"))
	err := testbed.Do(ns, func() error {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{Port: 50103})
		if err != nil {
			return err
		}
		defer conn.Close()
		to := &net.UDPAddr{IP: node.IP().AsSlice(), Port: 50103}
		for range sent {
			if _, err := conn.WriteToUDP(inner, to); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("inject from %s: %v", ns, err)
	}
	poll(t, 3*time.Second, func() (bool, string) {
		got := drops(t, d, node, "not_peer") - before
		return got >= sent, fmt.Sprintf("node %s counted %d of %d injected tunnel packets as not_peer", node.Name, got, sent)
	})
}
