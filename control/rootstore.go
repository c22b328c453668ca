package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
)

// rootStore is root's state in Redis, spread over hash slots so that a
// Redis Cluster's masters share it (docs/design.md, "Root's state over
// hash slots"):
//
//   - Services live in shards: service id's shard is crc32(id) mod the
//     shard count (DefaultShards), and its keys carry the shard's tag
//     ipam.ShardTag ("<prefix>{s<k>}:"). Under it: svc:<id> (hash: "meta",
//     "job" and the instances "i:<n>"), int:<id> (interested clusters),
//     hcl:<id> (cluster → instances there), pend:<id> and pending
//     (pending.go), lchg:<id>, lver:<id> and links (link changes not yet
//     copied to the link graph), and the shard's address pools (ipam).
//     Deploying, moving and deleting an instance, a lookup with its
//     interest, a deploy status: each is one script on the shard.
//   - Root-wide state under {r}: registered clusters, the job name index
//     (jobs: job → id), the peer registry and the link graph (int, cint,
//     hcl: peerscripts.go), the layout marker (layout.go).
//   - The pools' block registry under {pool} (ipam.Shards).
//
// A change that spans slots (creating or deleting a service: its shard and
// the job index; a new block; a link change: its shard and the link graph)
// is a sequence of scripts, each on one slot, in an order that a failure
// between them leaves nothing visible half-written (pending.go).
//
// Each method is one operation with typed arguments and results; failures
// are the named errors below or Redis's (redisErr). It knows nothing of
// HTTP: handlers name the request fields in their answers.
type rootStore struct {
	rdb        redis.UniversalClient
	alloc      ipam.Allocator // worker subnets
	pool       *ipam.Shards   // service and instance IPs
	tag        string         // prefix + "{r}:"
	prefix     string
	staleAfter time.Duration // how old an allocation intent is abandoned

	hot      *batcher // the scripts of deploys and lookups, batched (batch.go)
	jobs     sync.Map // job name → service id (verified by every lookup's script)
	clusters clusterCache
	byAddr   addrIndex   // cluster address → id, for callers without cluster_id (rootcompat.go)
	checked  atomic.Bool // layout checked (layout.go)
	checkMu  sync.Mutex  // one layout check at a time

	// fault, in tests, fails a multi-step change after the named step.
	fault func(step string) error
}

// DefaultShards is the number of shards of root's services. It is part of
// the key layout: every replica must use the same (layout.go checks).
const DefaultShards = 64

// Named errors of root's store. Handlers turn them into answers naming the
// request field; each is of the class it is answered with.
var (
	errNoService    = fmt.Errorf("no such service: %w", api.ErrNotFound)
	errNoInstance   = fmt.Errorf("no such instance: %w", api.ErrNotFound)
	errNoCluster    = fmt.Errorf("cluster not registered: %w", api.ErrNotFound)
	errHasInstances = fmt.Errorf("service has instances: %w", api.ErrConflict)
	// errReclaimed: a deploy stalled so long between its phases that its
	// intent was reclaimed as abandoned (and its addresses freed): retry.
	errReclaimed = fmt.Errorf("addresses reclaimed while the request stalled, retry: %w", errRedis)
)

// takenError: a service deploy conflicts with another service: its job
// name belongs to service id Holder, or its id names job Job.
type takenError struct {
	Holder, Job string
}

func (e *takenError) Error() string {
	if e.Holder != "" {
		return "job name belongs to service " + e.Holder
	}
	return "id names service " + e.Job
}

func (e *takenError) Unwrap() error { return api.ErrConflict }

// serviceMeta is a service's record (field "meta" of svc:<id>).
type serviceMeta struct {
	ID            string          `json:"_id"`
	JobName       string          `json:"job_name"`
	ServiceIPList []api.ServiceIP `json:"service_ip_list"`
	// Owners are the pool owners of the service IPs by policy (see
	// pending.go); absent in records from before generations.
	Owners map[string]string `json:"owners,omitempty"`
}

// storedInstance is an instance record (field "i:<n>" of svc:<id>): the
// instance and its pool owner.
type storedInstance struct {
	api.Instance
	Owner string `json:"owner,omitempty"`
}

// hint is a peers hint to send: cluster must fetch scope's endpoints
// again (comma-separated cluster ids; "" for all it is linked with).
type hint struct {
	cluster api.Cluster
	scope   string
}

func newRootStore(rdb redis.UniversalClient, alloc ipam.Allocator, pool *ipam.Shards, prefix string, stale, timeout time.Duration) *rootStore {
	return &rootStore{rdb: rdb, alloc: alloc, pool: pool, prefix: prefix, tag: prefix + "{r}:", staleAfter: stale,
		hot: newBatcher(rdb, timeout)}
}

// shard is the shard of service id; st its tag.
func (s *rootStore) shard(id string) int {
	return int(crc32.ChecksumIEEE([]byte(id)) % uint32(s.pool.Count()))
}
func (s *rootStore) st(id string) string { return s.pool.Tag(s.shard(id)) }

func (s *rootStore) kSvc(id string) string        { return s.st(id) + "svc:" + id }
func (s *rootStore) kShardInt(id string) string   { return s.st(id) + "int:" + id }
func (s *rootStore) kPend(id string) string       { return s.st(id) + "pend:" + id }
func (s *rootStore) kLinkChg(id string) string    { return s.st(id) + "lchg:" + id }
func (s *rootStore) kInt(id string) string        { return s.tag + "int:" + id }
func (s *rootStore) kHosts(id string) string      { return s.tag + "hcl:" + id }
func (s *rootStore) kCint(cid string) string      { return s.tag + "cint:" + cid }
func (s *rootStore) kJobs() string                { return s.tag + "jobs" }
func (s *rootStore) kClusters() string            { return s.tag + "clusters" }
func (s *rootStore) kLinkVer() string             { return s.tag + "lv" }
func (s *rootStore) kEndpoints(cid string) string { return s.tag + "ep:" + cid }

// hintsOf parses a script's hints: (cluster JSON, scope) pairs.
func hintsOf(res []any) []hint {
	var out []hint
	for i := 0; i+1 < len(res); i += 2 {
		cs, _ := res[i].(string)
		scope, _ := res[i+1].(string)
		var ci api.Cluster
		if json.Unmarshal([]byte(cs), &ci) == nil {
			out = append(out, hint{cluster: ci, scope: scope})
		}
	}
	return out
}

// code is a script reply's status code.
func code(res []any) int64 {
	if len(res) == 0 {
		return 0
	}
	c, _ := res[0].(int64)
	return c
}

func strAt(res []any, i int) string {
	if i >= len(res) {
		return ""
	}
	s, _ := res[i].(string)
	return s
}

// clusterCache holds registered clusters for a short while: every deploy
// checks its cluster and every change notifies clusters, and a replica
// need not read them from the root's slot each time. A cluster another
// replica deleted may be served for up to clusterTTL more.
type clusterCache struct {
	mu sync.RWMutex // guards m
	m  map[string]cachedCluster
}

type cachedCluster struct {
	c  api.Cluster
	at time.Time
}

const clusterTTL = 2 * time.Second

func (cc *clusterCache) get(cid string) (api.Cluster, bool) {
	cc.mu.RLock()
	e, ok := cc.m[cid]
	cc.mu.RUnlock()
	if !ok || time.Since(e.at) > clusterTTL {
		return api.Cluster{}, false
	}
	return e.c, true
}

func (cc *clusterCache) put(ci api.Cluster) {
	cc.mu.Lock()
	if cc.m == nil {
		cc.m = map[string]cachedCluster{}
	}
	cc.m[ci.ClusterID] = cachedCluster{c: ci, at: time.Now()}
	cc.mu.Unlock()
}

func (cc *clusterCache) drop(cid string) {
	cc.mu.Lock()
	delete(cc.m, cid)
	cc.mu.Unlock()
}

// clustersOf returns the registered clusters among ids.
func (s *rootStore) clustersOf(c context.Context, ids []string) ([]api.Cluster, error) {
	out := make([]api.Cluster, 0, len(ids))
	var miss []string
	for _, id := range ids {
		if ci, ok := s.clusters.get(id); ok {
			out = append(out, ci)
		} else {
			miss = append(miss, id)
		}
	}
	if len(miss) == 0 {
		return out, nil
	}
	vals, err := s.rdb.HMGet(c, s.kClusters(), miss...).Result()
	if err != nil {
		return out, redisErr("clusters", err)
	}
	for _, v := range vals {
		js, _ := v.(string)
		var ci api.Cluster
		if js != "" && json.Unmarshal([]byte(js), &ci) == nil {
			s.clusters.put(ci)
			out = append(out, ci)
		}
	}
	return out, nil
}

// registered reports whether cluster cid is registered.
func (s *rootStore) registered(c context.Context, cid string) (bool, error) {
	cs, err := s.clustersOf(c, []string{cid})
	return len(cs) == 1, err
}

// registerCluster stores ci. A cluster that was not registered becomes
// linkable: the hints are for the clusters it links with.
func (s *rootStore) registerCluster(c context.Context, ci api.Cluster) ([]hint, error) {
	b, _ := json.Marshal(ci)
	res, err := registerClusterScript.Run(c, s.rdb, []string{s.kClusters()}, s.tag, ci.ClusterID, b).Slice()
	if err != nil {
		return nil, redisErr("register cluster", err)
	}
	s.clusters.put(ci)
	s.byAddr.reset()
	return hintsOf(res[1:]), nil
}

// deleteCluster removes a cluster with its interests and endpoints; the
// hints are for the clusters linked with it. errNoCluster.
func (s *rootStore) deleteCluster(c context.Context, cid string) ([]hint, error) {
	s.clusters.drop(cid)
	s.byAddr.reset()
	res, err := deleteClusterScript.Run(c, s.rdb, []string{s.kClusters(), s.kCint(cid), s.kEndpoints(cid)},
		cid, s.tag+"int:", s.tag).Slice()
	if err != nil {
		return nil, redisErr("delete cluster", err)
	}
	if code(res) == 0 {
		return nil, errNoCluster
	}
	// The shards' copies of its interests; what is left (a failure here)
	// is only ever read through the registered clusters.
	svcs, _ := res[1].([]any)
	if len(svcs) > 0 {
		pipe := s.rdb.Pipeline()
		for _, v := range svcs {
			id, _ := v.(string)
			pipe.SRem(c, s.kShardInt(id), cid)
		}
		if _, err := pipe.Exec(c); err != nil {
			return hintsOf(res[2:]), redisErr("delete cluster: interests", err)
		}
	}
	return hintsOf(res[2:]), nil
}

// service returns the entry of service id. With cid, it records cluster
// cid's interest in it (which may link clusters: hints). With job, the
// service must be that job's. errNoService, errNoCluster.
func (s *rootStore) service(c context.Context, id, cid, job string) (api.ServiceEntry, []hint, error) {
	if err := s.ready(c); err != nil {
		return api.ServiceEntry{}, nil, err
	}
	if cid != "" {
		if ok, err := s.registered(c, cid); err != nil {
			return api.ServiceEntry{}, nil, err
		} else if !ok {
			return api.ServiceEntry{}, nil, errNoCluster
		}
	}
	res, err := s.hot.run(c, getServiceScript, []string{s.kSvc(id)}, s.st(id), id, cid, job)
	if err != nil {
		return api.ServiceEntry{}, nil, redisErr("get service", err)
	}
	if code(res) != 1 {
		return api.ServiceEntry{}, nil, errNoService
	}
	e, err := entryFromFlat(res)
	if err != nil {
		return e, nil, err
	}
	var hints []hint
	if res[1] == int64(1) {
		hints = s.linksChanged(c, id)
	}
	return e, hints, nil
}

// entryFromFlat builds a service entry from getService's reply.
func entryFromFlat(res []any) (api.ServiceEntry, error) {
	e := api.ServiceEntry{ID: strAt(res, 2), JobName: strAt(res, 3), InstanceList: []api.Instance{}}
	nips, _ := res[4].(int64)
	i := 5
	for range nips {
		e.ServiceIPList = append(e.ServiceIPList, api.ServiceIP{IpType: strAt(res, i), Address: addr(strAt(res, i+1)), AddressV6: addr(strAt(res, i+2))})
		i += 3
	}
	for ; i+8 <= len(res); i += 8 {
		inst, err := instanceFromFlat(res[i : i+8])
		if err != nil {
			return e, err
		}
		e.InstanceList = append(e.InstanceList, inst)
	}
	slices.SortFunc(e.InstanceList, func(a, b api.Instance) int { return a.InstanceNumber - b.InstanceNumber })
	return e, nil
}

// instanceFromFlat reads an instance's 8 flat values (inst_flat).
func instanceFromFlat(v []any) (api.Instance, error) {
	n, err := strconv.Atoi(strAt(v, 0))
	if err != nil {
		return api.Instance{}, fmt.Errorf("service entry: instance number %q", strAt(v, 0))
	}
	port, _ := strconv.Atoi(strAt(v, 7))
	return api.Instance{InstanceNumber: n, InstanceIP: addr(strAt(v, 1)), InstanceIPv6: addr(strAt(v, 2)),
		ClusterID: strAt(v, 3), NamespaceIP: addr(strAt(v, 4)), NamespaceIPv6: addr(strAt(v, 5)),
		HostIP: addr(strAt(v, 6)), HostPort: port}, nil
}

// addr parses a stored address ("" and garbage: none).
func addr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

// serviceID returns the id of the service named job (the index may name
// one being created or deleted: lookups check the record). errNoService.
func (s *rootStore) serviceID(c context.Context, job string) (string, error) {
	if id, ok := s.jobs.Load(job); ok {
		return id.(string), nil
	}
	id, err := s.rdb.HGet(c, s.kJobs(), job).Result()
	if errors.Is(err, redis.Nil) {
		return "", errNoService
	} else if err != nil {
		return "", redisErr("service id", err)
	}
	s.jobs.Store(job, id)
	return id, nil
}

// serviceByJob is service, by job name.
func (s *rootStore) serviceByJob(c context.Context, job, cid string) (api.ServiceEntry, []hint, error) {
	if err := s.ready(c); err != nil {
		return api.ServiceEntry{}, nil, err
	}
	for try := 0; ; try++ {
		id, err := s.serviceID(c, job)
		if err != nil {
			return api.ServiceEntry{}, nil, err
		}
		e, hints, err := s.service(c, id, cid, job)
		if errors.Is(err, errNoService) && try == 0 {
			// The cached id may be stale (the job deleted and created again).
			s.jobs.Delete(job)
			continue
		}
		return e, hints, err
	}
}

// ownerOf returns the pool owner of a service or instance IP, and the id
// of the service it belongs to ("" if none).
func (s *rootStore) ownerOf(c context.Context, a netip.Addr) (string, error) {
	if err := s.ready(c); err != nil {
		return "", err
	}
	owner, err := s.pool.Owner(c, a)
	if errors.Is(err, ipam.ErrNotFound) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("get service by ip: %w", err)
	}
	// owners are svc/<id>/<policy>[/<gen>] or inst/<id>/<n>[/<gen>]
	parts := strings.Split(owner, "/")
	if len(parts) < 3 {
		return "", nil
	}
	return parts[1], nil
}

// dropInterest forgets cluster cid's interest in service id; the hints
// are for the links that ends.
func (s *rootStore) dropInterest(c context.Context, id, cid string) ([]hint, error) {
	n, err := dropInterestScript.Run(c, s.rdb, []string{s.kShardInt(id)}, s.st(id), id, cid).Int()
	if err != nil {
		return nil, redisErr("drop interest", err)
	}
	if n == 0 {
		return nil, nil
	}
	return s.linksChanged(c, id), nil
}

// linksChanged copies what changed of service id's links to the link
// graph and returns the hints; a failure leaves the change recorded in
// the shard for the sweep.
func (s *rootStore) linksChanged(c context.Context, id string) []hint {
	hints, err := s.syncLinks(c, id)
	if err != nil {
		return nil
	}
	return hints
}

// syncLinks copies the link changes recorded in service id's shard to the
// link graph (peerscripts.go) and drops them there.
func (s *rootStore) syncLinks(c context.Context, id string) ([]hint, error) {
	st, err := linkStateScript.Run(c, s.rdb, []string{s.kLinkChg(id)}, s.st(id), id).Slice()
	if err != nil || len(st) == 0 {
		return nil, redisErr("links: state", err)
	}
	ver := strAt(st, 0)
	args := []any{s.tag, id, ver}
	for i := 1; i+2 < len(st); i += 3 {
		args = append(args, st[i], st[i+1], st[i+2])
	}
	var hints []hint
	if len(args) > 3 {
		res, err := syncLinksScript.Run(c, s.rdb, []string{s.kInt(id), s.kHosts(id), s.kLinkVer()}, args...).Slice()
		if err != nil {
			return nil, redisErr("links: copy", err)
		}
		hints = hintsOf(res)
	}
	if err := linkDoneScript.Run(c, s.rdb, []string{s.kLinkChg(id)}, s.st(id), id, ver).Err(); err != nil {
		return hints, redisErr("links: done", err)
	}
	return hints, nil
}

// instanceStatus is where an instance runs: set for a deploy status,
// only Number and Host for an undeploy status.
type instanceStatus struct {
	Number   int
	NS4, NS6 string // "" if none
	HostIP   string
	HostPort int
}

// noInstanceError: a status names an instance the service does not have.
type noInstanceError struct{ Number string }

func (e *noInstanceError) Error() string { return "no instance " + e.Number }
func (e *noInstanceError) Unwrap() error { return errNoInstance }

// setStatus records where the instances of service id run (undeploy: no
// longer run, if still at that host), all or none, and returns the
// service's job name, how many changed and the clusters interested in the
// service. errNoService, *noInstanceError.
func (s *rootStore) setStatus(c context.Context, id string, list []instanceStatus, undeploy bool) (string, int, []api.Cluster, error) {
	if err := s.ready(c); err != nil {
		return "", 0, nil, err
	}
	script, args := deployStatusScript, make([]any, 0, 2+5*len(list))
	args = append(args, s.st(id), id)
	for _, st := range list {
		field := "i:" + strconv.Itoa(st.Number)
		if undeploy {
			args = append(args, field, st.HostIP, strconv.Itoa(st.HostPort))
		} else {
			args = append(args, field, st.NS4, st.NS6, st.HostIP, strconv.Itoa(st.HostPort))
		}
	}
	if undeploy {
		script = undeployStatusScript
	}
	res, err := script.Run(c, s.rdb, []string{s.kSvc(id)}, args...).Slice()
	if err != nil {
		return "", 0, nil, redisErr("deploy status: store", err)
	}
	switch n := code(res); {
	case n == -1:
		return "", 0, nil, errNoService
	case n == -2:
		return "", 0, nil, &noInstanceError{Number: strings.TrimPrefix(strAt(res, 1), "i:")}
	case n > 0:
		to, err := s.clustersOf(c, stringsOf(res[2:]))
		return strAt(res, 1), int(n), to, err
	}
	return strAt(res, 1), 0, nil, nil
}

// stringsOf is a reply's list of strings.
func stringsOf(v []any) []string {
	out := make([]string, 0, len(v))
	for _, x := range v {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// peek previews an address the next allocation of kind in family fam
// could get (ipam.Shards.Peek).
func (s *rootStore) peek(c context.Context, kind ipam.Kind, fam int) (netip.Addr, error) {
	if err := s.ready(c); err != nil {
		return netip.Addr{}, err
	}
	return s.pool.Peek(c, kind, fam)
}
