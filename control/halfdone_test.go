package control

import (
	"context"
	"encoding/json"
	"fmt"
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

// Tests of changes that span the root's records and the address pool
// (pending.go): a failure between the two steps answers 5xx, and once
// Redis is back a retry, the next call on the service, or the sweep leaves
// no address held by a record that is gone. The pool is checked directly:
// its owner → kind hash (ipam/doc.go) lists every pair held.

// faultyAlloc wraps an allocator with one-shot hooks between the steps.
type faultyAlloc struct {
	ipam.Allocator

	mu sync.Mutex // guards the hooks
	// afterAlloc runs after an Alloc that succeeded; an error it returns is
	// returned instead of the pairs (the reply was lost).
	afterAlloc func() error
	// beforeRelease runs before Release; an error it returns is returned
	// without releasing.
	beforeRelease func() error
}

func (f *faultyAlloc) wrap(a ipam.Allocator) ipam.Allocator {
	f.Allocator = a
	return f
}

func (f *faultyAlloc) set(hook *func() error, fn func() error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	*hook = fn
}

func (f *faultyAlloc) take(hook *func() error) func() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn := *hook
	*hook = nil
	return fn
}

func (f *faultyAlloc) Alloc(ctx context.Context, reqs []ipam.Request) ([]ipam.Pair, error) {
	p, err := f.Allocator.Alloc(ctx, reqs)
	if err == nil {
		if h := f.take(&f.afterAlloc); h != nil {
			if herr := h(); herr != nil {
				return nil, herr
			}
		}
	}
	return p, err
}

func (f *faultyAlloc) Release(ctx context.Context, owners []string) error {
	if h := f.take(&f.beforeRelease); h != nil {
		if err := h(); err != nil {
			return err
		}
	}
	return f.Allocator.Release(ctx, owners)
}

// hungBound bounds a request against a hung Redis here, where the point is
// what it leaves behind: TestRedisDownAndBack holds the service to SPEC's
// one second; this leaves room for a loaded test machine.
const hungBound = 2 * time.Second

var errInjected = fmt.Errorf("injected: %w", ipam.ErrUnavailable)

// poolOwners lists the pool owners (every pair held) starting with prefix.
func poolOwners(t *testing.T, rdb redis.UniversalClient, prefix string) []string {
	t.Helper()
	m, err := rdb.HGetAll(context.Background(), DefaultPrefix+"{svcpool}:owners").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for o := range m {
		if strings.HasPrefix(o, prefix) {
			out = append(out, o)
		}
	}
	slices.Sort(out)
	return out
}

// poolOwner is the owner the pool records for addr ("" if free).
func poolOwner(t *testing.T, rdb redis.UniversalClient, addr netip.Addr) string {
	t.Helper()
	a, err := ipam.NewRedis(rdb, ipam.Config{}, DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	o, err := a.Owner(context.Background(), addr)
	if err != nil {
		return ""
	}
	return o
}

// noPending checks that no change of service id is left half-done.
func noPending(t *testing.T, rdb redis.UniversalClient, id string) {
	t.Helper()
	ctx := context.Background()
	if m, _ := rdb.HGetAll(ctx, DefaultPrefix+"{r}:pend:"+id).Result(); len(m) != 0 {
		t.Errorf("pending state of %s left: %v", id, m)
	}
	if ids, _ := rdb.SMembers(ctx, DefaultPrefix+"{r}:pending").Result(); len(ids) != 0 {
		t.Errorf("services with pending state left: %v", ids)
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

// TestDeleteInstancesReleaseFails: DELETE …/-1 removes the records, then
// the release fails (Redis gone between the steps): 503, the addresses are
// still held but recorded as pending frees; the retry answers 200 with
// nothing left to remove and frees them.
func TestDeleteInstancesReleaseFails(t *testing.T) {
	fa := &faultyAlloc{}
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{alloc: fa.wrap, sweep: -1})
	_, insts := deployFixture(t, R, 3)
	if got := poolOwners(t, rdb, "inst/s1/"); len(got) != 3 {
		t.Fatalf("pool owners before: %v", got)
	}

	fa.set(&fa.beforeRelease, func() error { return errInjected })
	st, b := call(t, "DELETE", R+"/api/net/s1/-1", "", "")
	want503(t, "delete with the release failing", st, b)
	if got := poolOwners(t, rdb, "inst/s1/"); len(got) != 3 {
		t.Fatalf("after the failed release %d instance pairs are held, want 3 (pending)", len(got))
	}

	var del struct{ Removed []int }
	mustCall(t, 200, "DELETE", R+"/api/net/s1/-1", "", "", &del)
	if len(del.Removed) != 0 {
		t.Errorf("retry removed %v, want nothing left", del.Removed)
	}
	if got := poolOwners(t, rdb, "inst/s1/"); len(got) != 0 {
		t.Errorf("after the retry deleted instances still hold %v", got)
	}
	for _, ia := range insts {
		for _, a := range []netip.Addr{ia.InstanceIP, ia.InstanceIPv6} {
			if o := poolOwner(t, rdb, a); o != "" {
				t.Errorf("%s still held by %s", a, o)
			}
		}
	}
	noPending(t, rdb, "s1")
}

// TestDeleteInstancesRedisHangsBetweenSteps: Redis hangs (SIGSTOP) right
// after the records are removed: 503 within a second; after it resumes the
// next call on the service (a deploy, not the delete's retry) finishes the
// frees first.
func TestDeleteInstancesRedisHangsBetweenSteps(t *testing.T) {
	fa := &faultyAlloc{}
	srv := redistest.Start(t)
	rdb := newRDB(t, srv.Addr)
	_, R := startRoot(t, rdb, rootOpts{alloc: fa.wrap, sweep: -1})
	_, insts := deployFixture(t, R, 2)

	var resume func()
	fa.set(&fa.beforeRelease, func() error { resume = srv.Pause(); return nil })
	start := time.Now()
	st, b := call(t, "DELETE", R+"/api/net/s1/-1", "", "")
	d := time.Since(start)
	resume()
	want503(t, "delete with Redis hung before the release", st, b)
	if d > hungBound {
		t.Errorf("503 after %v, want within %v", d, hungBound)
	}

	var ia api.InstanceAnswer
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "", &ia)
	got := poolOwners(t, rdb, "inst/s1/")
	if len(got) != 1 || poolOwner(t, rdb, ia.InstanceIP) != got[0] || poolOwner(t, rdb, ia.InstanceIPv6) != got[0] {
		t.Errorf("pool owners %v; the new instance 0 (%s) must be the only one", got, ia.InstanceIP)
	}
	for _, old := range insts {
		if o := poolOwner(t, rdb, old.InstanceIP); old.InstanceIP != ia.InstanceIP && o != "" {
			t.Errorf("deleted instance %d's %s still held by %s", old.InstanceNumber, old.InstanceIP, o)
		}
	}
	noPending(t, rdb, "s1")
}

// TestDeployServiceReplyLost: the allocation runs but its answer is lost
// (Redis gone before the service is stored): 503, no service; the retry
// gets the very addresses the failed attempt took, and nothing more is held.
func TestDeployServiceReplyLost(t *testing.T) {
	fa := &faultyAlloc{}
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{alloc: fa.wrap, sweep: -1})
	fa.set(&fa.afterAlloc, func() error { return errInjected })
	st, b := call(t, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "")
	want503(t, "deploy with the allocation's reply lost", st, b)
	mustCall(t, 404, "GET", R+"/api/net/service/app.ns.web.default/instances", "", "", nil)
	held := poolOwners(t, rdb, "svc/s1/")
	if len(held) != len(DefaultPolicies()) {
		t.Fatalf("held after the failed attempt: %v", held)
	}

	var d api.ServiceIPs
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s1", "web", ""), "", &d)
	if got := poolOwners(t, rdb, "svc/s1/"); !slices.Equal(got, held) {
		t.Errorf("pool owners after the retry %v, want the failed attempt's %v", got, held)
	}
	for _, ip := range d.ServiceIPList {
		if o := poolOwner(t, rdb, ip.Address); !slices.Contains(held, o) {
			t.Errorf("%s %s held by %q", ip.IpType, ip.Address, o)
		}
	}
	noPending(t, rdb, "s1")
}

// TestAbandonedDeploysAreReclaimed: deploys that fail after allocating and
// are never retried leave nothing held: a delete of the service frees them
// at once, the sweep once they are stale.
func TestAbandonedDeploysAreReclaimed(t *testing.T) {
	fa := &faultyAlloc{}
	_, rdb := startRedis(t)
	r, R := startRoot(t, rdb, rootOpts{alloc: fa.wrap, sweep: -1, stale: 200 * time.Millisecond})
	mustCall(t, 200, "POST", R+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`, "", nil)
	for _, id := range []string{"s1", "s2"} {
		fa.set(&fa.afterAlloc, func() error { return errInjected })
		st, b := call(t, "POST", R+"/api/net/service/deploy", svcBody(id, id, ""), "")
		want503(t, "deploy "+id, st, b)
	}
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", svcBody("s3", "web", ""), "", nil)
	fa.set(&fa.afterAlloc, func() error { return errInjected })
	st, b := call(t, "POST", R+"/api/net/instance/deploy", `{"_id":"s3","instance_number":0,"cluster_id":"c1"}`, "")
	want503(t, "deploy instance", st, b)
	for _, p := range []string{"svc/s1/", "svc/s2/", "inst/s3/0/"} {
		if len(poolOwners(t, rdb, p)) == 0 {
			t.Fatalf("%s: nothing held after the failed deploy", p)
		}
	}

	mustCall(t, 404, "DELETE", R+"/api/net/service/s1", "", "", nil)
	if got := poolOwners(t, rdb, "svc/s1/"); len(got) != 0 {
		t.Errorf("delete of the half-deployed s1 left %v", got)
	}
	noPendingOf(t, rdb, "s1")

	// Fresh intents are not the sweep's: a deploy may still be running.
	if err := r.sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(poolOwners(t, rdb, "svc/s2/")) == 0 {
		t.Fatal("sweep reclaimed a fresh intent")
	}
	time.Sleep(300 * time.Millisecond)
	if err := r.sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"svc/s2/", "inst/s3/"} {
		if got := poolOwners(t, rdb, p); len(got) != 0 {
			t.Errorf("sweep left %v", got)
		}
	}
	noPending(t, rdb, "s2")
	if got := poolOwners(t, rdb, "svc/s3/"); len(got) != len(DefaultPolicies()) {
		t.Errorf("sweep touched the live service s3: %v", got)
	}
}

// noPendingOf checks that service id has no pending state (others may).
func noPendingOf(t *testing.T, rdb redis.UniversalClient, id string) {
	t.Helper()
	ctx := context.Background()
	if m, _ := rdb.HGetAll(ctx, DefaultPrefix+"{r}:pend:"+id).Result(); len(m) != 0 {
		t.Errorf("pending state of %s left: %v", id, m)
	}
	if ok, _ := rdb.SIsMember(ctx, DefaultPrefix+"{r}:pending", id).Result(); ok {
		t.Errorf("%s still listed as pending", id)
	}
}

// TestDeployInstanceRedisHangsBeforeStore: Redis hangs after the instance
// IPs are allocated, before the instance is stored: 503 within a second;
// after it resumes the retry gets the same addresses, and exactly one pair
// is held for the instance.
func TestDeployInstanceRedisHangsBeforeStore(t *testing.T) {
	fa := &faultyAlloc{}
	srv := redistest.Start(t)
	rdb := newRDB(t, srv.Addr)
	_, R := startRoot(t, rdb, rootOpts{alloc: fa.wrap, sweep: -1})
	deployFixture(t, R, 0)

	var resume func()
	fa.set(&fa.afterAlloc, func() error { resume = srv.Pause(); return nil })
	start := time.Now()
	st, b := call(t, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "")
	d := time.Since(start)
	resume()
	want503(t, "deploy instance with Redis hung before the store", st, b)
	if d > hungBound {
		t.Errorf("503 after %v, want within %v", d, hungBound)
	}
	held := poolOwners(t, rdb, "inst/s1/0/")
	if len(held) != 1 {
		t.Fatalf("held after the failed attempt: %v", held)
	}

	var ia api.InstanceAnswer
	mustCall(t, 200, "POST", R+"/api/net/instance/deploy", `{"_id":"s1","instance_number":0,"cluster_id":"c1"}`, "", &ia)
	if got := poolOwners(t, rdb, "inst/s1/"); !slices.Equal(got, held) {
		t.Errorf("pool owners after the retry %v, want the failed attempt's %v", got, held)
	}
	if o := poolOwner(t, rdb, ia.InstanceIP); o != held[0] {
		t.Errorf("instance IP %s held by %q, want %s", ia.InstanceIP, o, held[0])
	}
	noPending(t, rdb, "s1")
}

// TestDeleteServiceReleaseFails: the service record goes, the release of
// its IPs fails: 503; the retry (404: no such service any more) frees them.
func TestDeleteServiceReleaseFails(t *testing.T) {
	fa := &faultyAlloc{}
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{alloc: fa.wrap, sweep: -1})
	d, _ := deployFixture(t, R, 0)
	fa.set(&fa.beforeRelease, func() error { return errInjected })
	st, b := call(t, "DELETE", R+"/api/net/service/s1", "", "")
	want503(t, "delete service with the release failing", st, b)
	mustCall(t, 404, "DELETE", R+"/api/net/service/s1", "", "", nil)
	if got := poolOwners(t, rdb, "svc/s1/"); len(got) != 0 {
		t.Errorf("deleted service still holds %v", got)
	}
	for _, ip := range d.ServiceIPList {
		if o := poolOwner(t, rdb, ip.Address); o != "" {
			t.Errorf("%s still held by %s", ip.Address, o)
		}
	}
	noPending(t, rdb, "s1")
}

// TestLateReleaseSparesRedeployedInstance: replica A removes instance 0 and
// stalls before its release; replica B deploys instance 0 again meanwhile.
// When A's release finally runs it frees only the old generation: the new
// instance keeps its addresses.
func TestLateReleaseSparesRedeployedInstance(t *testing.T) {
	fa := &faultyAlloc{}
	_, rdb := startRedis(t)
	_, A := startRoot(t, rdb, rootOpts{alloc: fa.wrap, sweep: -1})
	_, B := startRoot(t, rdb, rootOpts{sweep: -1})
	deployFixture(t, A, 1)

	entered, unblock := make(chan struct{}), make(chan struct{})
	fa.set(&fa.beforeRelease, func() error { close(entered); <-unblock; return nil })
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
	got := poolOwners(t, rdb, "inst/s1/")
	if len(got) != 1 || poolOwner(t, rdb, ia.InstanceIP) != got[0] {
		t.Fatalf("pool owners %v; the redeployed instance's %s must be held by the only one", got, ia.InstanceIP)
	}
	var e struct {
		InstanceList []api.InstanceAnswer `json:"instance_list"`
	}
	mustCall(t, 200, "GET", B+"/api/net/service/ip/"+ia.InstanceIP.String()+"/instances", "", "", &e)
	if len(e.InstanceList) != 1 || e.InstanceList[0].InstanceIP != ia.InstanceIP {
		t.Errorf("service by the new instance IP: %+v", e)
	}
	noPending(t, rdb, "s1")
}
