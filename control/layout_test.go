package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/oakwire/oakwire/api"
	"github.com/redis/go-redis/v9"
)

// loadFixture writes a dump of Redis keys (testdata/layout1.json: what a
// root of layout 1, before issue 16, wrote for two services, instances, a
// deleted instance, an interest, a node endpoint and a subnet).
func loadFixture(t *testing.T, rdb redis.UniversalClient, path string) map[string]map[string]json.RawMessage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dump map[string]map[string]json.RawMessage
	if err := json.Unmarshal(b, &dump); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for k, v := range dump {
		var err error
		switch {
		case v["hash"] != nil:
			var m map[string]string
			_ = json.Unmarshal(v["hash"], &m)
			err = rdb.HSet(ctx, k, m).Err()
		case v["set"] != nil:
			var m []string
			_ = json.Unmarshal(v["set"], &m)
			err = rdb.SAdd(ctx, k, m).Err()
		case v["zset"] != nil:
			var m []redis.Z
			_ = json.Unmarshal(v["zset"], &m)
			err = rdb.ZAdd(ctx, k, m...).Err()
		case v["string"] != nil:
			var s string
			_ = json.Unmarshal(v["string"], &s)
			err = rdb.Set(ctx, k, s, 0).Err()
		}
		if err != nil {
			t.Fatalf("load %s: %v", k, err)
		}
	}
	return dump
}

// layout1Records reads the layout-1 fixture's services: who holds each
// address, and each service's entry.
func layout1Records(t *testing.T, dump map[string]map[string]json.RawMessage) (map[netip.Addr]string, map[string]api.ServiceEntry) {
	t.Helper()
	held := map[netip.Addr]string{}
	want := map[string]api.ServiceEntry{}
	for _, id := range []string{"s1", "s2"} {
		var rec map[string]string
		_ = json.Unmarshal(dump[DefaultPrefix+"{r}:svc:"+id]["hash"], &rec)
		var e api.ServiceEntry
		for f, v := range rec {
			if f == "meta" {
				var m serviceMeta
				if err := json.Unmarshal([]byte(v), &m); err != nil {
					t.Fatal(err)
				}
				e.ID, e.JobName, e.ServiceIPList = m.ID, m.JobName, m.ServiceIPList
				for _, ip := range m.ServiceIPList {
					held[ip.Address], held[ip.AddressV6] = id, id
				}
				continue
			}
			var in storedInstance
			if err := json.Unmarshal([]byte(v), &in); err != nil {
				t.Fatal(err)
			}
			e.InstanceList = append(e.InstanceList, in.Instance)
			held[in.InstanceIP], held[in.InstanceIPv6] = id, id
		}
		want[id] = e
	}
	return held, want
}

// TestMigrateLayout1: a root started over a layout-1 Redis (one slot for
// root's records, one pool) migrates it before serving: every service,
// instance, address, interest and endpoint is where the new layout looks
// for it, old replicas are fenced off the old pool, and new allocations
// never hand out an address a migrated record holds.
func TestMigrateLayout1(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		dump := loadFixture(t, b.rdb, "testdata/layout1.json")
		held, want := layout1Records(t, dump)
		if len(held) < 14 {
			t.Fatalf("fixture holds %d addresses", len(held))
		}

		_, R := startRoot(t, b.rdb, rootOpts{sweep: -1})
		for id, w := range want {
			var e api.ServiceEntry
			mustCall(t, 200, "GET", R+"/api/net/service/"+w.JobName+"/instances", "", "", &e)
			if e.ID != id || len(e.ServiceIPList) != len(w.ServiceIPList) || len(e.InstanceList) != len(w.InstanceList) {
				t.Fatalf("%s after the migration: %+v, want %+v", id, e, w)
			}
			for _, inst := range w.InstanceList {
				found := false
				for _, g := range e.InstanceList {
					found = found || g == inst
				}
				if !found {
					t.Errorf("%s: instance %+v lost", id, inst)
				}
			}
		}
		for a, id := range held {
			var e api.ServiceEntry
			mustCall(t, 200, "GET", R+"/api/net/service/ip/"+a.String()+"/instances", "", "", &e)
			if e.ID != id {
				t.Errorf("%s belongs to %s, want %s", a, e.ID, id)
			}
		}
		// Old replicas are fenced off the old pool.
		if typ := b.rdb.Type(ctx, DefaultPrefix+"{svcpool}:v4").Val(); typ != "string" {
			t.Errorf("old pool key is a %s, want the fence", typ)
		}
		// The interest and the endpoints carry over.
		if ok, _ := b.rdb.SIsMember(ctx, testShardTag("s2")+"int:s2", "c1").Result(); !ok {
			t.Error("s2's interest of c1 not in its shard")
		}
		// c1 is interested in s2, which runs in c2: linked.
		var pv api.PeerView
		mustCall(t, 200, "GET", R+"/api/net/cluster/c1/peers", "", "", &pv)
		if len(pv.Clusters) != 1 || pv.Clusters[0].ClusterID != "c2" {
			t.Errorf("c1's peers after the migration: %+v", pv)
		}
		if n, _ := b.rdb.HLen(ctx, DefaultPrefix+"{r}:ep:c1").Result(); n != 1 {
			t.Errorf("c1's endpoints: %d", n)
		}

		// New allocations stay clear of the migrated ones.
		got := map[netip.Addr]string{}
		claim := func(a netip.Addr, who string) {
			if h, ok := held[a]; ok {
				t.Errorf("%s handed to %s, migrated %s holds it", a, who, h)
			}
			if h, ok := got[a]; ok {
				t.Errorf("%s handed to %s and %s", a, h, who)
			}
			got[a] = who
		}
		for n := 10; n < 40; n++ {
			for _, id := range []string{"s1", "s2"} {
				var ia api.InstanceAnswer
				mustCall(t, 200, "POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":%q,"instance_number":%d,"cluster_id":"c1"}`, id, n), "", &ia)
				claim(ia.InstanceIP, fmt.Sprintf("%s/%d", id, n))
				claim(ia.InstanceIPv6, fmt.Sprintf("%s/%d", id, n))
			}
		}
		for i := range 5 {
			var d api.ServiceIPs
			mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody(fmt.Sprintf("n%d", i), fmt.Sprintf("n%d", i), ""), "", &d)
			for _, ip := range d.ServiceIPList {
				claim(ip.Address, "n"+ip.IpType)
				claim(ip.AddressV6, "n"+ip.IpType)
			}
		}
		// Migrated instances delete like any other, freeing their pairs.
		mustCall(t, 200, "DELETE", R+"/api/net/s1/0", "", "", nil)
		for _, inst := range want["s1"].InstanceList {
			if inst.InstanceNumber == 0 {
				if o := poolOwner(t, b.rdb, inst.InstanceIP); o != "" {
					t.Errorf("deleted migrated instance's %s still held by %s", inst.InstanceIP, o)
				}
			}
		}
		noPending(t, b.rdb, "s1")
		// A second root finds the layout recorded.
		_, R2 := startRoot(t, b.rdb, rootOpts{sweep: -1})
		mustCall(t, 200, "GET", R2+"/api/net/service/app.ns.db.default/instances", "", "", nil)
	})
}

// TestLayoutMismatchRefused: a root configured with another shard count
// than the one Redis holds refuses to serve (503 naming both layouts)
// rather than look for services in the wrong shards.
func TestLayoutMismatchRefused(t *testing.T) {
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{sweep: -1})
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", nil)
	r, err := NewRoot(RootConfig{Log: quietLog, Shards: 32, Sweep: -1}, rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	R2 := serveOn(t, listen(t), r.Handler())
	st, body := call(t, "GET", R2+"/api/net/service/app.ns.web.default/instances", "", "")
	if st != 503 || !strings.Contains(string(body), "shards=32") || !strings.Contains(string(body), "shards=64") {
		t.Fatalf("root with 32 shards over a 64-shard Redis: %d %s", st, body)
	}
}
