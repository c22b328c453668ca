package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
)

// rootStore is root's state: its records in Redis, all under the hash tag
// {r} (rootscripts.go, pendingscripts.go, peerscripts.go), and the address
// pools (ipam). Each method is one operation with typed arguments and
// results, usually one script; failures are the named errors below or
// Redis's (redisErr). It knows nothing of HTTP: handlers name the request
// fields in their answers.
type rootStore struct {
	rdb        redis.UniversalClient
	alloc      ipam.Allocator
	tag        string        // prefix + "{r}:"
	staleAfter time.Duration // how old an allocation intent is abandoned
}

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

func (s *rootStore) kSvc(id string) string         { return s.tag + "svc:" + id }
func (s *rootStore) kInt(id string) string         { return s.tag + "int:" + id }
func (s *rootStore) kCint(cid string) string       { return s.tag + "cint:" + cid }
func (s *rootStore) kJobs() string                 { return s.tag + "jobs" }
func (s *rootStore) kClusters() string             { return s.tag + "clusters" }
func (s *rootStore) kPend(id string) string        { return s.tag + "pend:" + id }
func (s *rootStore) kPending() string              { return s.tag + "pending" }
func (s *rootStore) kEndpoints(cid string) string  { return s.tag + "ep:" + cid }
func (s *rootStore) kHosts(id string) string       { return s.tag + "hcl:" + id }
func (s *rootStore) kHostChanges(id string) string { return s.tag + "hchg:" + id }
func (s *rootStore) kRehost() string               { return s.tag + "rehost" }
func (s *rootStore) instanceKeys(id string) []string {
	return []string{s.kSvc(id), s.kInt(id), s.kClusters(), s.kPend(id), s.kPending(), s.kHosts(id), s.kHostChanges(id), s.kRehost()}
}

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

// clustersOf parses a script's list of cluster JSONs (the clusters
// interested in a service).
func clustersOf(res []any) []api.Cluster {
	var out []api.Cluster
	for _, c := range res {
		s, _ := c.(string)
		var ci api.Cluster
		if json.Unmarshal([]byte(s), &ci) == nil {
			out = append(out, ci)
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

// registerCluster stores ci. A cluster that was not registered becomes
// linkable: the hints are for the clusters it links with.
func (s *rootStore) registerCluster(c context.Context, ci api.Cluster) ([]hint, error) {
	b, _ := json.Marshal(ci)
	res, err := registerClusterScript.Run(c, s.rdb, []string{s.kClusters()}, s.tag, ci.ClusterID, b).Slice()
	if err != nil {
		return nil, redisErr("register cluster", err)
	}
	return hintsOf(res[1:]), nil
}

// deleteCluster removes a cluster with its interests and endpoints; the
// hints are for the clusters linked with it. errNoCluster.
func (s *rootStore) deleteCluster(c context.Context, cid string) ([]hint, error) {
	res, err := deleteClusterScript.Run(c, s.rdb, []string{s.kClusters(), s.kCint(cid), s.kEndpoints(cid)},
		cid, s.tag+"int:", s.tag).Slice()
	if err != nil {
		return nil, redisErr("delete cluster", err)
	}
	if code(res) == 0 {
		return nil, errNoCluster
	}
	return hintsOf(res[1:]), nil
}

// service returns the entry of service id. With cid, it records cluster
// cid's interest in it (which may link clusters: hints). errNoService,
// errNoCluster.
func (s *rootStore) service(c context.Context, id, cid string) (api.ServiceEntry, []hint, error) {
	if cid == "" {
		m, err := s.rdb.HGetAll(c, s.kSvc(id)).Result()
		if err != nil {
			return api.ServiceEntry{}, nil, redisErr("get service", err)
		}
		if m["meta"] == "" {
			return api.ServiceEntry{}, nil, errNoService
		}
		var fields []any
		for k, v := range m {
			fields = append(fields, k, v)
		}
		e, err := entryFromFields(fields)
		return e, nil, err
	}
	res, err := getServiceScript.Run(c, s.rdb, []string{s.kSvc(id), s.kInt(id), s.kCint(cid), s.kClusters()}, id, cid, s.tag).Slice()
	return s.entryReply(res, err)
}

// serviceByJob is service, by job name.
func (s *rootStore) serviceByJob(c context.Context, job, cid string) (api.ServiceEntry, []hint, error) {
	res, err := resolveJobScript.Run(c, s.rdb, []string{s.kJobs(), s.kClusters()}, job, cid, s.tag).Slice()
	return s.entryReply(res, err)
}

// entryReply reads the reply of getService or resolveJob.
func (s *rootStore) entryReply(res []any, err error) (api.ServiceEntry, []hint, error) {
	if err != nil {
		return api.ServiceEntry{}, nil, redisErr("get service", err)
	}
	switch code(res) {
	case -1:
		return api.ServiceEntry{}, nil, errNoService
	case -2:
		return api.ServiceEntry{}, nil, errNoCluster
	}
	fields, _ := res[1].([]any)
	e, err := entryFromFields(fields)
	return e, hintsOf(res[2:]), err
}

// entryFromFields builds a service entry from the service hash (field,
// value, field, value…).
func entryFromFields(fields []any) (api.ServiceEntry, error) {
	var e api.ServiceEntry
	e.InstanceList = []api.Instance{}
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := fields[i].(string)
		v, _ := fields[i+1].(string)
		if k == "meta" {
			var m serviceMeta
			if err := json.Unmarshal([]byte(v), &m); err != nil {
				return e, fmt.Errorf("service entry: meta: %w", err)
			}
			e.ID, e.JobName, e.ServiceIPList = m.ID, m.JobName, m.ServiceIPList
			continue
		}
		var inst api.Instance
		if err := json.Unmarshal([]byte(v), &inst); err != nil {
			return e, fmt.Errorf("service entry: %s: %w", k, err)
		}
		e.InstanceList = append(e.InstanceList, inst)
	}
	slices.SortFunc(e.InstanceList, func(a, b api.Instance) int { return a.InstanceNumber - b.InstanceNumber })
	return e, nil
}

// serviceID returns the id of the service named job. errNoService.
func (s *rootStore) serviceID(c context.Context, job string) (string, error) {
	id, err := s.rdb.HGet(c, s.kJobs(), job).Result()
	if errors.Is(err, redis.Nil) {
		return "", errNoService
	}
	return id, redisErr("service id", err)
}

// meta returns the record of service id. errNoService.
func (s *rootStore) meta(c context.Context, id string) (serviceMeta, error) {
	var m serviceMeta
	b, err := s.rdb.HGet(c, s.kSvc(id), "meta").Result()
	if errors.Is(err, redis.Nil) {
		return m, errNoService
	} else if err != nil {
		return m, redisErr("read service", err)
	}
	return m, json.Unmarshal([]byte(b), &m)
}

// dropInterest forgets cluster cid's interest in service id; the hints
// are for the links that ends.
func (s *rootStore) dropInterest(c context.Context, id, cid string) ([]hint, error) {
	res, err := dropInterestScript.Run(c, s.rdb, []string{s.kInt(id), s.kCint(cid)}, s.tag, id, cid).Slice()
	if err != nil {
		return nil, redisErr("drop interest", err)
	}
	return hintsOf(res), nil
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
// longer run, if still at that host), all or none, and returns how many
// changed and the clusters interested in the service. errNoService,
// *noInstanceError.
func (s *rootStore) setStatus(c context.Context, id string, list []instanceStatus, undeploy bool) (int, []api.Cluster, error) {
	script, args := deployStatusScript, make([]any, 0, 5*len(list))
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
	res, err := script.Run(c, s.rdb, []string{s.kSvc(id), s.kInt(id), s.kClusters()}, args...).Slice()
	if err != nil {
		return 0, nil, redisErr("deploy status: store", err)
	}
	switch n := code(res); {
	case n == -1:
		return 0, nil, errNoService
	case n == -2:
		f, _ := res[1].(string)
		return 0, nil, &noInstanceError{Number: strings.TrimPrefix(f, "i:")}
	case n > 0:
		return int(n), clustersOf(res[1:]), nil
	}
	return 0, nil, nil
}
