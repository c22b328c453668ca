package control

import (
	"testing"

	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// TestConcurrentDeploysTwoReplicasOnRedisCluster: 500 concurrent deploys
// at two root replicas over a three-master Redis Cluster, where services
// live in shards spread over the masters, the job index on one and the
// block registry on another: every instance gets one address pair, and no
// address is handed out twice.
func TestConcurrentDeploysTwoReplicasOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), PoolSize: 256})
	t.Cleanup(func() { _ = rdb.Close() })
	_, urlA := startRoot(t, rdb, rootOpts{})
	_, urlB := startRoot(t, rdb, rootOpts{})
	checkConcurrentDeploys(t, []string{urlA, urlB}, "")
	if got := poolOwners(t, rdb, ""); len(got) != 4*len(DefaultPolicies())+500-50 {
		t.Errorf("%d pairs held", len(got))
	}
}
