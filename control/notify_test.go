package control

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/control/nodeclient"
)

// TestUnreachableClusterDoesNotBlock: a dead cluster interested in a
// service neither slows the request nor delays the live cluster; it is
// marked unreachable in the metrics and retried.
func TestUnreachableClusterDoesNotBlock(t *testing.T) {
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{})
	_, C := startCluster(t, rdb, R, clusterOpts{id: "live"})
	ctx := context.Background()
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens there any more
	host, port, _ := strings.Cut(deadAddr, ":")
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"dead","cluster_address":"`+host+`","cluster_port":`+port+`}`, "", nil)
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", nil)
	mustCall(t, 200, "GET", R+"/api/net/service/app.ns.web.default/instances?cluster_id=dead", "", "", nil)

	n := nodeclient.New(C, "n1", nodeclient.Options{})
	reg, err := n.Register(ctx, netip.MustParseAddr("198.18.0.1"), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.ResolveByName(ctx, "app.ns.web.default"); err != nil {
		t.Fatal(err)
	}
	w, _ := n.Watch(ctx, reg.Epoch, 0, 0)
	for i := range 3 {
		start := time.Now()
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":`+string(rune('0'+i))+`,"cluster_id":"live"}`, "", nil)
		if d := time.Since(start); d > time.Second { // SPEC's budget for a change to reach a node
			t.Errorf("deploy took %v with a dead cluster interested", d)
		}
		got, err := n.Watch(ctx, reg.Epoch, w.Version, time.Second)
		if err != nil || len(got.Changes) == 0 {
			t.Fatalf("live cluster's node got nothing: %+v %v", got, err)
		}
		w = got
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		_, m := call(t, "GET", R+"/metrics", "", "")
		if strings.Contains(string(m), `oakwire_cluster_unreachable{cluster="dead"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("dead cluster not marked unreachable")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
