package control

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// peerWatch follows one node's peer set through its watch, the way a
// netmanager does: a resync replaces it, a peers change applies its delta
// or, without one, the whole set of the answer.
type peerWatch struct {
	mu   sync.Mutex // guards set
	set  map[string]api.Peer
	errs int
}

func watchPeers(t *testing.T, c *nodeclient.Client) *peerWatch {
	t.Helper()
	w := &peerWatch{set: map[string]api.Peer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		epoch, since := "", uint64(math.MaxUint64)
		for ctx.Err() == nil {
			r, err := c.Watch(ctx, epoch, since, 2*time.Second)
			if err != nil {
				w.mu.Lock()
				w.errs++
				w.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
				continue
			}
			w.mu.Lock()
			if r.Resync {
				w.replaceLocked(r.Peers)
			}
			for _, ch := range r.Changes {
				switch {
				case ch.Type != api.ChangePeers:
				case ch.PeerDelta != nil:
					for _, p := range ch.PeerDelta.Del {
						delete(w.set, p.ClusterID+"/"+p.NodeID)
					}
					for _, p := range ch.PeerDelta.Set {
						w.set[p.ClusterID+"/"+p.NodeID] = p
					}
				default:
					w.replaceLocked(r.Peers)
				}
			}
			w.mu.Unlock()
			epoch, since = r.Epoch, r.Version
		}
	}()
	return w
}

func (w *peerWatch) replaceLocked(ps []api.Peer) {
	w.set = map[string]api.Peer{}
	for _, p := range ps {
		w.set[p.ClusterID+"/"+p.NodeID] = p
	}
}

// keys returns the peers as "cluster/node", sorted.
func (w *peerWatch) keys() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Sorted(maps.Keys(w.set))
}

func (w *peerWatch) get(key string) (api.Peer, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p, ok := w.set[key]
	return p, ok
}

// within waits until cond holds and fails the test unless that took at
// most d (SPEC §4: a change reaches the nodes within 1 s). It polls for
// 3·d, so a slow run reports how slow.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 3*d {
			t.Fatalf("%s: not within %v", what, 3*d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if took := time.Since(start); took > d {
		t.Errorf("%s: took %v, want within %v", what, took, d)
	} else {
		t.Logf("%s: %v", what, took.Round(time.Millisecond))
	}
}

func TestPeersAcrossClusters(t *testing.T) {
	_, rdb := startRedis(t)
	testPeersAcrossClusters(t, rdb)
}

// TestPeersAcrossClustersOnRedisCluster: the same on a three-master Redis
// Cluster, where root's keys and each cluster's sit in different slots.
func TestPeersAcrossClustersOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), PoolSize: 64})
	t.Cleanup(func() { _ = rdb.Close() })
	testPeersAcrossClusters(t, rdb)
}

// testPeersAcrossClusters is issue 17's control-plane half: root and three
// clusters, each with its own Redis prefix; nodes n1, n2 in c1, n3 in c2,
// n5 in c3. A node's peer set is its own cluster's other nodes plus the
// nodes of the clusters its cluster shares a service with (one interested,
// the other hosting an instance), and every change reaches the nodes of
// the other clusters within a second.
func testPeersAcrossClusters(t *testing.T, rdb redis.UniversalClient) {
	_, R := startRoot(t, rdb, rootOpts{})
	cl := map[string]string{}
	deltas := func(cid string) float64 {
		return metricValue(t, cl[cid], `oakwire_cluster_peer_updates_total{kind="delta"}`)
	}
	for _, id := range []string{"c1", "c2", "c3"} {
		_, cl[id] = startCluster(t, rdb, R, clusterOpts{id: id, prefix: "oakwire-" + id + ":"})
	}
	ctx := context.Background()
	waitFor(t, 3*time.Second, "clusters registered with root", func() bool {
		n, _ := rdb.HLen(ctx, DefaultPrefix+"{r}:clusters").Result()
		return n == 3
	})
	node := func(cid, id, ip string) *nodeclient.Client {
		t.Helper()
		n := nodeclient.New(cl[cid], id, nodeclient.Options{PeerDeltas: true})
		if _, err := n.Register(ctx, netip.MustParseAddr(ip), 0, nil); err != nil {
			t.Fatalf("register %s in %s: %v", id, cid, err)
		}
		return n
	}
	n1, n2, n3, n5 := node("c1", "n1", "198.18.0.1"), node("c1", "n2", "198.18.0.2"), node("c2", "n3", "198.18.0.3"), node("c3", "n5", "198.18.0.5")
	w1, w3, w5 := watchPeers(t, n1), watchPeers(t, n3), watchPeers(t, n5)
	// n2 watches the whole set with every change (a client without deltas).
	w2 := watchPeers(t, nodeclient.New(cl["c1"], "n2", nodeclient.Options{}))
	eq := func(w *peerWatch, want ...string) func() bool {
		return func() bool { return slices.Equal(w.keys(), want) }
	}
	within(t, time.Second, "n1 starts with its own cluster", eq(w1, "c1/n2"))
	within(t, time.Second, "n3 starts alone", eq(w3))

	// Service s1: instance 0 in c2 (on n3), instance 1 in c1 (on n2). Once
	// both clusters run it, c1 and c2 are linked; c3 is not.
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", nil)
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c2"}`, "", nil)
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":1,"cluster_id":"c1"}`, "", nil)
	if err := n3.ReportDeployed(ctx, "app.ns.web.default", 0, netip.MustParseAddr("10.18.0.130"), netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if err := n2.ReportDeployed(ctx, "app.ns.web.default", 1, netip.MustParseAddr("10.18.0.66"), netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "c2's node in c1's peer sets", func() bool {
		return eq(w1, "c1/n2", "c2/n3")() && eq(w2, "c1/n1", "c2/n3")()
	})
	within(t, time.Second, "c1's nodes in n3's peer set", eq(w3, "c1/n1", "c1/n2"))
	if p, _ := w1.get("c2/n3"); p.IP != netip.MustParseAddr("198.18.0.3") || p.Port != api.DefaultTunnelPort {
		t.Errorf("n1's peer c2/n3: %+v", p)
	}
	var pr api.PeersResponse
	mustCall(t, 200, "GET", cl["c1"]+"/api/node/peers?node_id=n1", "", "", &pr)
	if len(pr.Peers) != 2 || pr.Peers[1].ClusterID != "c2" || pr.Peers[1].IP != netip.MustParseAddr("198.18.0.3") {
		t.Errorf("c1's GET /api/node/peers of n1: %+v", pr.Peers)
	}

	// Join, endpoint change and leave in c2 reach c1's nodes within 1 s,
	// as root's deltas: c1 fetches nothing.
	d0 := deltas("c1")
	n4 := node("c2", "n4", "198.18.0.4")
	within(t, time.Second, "n4 joining c2 reaches n1", eq(w1, "c1/n2", "c2/n3", "c2/n4"))
	if _, err := n4.Register(ctx, netip.MustParseAddr("198.18.0.44"), 50200, nil); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "n4's new endpoint reaches n1 and n2", func() bool {
		p1, _ := w1.get("c2/n4")
		p2, _ := w2.get("c2/n4")
		return p1.IP == netip.MustParseAddr("198.18.0.44") && p1.Port == 50200 && p2 == p1
	})
	if err := n4.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "n4 leaving c2 reaches n1 and n2", func() bool {
		return eq(w1, "c1/n2", "c2/n3")() && eq(w2, "c1/n1", "c2/n3")()
	})
	if got := deltas("c1") - d0; got != 3 {
		t.Errorf("c1 applied %v of root's deltas for join, change and leave, want 3", got)
	}
	if got := w5.keys(); len(got) != 0 {
		t.Errorf("n5 (c3 shares nothing) has peers %v", got)
	}

	// c3 becomes a client of s1: it sends to c1 and c2, which accept it.
	if _, err := n5.ResolveByName(ctx, "app.ns.web.default"); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "c3, a client of s1, is linked with both hosts", func() bool {
		return eq(w5, "c1/n1", "c1/n2", "c2/n3")() && eq(w1, "c1/n2", "c2/n3", "c3/n5")() && eq(w3, "c1/n1", "c1/n2", "c3/n5")()
	})
	// ... and unlinked when its last node drops the interest.
	if err := n5.DropInterest(ctx, "app.ns.web.default"); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "c3 unlinked after dropping its interest", func() bool {
		return eq(w5)() && eq(w1, "c1/n2", "c2/n3")() && eq(w3, "c1/n1", "c1/n2")()
	})

	// Root's answer to c1: the one cluster linked with it, and its place
	// in c1's sequence of views.
	st, b := call(t, "GET", R+"/api/net/cluster/c1/peers", "", "")
	var v api.PeerView
	if st != 200 || jsonUnmarshal(b, &v) != nil || v.Generation == 0 || len(v.Clusters) != 1 || v.Clusters[0].ClusterID != "c2" {
		t.Fatalf("root's peers of c1: %d %s", st, b)
	}

	// Root's registry API: errors from the one table.
	for _, tc := range []struct{ method, path, body, code string }{
		{"PUT", "/api/net/cluster/c2/nodes/n9", `{"ip":"198.18.0.9","port":70000}`, "bad_port"},
		{"PUT", "/api/net/cluster/c2/nodes/n9", `{"port":1}`, "missing_field"},
		{"PUT", "/api/net/cluster/c2/nodes/n9", `{"ip":"nope","port":1}`, "bad_address"},
		{"PUT", "/api/net/cluster/c2/nodes", `{"nodes":[{"node_id":"a","ip":"198.18.0.9","port":1},{"node_id":"a","ip":"198.18.0.9","port":1}]}`, "duplicate"},
		{"DELETE", "/api/net/cluster/c2/nodes/n9", "", "not_found"},
		{"GET", "/api/net/cluster/c9/peers", "", "not_found"},
		{"GET", "/api/net/cluster/c1/peers?of=c2,b%20d", "", "bad_id"},
	} {
		st, b := call(t, tc.method, R+tc.path, tc.body, "")
		var eb api.ErrorBody
		_ = jsonUnmarshal(b, &eb)
		if eb.Code != tc.code || st/100 != 4 {
			t.Errorf("%s %s %s: %d %s, want code %s", tc.method, tc.path, tc.body, st, b, tc.code)
		}
	}

	// c2 deregistered at root: its nodes leave every peer set.
	mustCall(t, 200, "DELETE", R+"/api/net/cluster/c2", "", "", nil)
	within(t, time.Second, "c2's nodes gone after its deregistration", func() bool {
		return eq(w1, "c1/n2")() && eq(w2, "c1/n1")()
	})
	if ok, _ := rdb.Exists(ctx, DefaultPrefix+"{r}:ep:c2").Result(); ok != 0 {
		t.Error("root kept the endpoints of a deregistered cluster")
	}
}

// TestPeerViewOrder: a cluster never replaces a newer peer view with an
// older one (two fetches racing, from hints or replicas), and an older one
// is fetched again.
func TestPeerViewOrder(t *testing.T) {
	_, rdb := startRedis(t)
	// Not started: no sync with root races with the views applied here.
	c, err := NewCluster(ClusterConfig{ClusterID: "c1", RootURL: "127.0.0.1:1", Log: quietLog}, rdb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	view := func(gen uint64, ip string) api.PeerView {
		return api.PeerView{Epoch: "e1", Generation: gen, Clusters: []api.ClusterPeers{{ClusterID: "c2",
			Nodes: []api.Peer{{NodeID: "n3", IP: netip.MustParseAddr(ip), Port: api.DefaultTunnelPort}}}}}
	}
	if n, err := c.applyPeers(ctx, view(5, "198.18.0.3"), nil); err != nil || n != 1 {
		t.Fatalf("apply gen 5: %d %v", n, err)
	}
	if _, err := c.applyPeers(ctx, view(4, "198.18.0.4"), nil); !errors.Is(err, errStalePeers) {
		t.Fatalf("apply gen 4 after 5: %v, want errStalePeers", err)
	}
	if n, err := c.applyPeers(ctx, view(5, "198.18.0.3"), nil); err != nil || n != 0 {
		t.Fatalf("apply gen 5 again: %d %v, want no change", n, err)
	}
	// Another epoch (root's state was replaced): accepted.
	v := view(1, "198.18.0.6")
	v.Epoch = "e2"
	if n, err := c.applyPeers(ctx, v, []string{"c2"}); err != nil || n != 1 {
		t.Fatalf("apply another epoch: %d %v", n, err)
	}
	peers, err := c.store.peerList(ctx, "n1")
	if err != nil || len(peers) != 1 || peers[0].IP != netip.MustParseAddr("198.18.0.6") || peers[0].ClusterID != "c2" {
		t.Fatalf("peer list %+v %v", peers, err)
	}
	// Root's deltas apply when they follow the version held; an old one is
	// ignored, one after a gap (or of another epoch) asks for a fetch, and
	// a view older than a delta applied leaves the endpoints alone.
	v.Clusters[0].Version = 5
	v.Generation = 2
	if _, err := c.applyPeers(ctx, v, []string{"c2"}); err != nil {
		t.Fatal(err)
	}
	delta := func(epoch string, ver uint64, ip string) int {
		t.Helper()
		n, err := c.applyDelta(ctx, &api.EndpointsDelta{ClusterID: "c2", Epoch: epoch, Version: ver,
			Set: []api.Peer{{NodeID: "n3", IP: netip.MustParseAddr(ip), Port: api.DefaultTunnelPort}}, Del: []string{"n4"}})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := delta("e2", 6, "198.18.0.7"); n != 1 {
		t.Fatalf("delta 6 after 5: %d, want 1 change", n)
	}
	if n := delta("e2", 6, "198.18.0.8"); n != 0 {
		t.Fatalf("delta 6 again: %d, want 0", n)
	}
	if n := delta("e2", 8, "198.18.0.8"); n != -1 {
		t.Fatalf("delta 8 after 6: %d, want -1 (fetch)", n)
	}
	if n := delta("e3", 7, "198.18.0.8"); n != -1 {
		t.Fatalf("delta of another epoch: %d, want -1 (fetch)", n)
	}
	v.Generation = 3
	if n, err := c.applyPeers(ctx, v, nil); err != nil || n != 0 {
		t.Fatalf("view at version 5 after delta 6: %d %v, want no change", n, err)
	}
	if peers, _ := c.store.peerList(ctx, "n1"); len(peers) != 1 || peers[0].IP != netip.MustParseAddr("198.18.0.7") {
		t.Fatalf("peer list after an older view %+v", peers)
	}
	// A scoped view without the cluster asked for: not linked any more.
	v.Generation, v.Clusters = 4, nil
	if n, err := c.applyPeers(ctx, v, []string{"c2"}); err != nil || n != 1 {
		t.Fatalf("apply unlink: %d %v", n, err)
	}
	if peers, _ := c.store.peerList(ctx, "n1"); len(peers) != 0 {
		t.Fatalf("peer list after unlink %+v", peers)
	}
}

// BenchmarkPeerChange measures the two halves of one node's endpoint
// change at the scale of docs/design.md ("Peers across clusters"): root
// storing it for a cluster of 1,000 nodes that is interested in 100
// services and linked with 10 clusters (one script, hints queued), and a
// linked cluster applying root's delta and pushing it to its 1,000 nodes
// (one script, 1,000 stream entries).
func BenchmarkPeerChange(b *testing.B) {
	_, rdb := startRedis(b)
	ctx := context.Background()
	b.Run("root", func(b *testing.B) {
		_, R := startRoot(b, rdb, rootOpts{notify: &NotifyConfig{MinBackoff: time.Minute, MaxBackoff: time.Minute, QueueLen: 10}})
		// Clusters at an address nothing listens on: hints queue and
		// fail in the background, away from the measured requests.
		for i := range 11 {
			mustCall(b, 200, "POST", R+"/api/net/cluster", fmt.Sprintf(`{"cluster_id":"b%d","cluster_address":"127.0.0.1","cluster_port":1}`, i), "", nil)
		}
		var nodes []string
		for i := range 1000 {
			nodes = append(nodes, fmt.Sprintf(`{"node_id":"n%d","ip":"198.18.%d.%d","port":50103}`, i, i/250, i%250+1))
		}
		mustCall(b, 200, "PUT", R+"/api/net/cluster/b0/nodes", `{"nodes":[`+strings.Join(nodes, ",")+`]}`, "", nil)
		for s := range 100 {
			mustCall(b, 200, "POST", R+"/api/net/service/deploy", svcBody(fmt.Sprintf("s%d", s), fmt.Sprintf("w%d", s), ""), "", nil)
			host := fmt.Sprintf("b%d", 1+s%10)
			mustCall(b, 200, "POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s%d","instance_number":0,"cluster_id":%q}`, s, host), "", nil)
			mustCall(b, 200, "GET", fmt.Sprintf("%s/api/net/service/app.ns.w%d.default/instances?cluster_id=b0", R, s), "", "", nil)
		}
		var v api.PeerView
		mustCall(b, 200, "GET", R+"/api/net/cluster/b0/peers", "", "", &v)
		if len(v.Clusters) != 10 {
			b.Fatalf("b0 linked with %d clusters, want 10", len(v.Clusters))
		}
		b.ResetTimer()
		for i := range b.N {
			mustCall(b, 200, "PUT", R+"/api/net/cluster/b0/nodes/n7", fmt.Sprintf(`{"ip":"198.19.%d.%d","port":50103}`, i/250%250, i%250+1), "", nil)
		}
	})
	ver := uint64(1) // versions go on across the calls b.Run makes
	b.Run("cluster-1000-nodes", func(b *testing.B) {
		c, err := NewCluster(ClusterConfig{ClusterID: "a0", RootURL: "127.0.0.1:1", Log: quietLog, Prefix: "bench:"}, rdb)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		for i := range 1000 {
			rec := fmt.Sprintf(`{"node_id":"n%d","node_ip":"198.18.%d.%d","tunnel_port":50103}`, i, i/250, i%250+1)
			if err := rdb.HSet(ctx, c.store.kNodes(), fmt.Sprintf("n%d", i), rec).Err(); err != nil {
				b.Fatal(err)
			}
		}
		view := api.PeerView{Epoch: "e", Generation: 1, Clusters: []api.ClusterPeers{{ClusterID: "b0", Version: 1,
			Nodes: []api.Peer{{NodeID: "m7", IP: netip.MustParseAddr("198.19.0.7"), Port: api.DefaultTunnelPort}}}}}
		if _, err := c.applyPeers(ctx, view, nil); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for range b.N {
			ver++
			n, err := c.applyDelta(ctx, &api.EndpointsDelta{ClusterID: "b0", Epoch: "e", Version: ver,
				Set: []api.Peer{{NodeID: "m7", IP: netip.MustParseAddr(fmt.Sprintf("198.19.%d.%d", ver/250%250, ver%250+1)), Port: api.DefaultTunnelPort}}})
			if err != nil || n != 1 {
				b.Fatalf("delta %d: %d %v", ver, n, err)
			}
		}
	})
}

// TestHostCounts: root counts each service's instances per cluster in its
// shard as instances are deployed, moved and deleted, and the link graph
// holds the clusters hosting it, with no link change left to copy.
func TestHostCounts(t *testing.T) {
	_, rdb := startRedis(t)
	r, R := startRoot(t, rdb, rootOpts{sweep: -1})
	ctx := context.Background()
	for _, c := range []string{"c1", "c2"} {
		mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"`+c+`","cluster_address":"127.0.0.1","cluster_port":1}`, "", nil)
	}
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", nil)
	deploy := func(n int, cid string) {
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s1","instance_number":%d,"cluster_id":%q}`, n, cid), "", nil)
	}
	want := func(what string, w map[string]string) {
		t.Helper()
		if got := rdb.HGetAll(ctx, r.store.st("s1")+"hcl:s1").Val(); !maps.Equal(got, w) {
			t.Fatalf("%s: hosts %v, want %v", what, got, w)
		}
		graph := map[string]string{}
		for c := range w {
			graph[c] = "1"
		}
		if got := rdb.HGetAll(ctx, r.store.kHosts("s1")).Val(); !maps.Equal(got, graph) {
			t.Fatalf("%s: link graph hosts %v, want %v", what, got, graph)
		}
		if n, _ := rdb.SCard(ctx, r.store.st("s1")+"links").Result(); n != 0 {
			t.Fatalf("%s: %d services with link changes left", what, n)
		}
	}
	for n := range 3 {
		deploy(n, "c2")
	}
	deploy(3, "c1")
	want("deployed", map[string]string{"c1": "1", "c2": "3"})
	deploy(0, "c1") // moved
	want("moved", map[string]string{"c1": "2", "c2": "2"})
	mustCall(t, 200, "DELETE", R+"/api/net/s1/1", "", "", nil)
	want("one deleted", map[string]string{"c1": "2", "c2": "1"})
	mustCall(t, 200, "DELETE", R+"/api/net/s1/-1", "", "", nil)
	want("all deleted", map[string]string{})
}
