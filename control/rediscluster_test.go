package control

import (
	"fmt"
	"testing"

	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// TestRootOnRedisCluster runs the root's two-phase changes (pending.go) on
// a three-master Redis Cluster, where the root's keys and the pool's sit in
// different slots: deploy, a release that fails half-way and its retry,
// delete, all as on one server.
func TestRootOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), PoolSize: 32})
	t.Cleanup(func() { _ = rdb.Close() })
	fa := &faultyAlloc{}
	_, R := startRoot(t, rdb, rootOpts{alloc: fa.wrap, sweep: -1})
	deployFixture(t, R, 3)
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":1,"cluster_id":"c1"}`, "", nil)

	fa.set(&fa.beforeRelease, func() error { return errInjected })
	st, b := call(t, "DELETE", R+"/api/net/s1/-1", "", "")
	want503(t, "delete with the release failing", st, b)
	mustCall(t, 200, "DELETE", R+"/api/net/s1/-1", "", "", nil)
	if got := poolOwners(t, rdb, "inst/s1/"); len(got) != 0 {
		t.Errorf("deleted instances still hold %v", got)
	}
	for n := range 2 {
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s1","instance_number":%d,"cluster_id":"c1"}`, n), "", nil)
	}
	mustCall(t, 200, "DELETE", R+"/api/net/s1/-1", "", "", nil)
	mustCall(t, 200, "DELETE", R+"/api/net/service/s1", "", "", nil)
	if got := poolOwners(t, rdb, ""); len(got) != 0 {
		t.Errorf("pool still holds %v", got)
	}
	noPending(t, rdb, "s1")
}
