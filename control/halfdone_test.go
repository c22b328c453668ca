package control

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
)

// Tests of changes that span slots (pending.go) or fail between a script
// and its answer: a failure answers 5xx, and once Redis is back a retry,
// the next call on the service, or the sweep leaves no address held by a
// record that is gone and no record without its addresses. The pools are
// checked directly: every shard's owner → kind hash lists every pair held.
// Each test runs against one Redis and against a three-master Redis
// Cluster, where a service's shard, the job index and the block registry
// are on different masters.

// faults injects failures after the named steps of the store
// (rootStore.hook); each is used once.
type faults struct {
	mu sync.Mutex // guards at
	at map[string]func() error
}

func (f *faults) set(step string, fn func() error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.at == nil {
		f.at = map[string]func() error{}
	}
	f.at[step] = fn
}

func (f *faults) hook(step string) error {
	f.mu.Lock()
	fn := f.at[step]
	delete(f.at, step)
	f.mu.Unlock()
	if fn == nil {
		return nil
	}
	return fn()
}

// hungBound bounds a request against a hung Redis here, where the point is
// what it leaves behind: TestRedisDownAndBack holds the service to SPEC's
// one second; this leaves room for a loaded test machine.
const hungBound = 2 * time.Second

var errInjected = fmt.Errorf("injected: %w", ipam.ErrUnavailable)

// backend is a Redis to run a test against, and how to pause it.
type backend struct {
	name  string
	rdb   redis.UniversalClient
	pause func() (resume func())
}

// backends runs f against a private single Redis and a three-master
// Redis Cluster (a fresh one each, so tests stay independent).
func backends(t *testing.T, f func(t *testing.T, b backend)) {
	t.Run("single", func(t *testing.T) {
		srv := redistest.Start(t)
		f(t, backend{name: "single", rdb: newRDB(t, srv.Addr), pause: srv.Pause})
	})
	t.Run("cluster", func(t *testing.T) {
		cl := redistest.StartCluster(t)
		rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), PoolSize: 64,
			DialTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond,
			MaxRetries: 1})
		t.Cleanup(func() { _ = rdb.Close() })
		pause := func() func() {
			var resumes []func()
			for _, s := range cl.Servers() {
				resumes = append(resumes, s.Pause())
			}
			return func() {
				for _, r := range resumes {
					r()
				}
			}
		}
		f(t, backend{name: "cluster", rdb: rdb, pause: pause})
	})
}

// testShardTag is the shard tag of service id with the default layout.
func testShardTag(id string) string {
	return ipam.ShardTag(DefaultPrefix, int(crc32.ChecksumIEEE([]byte(id))%DefaultShards))
}

// poolOwners lists the pool owners (every pair held) starting with prefix.
func poolOwners(t *testing.T, rdb redis.UniversalClient, prefix string) []string {
	t.Helper()
	var out []string
	for k := range DefaultShards {
		m, err := rdb.HGetAll(context.Background(), ipam.ShardTag(DefaultPrefix, k)+"po").Result()
		if err != nil {
			t.Fatal(err)
		}
		for o := range m {
			if strings.HasPrefix(o, prefix) {
				out = append(out, o)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// released counts the released (quarantined) indexes of every shard pool.
func released(t *testing.T, rdb redis.UniversalClient) int {
	t.Helper()
	n := 0
	for k := range DefaultShards {
		tag := ipam.ShardTag(DefaultPrefix, k)
		for _, p := range []string{"p4z", "p6.0z", "p6.1z", "p6.2z"} {
			c, err := rdb.ZCard(context.Background(), tag+p).Result()
			if err != nil {
				t.Fatal(err)
			}
			n += int(c)
		}
	}
	return n
}

// poolOwner is the owner the pool records for addr ("" if free).
func poolOwner(t *testing.T, rdb redis.UniversalClient, a netip.Addr) string {
	t.Helper()
	s, err := ipam.NewShards(rdb, ipam.Config{}, DefaultPrefix, DefaultShards, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	o, err := s.Owner(context.Background(), a)
	if err != nil {
		return ""
	}
	return o
}

// noPending checks that no change of service id is left half-done, and no
// service has pending state.
func noPending(t *testing.T, rdb redis.UniversalClient, id string) {
	t.Helper()
	noPendingOf(t, rdb, id)
	ctx := context.Background()
	for k := range DefaultShards {
		if ids, _ := rdb.SMembers(ctx, ipam.ShardTag(DefaultPrefix, k)+"pending").Result(); len(ids) != 0 {
			t.Errorf("services with pending state left: %v", ids)
		}
	}
}

// noPendingOf checks that service id has no pending state (others may).
func noPendingOf(t *testing.T, rdb redis.UniversalClient, id string) {
	t.Helper()
	ctx := context.Background()
	if m, _ := rdb.HGetAll(ctx, testShardTag(id)+"pend:"+id).Result(); len(m) != 0 {
		t.Errorf("pending state of %s left: %v", id, m)
	}
	if ok, _ := rdb.SIsMember(ctx, testShardTag(id)+"pending", id).Result(); ok {
		t.Errorf("%s still listed as pending", id)
	}
}

// want503 checks a 503 with the machine code of Redis unavailable.
func want503(t *testing.T, what string, st int, b []byte) {
	t.Helper()
	var eb api.ErrorBody
	_ = json.Unmarshal(b, &eb)
	if st != 503 || eb.Code != "redis_unavailable" {
		t.Fatalf("%s: %d %s, want 503 redis_unavailable", what, st, b)
	}
}

func deployFixture(t *testing.T, R string, instances int) (api.ServiceIPs, []api.InstanceAnswer) {
	t.Helper()
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`, "", nil)
	var d api.ServiceIPs
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", &d)
	var insts []api.InstanceAnswer
	for n := range instances {
		var ia api.InstanceAnswer
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", fmt.Sprintf(`{"_id":"s1","instance_number":%d,"cluster_id":"c1"}`, n), "", &ia)
		insts = append(insts, ia)
	}
	return d, insts
}

// TestDeleteInstancesReplyLost: DELETE …/-1 removes the records and frees
// their addresses in one script; its answer is lost (503). Nothing is half
// done: the records are gone, every address is released, and the retry
// answers 200 with nothing left to remove.
func TestDeleteInstancesReplyLost(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		fa := &faults{}
		_, R := startRoot(t, b.rdb, rootOpts{fault: fa.hook, sweep: -1})
		_, insts := deployFixture(t, R, 3)
		if got := poolOwners(t, b.rdb, "inst/s1/"); len(got) != 3 {
			t.Fatalf("pool owners before: %v", got)
		}
		fa.set("delete instance: records", func() error { return errInjected })
		st, body := call(t, "DELETE", R+"/api/net/s1/-1", "", "")
		want503(t, "delete with its answer lost", st, body)
		if got := poolOwners(t, b.rdb, "inst/s1/"); len(got) != 0 {
			t.Fatalf("after the lost answer %v are held", got)
		}
		var del struct{ Removed []int }
		mustCall(t, 200, "DELETE", R+"/api/net/s1/-1", "", "", &del)
		if len(del.Removed) != 0 {
			t.Errorf("retry removed %v, want nothing left", del.Removed)
		}
		for _, ia := range insts {
			for _, a := range []netip.Addr{ia.InstanceIP, ia.InstanceIPv6} {
				if o := poolOwner(t, b.rdb, a); o != "" {
					t.Errorf("%s still held by %s", a, o)
				}
			}
		}
		noPending(t, b.rdb, "s1")
	})
}

// TestDeleteInstancesRedisHangsBetweenSteps: Redis hangs (SIGSTOP) right
// after the records are removed: 503 within a bound; after it resumes the
// next deploy works and holds the only pair.
func TestDeleteInstancesRedisHangsBetweenSteps(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		fa := &faults{}
		_, R := startRoot(t, b.rdb, rootOpts{fault: fa.hook, sweep: -1, timeout: -1})
		_, insts := deployFixture(t, R, 2)
		var resume func()
		fa.set("delete instance: records", func() error {
			resume = b.pause()
			return errInjected // the reply is lost with it
		})
		start := time.Now()
		st, body := call(t, "DELETE", R+"/api/net/s1/-1", "", "")
		d := time.Since(start)
		resume()
		if st != 503 && st != 200 {
			t.Fatalf("delete with Redis hung after the records: %d %s", st, body)
		}
		if d > hungBound {
			t.Errorf("answer after %v, want within %v", d, hungBound)
		}
		var ia api.InstanceAnswer
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "", &ia)
		got := poolOwners(t, b.rdb, "inst/s1/")
		if len(got) != 1 || poolOwner(t, b.rdb, ia.InstanceIP) != got[0] || poolOwner(t, b.rdb, ia.InstanceIPv6) != got[0] {
			t.Errorf("pool owners %v; the new instance 0 (%s) must be the only one", got, ia.InstanceIP)
		}
		for _, old := range insts {
			if o := poolOwner(t, b.rdb, old.InstanceIP); old.InstanceIP != ia.InstanceIP && o != "" {
				t.Errorf("deleted instance %d's %s still held by %s", old.InstanceNumber, old.InstanceIP, o)
			}
		}
		noPending(t, b.rdb, "s1")
	})
}

// TestDeployServiceReplyLost: the allocation runs but Redis goes away
// before the service is stored: 503, no service; the retry gets the very
// addresses the failed attempt took, and nothing more is held.
func TestDeployServiceReplyLost(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		fa := &faults{}
		_, R := startRoot(t, b.rdb, rootOpts{fault: fa.hook, sweep: -1})
		fa.set("deploy service: allocation", func() error { return errInjected })
		st, body := call(t, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "")
		want503(t, "deploy with the allocation's reply lost", st, body)
		mustCall(t, 404, "GET", R+"/api/net/service/app.ns.web.default/instances", "", "", nil)
		held := poolOwners(t, b.rdb, "svc/s1/")
		if len(held) != len(DefaultPolicies()) {
			t.Fatalf("held after the failed attempt: %v", held)
		}
		var d api.ServiceIPs
		mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", &d)
		if got := poolOwners(t, b.rdb, "svc/s1/"); !slices.Equal(got, held) {
			t.Errorf("pool owners after the retry %v, want the failed attempt's %v", got, held)
		}
		for _, ip := range d.ServiceIPList {
			if o := poolOwner(t, b.rdb, ip.Address); !slices.Contains(held, o) {
				t.Errorf("%s %s held by %q", ip.IpType, ip.Address, o)
			}
		}
		noPending(t, b.rdb, "s1")
	})
}

// TestAbandonedDeploysAreReclaimed: deploys that fail after allocating and
// are never retried leave nothing held: a delete of the service frees them
// at once, the sweep once they are stale, and the job names they claimed
// go to whoever deploys them next.
func TestAbandonedDeploysAreReclaimed(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		fa := &faults{}
		r, R := startRoot(t, b.rdb, rootOpts{fault: fa.hook, sweep: -1, stale: 200 * time.Millisecond})
		mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`, "", nil)
		for _, id := range []string{"s1", "s2"} {
			fa.set("deploy service: allocation", func() error { return errInjected })
			st, body := call(t, "POST", R+"/api/net/service/deploy", svcBody(id, id, ""), "")
			want503(t, "deploy "+id, st, body)
		}
		mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s3", "web", ""), "", nil)
		for _, p := range []string{"svc/s1/", "svc/s2/"} {
			if len(poolOwners(t, b.rdb, p)) == 0 {
				t.Fatalf("%s: nothing held after the failed deploy", p)
			}
		}
		// A job name claimed by a deploy still in flight is not taken over.
		mustCall(t, 409, "POST", R+"/api/net/service/deploy", `{"_id":"x2","deployment_descriptor":{"app_name":"app","app_ns":"ns","microservice_name":"s2","microservice_namespace":"default"}}`, "", nil)

		mustCall(t, 404, "DELETE", R+"/api/net/service/s1", "", "", nil)
		if got := poolOwners(t, b.rdb, "svc/s1/"); len(got) != 0 {
			t.Errorf("delete of the half-deployed s1 left %v", got)
		}
		noPendingOf(t, b.rdb, "s1")

		// Fresh intents are not the sweep's: a deploy may still be running.
		if err := r.sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if len(poolOwners(t, b.rdb, "svc/s2/")) == 0 {
			t.Fatal("sweep reclaimed a fresh intent")
		}
		time.Sleep(300 * time.Millisecond)
		if err := r.sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := poolOwners(t, b.rdb, "svc/s2/"); len(got) != 0 {
			t.Errorf("sweep left %v", got)
		}
		noPending(t, b.rdb, "s2")
		if got := poolOwners(t, b.rdb, "svc/s3/"); len(got) != len(DefaultPolicies()) {
			t.Errorf("sweep touched the live service s3: %v", got)
		}
		// s2's job name, left claimed by the abandoned deploy, is free.
		mustCall(t, 200, "POST", R+"/api/net/service/deploy", `{"_id":"x2","deployment_descriptor":{"app_name":"app","app_ns":"ns","microservice_name":"s2","microservice_namespace":"default"}}`, "", nil)
	})
}

// TestDeployInstanceRedisHangsBeforeAnswer: Redis hangs right after the
// instance is stored with its addresses (one script): the request fails
// within a bound; after Redis resumes the retry gets the same addresses,
// and exactly one pair is held for the instance.
func TestDeployInstanceRedisHangsBeforeAnswer(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		fa := &faults{}
		_, R := startRoot(t, b.rdb, rootOpts{fault: fa.hook, sweep: -1, timeout: -1})
		deployFixture(t, R, 0)
		var resume func()
		fa.set("deploy instance: store", func() error {
			resume = b.pause()
			return errInjected // the reply is lost with it
		})
		start := time.Now()
		st, body := call(t, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "")
		d := time.Since(start)
		resume()
		want503(t, "deploy instance with Redis hung before the answer", st, body)
		if d > hungBound {
			t.Errorf("503 after %v, want within %v", d, hungBound)
		}
		held := poolOwners(t, b.rdb, "inst/s1/0/")
		if len(held) != 1 {
			t.Fatalf("held after the failed attempt: %v", held)
		}
		var ia api.InstanceAnswer
		mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "", &ia)
		if got := poolOwners(t, b.rdb, "inst/s1/"); !slices.Equal(got, held) {
			t.Errorf("pool owners after the retry %v, want the failed attempt's %v", got, held)
		}
		if o := poolOwner(t, b.rdb, ia.InstanceIP); o != held[0] {
			t.Errorf("instance IP %s held by %q, want %s", ia.InstanceIP, o, held[0])
		}
		noPending(t, b.rdb, "s1")
	})
}

// foreignPair deploys service "a" with a custom RR IP, which gives a's
// shard that block, and then service id (in another shard) with the next
// address of that block: id's RR pair lies in a's shard. It returns id's
// RR address.
func foreignPair(t *testing.T, R, id string) netip.Addr {
	t.Helper()
	if testShardTag(id) == testShardTag("a") {
		t.Fatalf("%s and a share a shard", id)
	}
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("a", "a", `,"RR_ip":"10.30.7.1"`), "", nil)
	var d api.ServiceIPs
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody(id, id, `,"RR_ip":"10.30.7.2"`), "", &d)
	return netip.MustParseAddr("10.30.7.2")
}

// TestDeleteServiceReleaseFails: a service IP held in another shard (a
// custom address in a block that shard holds) is freed after the record
// goes; that release fails: 503; the retry (404: no such service any
// more) frees it.
func TestDeleteServiceReleaseFails(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		fa := &faults{}
		_, R := startRoot(t, b.rdb, rootOpts{fault: fa.hook, sweep: -1})
		rr := foreignPair(t, R, "s1")
		if o := poolOwner(t, b.rdb, rr); !strings.HasPrefix(o, "svc/s1/RR/") {
			t.Fatalf("%s held by %q", rr, o)
		}
		fa.set("free", func() error { return errInjected })
		st, body := call(t, "DELETE", R+"/api/net/service/s1", "", "")
		want503(t, "delete service with the release failing", st, body)
		if o := poolOwner(t, b.rdb, rr); o == "" {
			t.Fatalf("%s freed although the release failed", rr)
		}
		mustCall(t, 404, "DELETE", R+"/api/net/service/s1", "", "", nil)
		if got := poolOwners(t, b.rdb, "svc/s1/"); len(got) != 0 {
			t.Errorf("deleted service still holds %v", got)
		}
		noPending(t, b.rdb, "s1")
		mustCall(t, 404, "GET", R+"/api/net/service/app.ns.s1.default/instances", "", "", nil)
	})
}

// TestLateDeleteSparesRedeployedInstance: replica A removes instance 0 and
// stalls before it answers; replica B deploys instance 0 again meanwhile.
// When A finishes, the new instance keeps its addresses.
func TestLateDeleteSparesRedeployedInstance(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		fa := &faults{}
		_, A := startRoot(t, b.rdb, rootOpts{fault: fa.hook, sweep: -1})
		_, B := startRoot(t, b.rdb, rootOpts{sweep: -1})
		deployFixture(t, A, 1)
		entered, unblock := make(chan struct{}), make(chan struct{})
		fa.set("delete instance: records", func() error { close(entered); <-unblock; return nil })
		done := make(chan int)
		go func() {
			st, _ := call(t, "DELETE", A+"/api/net/s1/0", "", "")
			done <- st
		}()
		<-entered
		var ia api.InstanceAnswer
		mustCall(t, 200, "POST", B+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "", &ia)
		close(unblock)
		if st := <-done; st != 200 {
			t.Fatalf("stalled delete: %d", st)
		}
		got := poolOwners(t, b.rdb, "inst/s1/")
		if len(got) != 1 || poolOwner(t, b.rdb, ia.InstanceIP) != got[0] {
			t.Fatalf("pool owners %v; the redeployed instance's %s must be held by the only one", got, ia.InstanceIP)
		}
		var e struct {
			InstanceList []api.InstanceAnswer `json:"instance_list"`
		}
		mustCall(t, 200, "GET", B+"/api/net/service/ip/"+ia.InstanceIP.String()+"/instances", "", "", &e)
		if len(e.InstanceList) != 1 || e.InstanceList[0].InstanceIP != ia.InstanceIP {
			t.Errorf("service by the new instance IP: %+v", e)
		}
		noPending(t, b.rdb, "s1")
	})
}

// TestRefusedDeployHoldsNothing (issue 13, item 6): a deploy refused with
// 409 after it allocated part of its addresses gives them back at once,
// without quarantine: nobody ever saw them. Here the Closest IP (a free
// custom address) is allocated before the RR IP (a custom address another
// service holds) is refused; the next service asking for that Closest IP
// gets it, and no address sits in quarantine.
func TestRefusedDeployHoldsNothing(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		_, R := startRoot(t, b.rdb, rootOpts{sweep: -1})
		rr := foreignPair(t, R, "s1") // s1 holds 10.30.7.2 as its RR IP
		const closest = `,"closest_ip":"10.30.9.9","closest_ip_v6":"fdff:1000::99"`
		st, body := call(t, "POST", R+"/api/net/service/deploy", svcBody("s2", "x", closest+`,"RR_ip":"`+rr.String()+`"`), "")
		if st != 409 || !strings.Contains(string(body), "address_in_use") {
			t.Fatalf("deploy with a taken RR IP: %d %s", st, body)
		}
		if got := poolOwners(t, b.rdb, "svc/s2/"); len(got) != 0 {
			t.Errorf("refused deploy holds %v", got)
		}
		if n := released(t, b.rdb); n != 0 {
			t.Errorf("%d addresses in quarantine after the refusal", n)
		}
		noPendingOf(t, b.rdb, "s2")
		var d api.ServiceIPs
		mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s3", "y", closest), "", &d)
		// The refused deploy's job name is free again, too.
		mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s4", "x", ""), "", nil)
	})
}

// TestJobRaceHoldsNothing: pairs of deploys of one job name under two ids
// race; each loser gets 409 and holds nothing, and no address goes into
// quarantine.
func TestJobRaceHoldsNothing(t *testing.T) {
	backends(t, func(t *testing.T, b backend) {
		_, A := startRoot(t, b.rdb, rootOpts{sweep: -1})
		_, B := startRoot(t, b.rdb, rootOpts{sweep: -1})
		var wg sync.WaitGroup
		const jobs = 20
		won := make([]int, jobs)
		var mu sync.Mutex
		for j := range jobs {
			for side, R := range []string{A, B} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					st, body := call(t, "POST", R+"/api/net/service/deploy", svcBody(fmt.Sprintf("j%d-%d", j, side), fmt.Sprintf("job%d", j), ""), "")
					switch st {
					case 200:
						mu.Lock()
						won[j]++
						mu.Unlock()
					case 409:
					default:
						t.Errorf("job %d side %d: %d %s", j, side, st, body)
					}
				}()
			}
		}
		wg.Wait()
		for j, n := range won {
			if n != 1 {
				t.Errorf("job %d deployed %d times", j, n)
			}
		}
		if got := poolOwners(t, b.rdb, "svc/"); len(got) != jobs*len(DefaultPolicies()) {
			t.Errorf("%d pairs held for %d services", len(got), jobs)
		}
		if n := released(t, b.rdb); n != 0 {
			t.Errorf("%d addresses in quarantine after the races", n)
		}
	})
}
