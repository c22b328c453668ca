package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/policy"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// DefaultPolicies returns the name of every balancing policy (package
// policy), in ID order. A policy's kind (and so its IPv6 range) is its ID,
// whichever subset a root enables. Adding a policy to package policy is
// all it takes for the root to allocate one service IP per service for it.
func DefaultPolicies() []string {
	var names []string
	for _, id := range policy.All() {
		names = append(names, id.String())
	}
	return names
}

// policyKind is the ipam kind of a policy name (as the policy spells it).
func policyKind(name string) (ipam.Kind, bool) {
	id, ok := policy.Parse(name)
	return ipam.Kind(id), ok && id.String() == name && int(id) < ipam.MaxKinds
}

// customIPs returns the addresses a deployment descriptor asks for the
// service IPs of policy pol, and the name of their field: Oakestra's
// descriptor has fields for RR and Closest only.
func customIPs(dd *deploymentDescriptor, pol string) (field, v4, v6 string) {
	id, _ := policy.Parse(pol)
	switch id {
	case policy.RR:
		return "RR_ip", dd.RRIP, dd.RRIPv6
	case policy.Closest:
		return "closest_ip", dd.ClosestIP, dd.ClosestIPv6
	}
	return "", "", ""
}

// DefaultPrefix is the default Redis key prefix.
const DefaultPrefix = "oakwire:"

// RootConfig configures the root service manager. It is read once by
// NewRoot (an immutable snapshot).
type RootConfig struct {
	// Prefix starts every Redis key (default DefaultPrefix). It may not
	// contain '{' or '}' (the hash tags are ours).
	Prefix string
	// Token is the bearer token of every /api/ request and of the
	// notifications to clusters; empty disables auth.
	Token string
	// Policies are the balancing policies' names in registration order
	// (default DefaultPolicies). Each gets one v4+v6 service IP per service.
	Policies []string
	// IPAM is the address plan (zero fields: ipam defaults); it must be the
	// allocator's. Used to validate addresses in requests.
	IPAM ipam.Config
	// Notify tunes change notifications to clusters.
	Notify NotifyConfig
	// Timeout bounds the work of one request against Redis (default
	// 600 ms). A Redis that hangs then costs a request at most Timeout plus
	// one command's read timeout of the client (300 ms in
	// cmd/servicemanager's default): a 503 within a second.
	Timeout time.Duration
	// Sweep is the period of finishing changes that failed half-way
	// (pending.go): releasing addresses of deleted records, reclaiming those
	// of deploys abandoned mid-way (default 10 s; negative: never).
	Sweep time.Duration
	Log   *slog.Logger

	// staleAfter overrides how old an allocation intent must be to count as
	// abandoned (tests; default max(10 × Timeout, 30 s)).
	staleAfter time.Duration
}

// Validate checks the configuration after defaults.
func (c *RootConfig) Validate() error {
	if strings.ContainsAny(c.Prefix, "{}") {
		return fmt.Errorf("root config: prefix %q: may not contain { or }", c.Prefix)
	}
	if len(c.Policies) == 0 || len(c.Policies) >= ipam.MaxKinds {
		return fmt.Errorf("root config: policies: want 1..%d, have %d", ipam.MaxKinds-1, len(c.Policies))
	}
	seen := map[string]bool{}
	for _, p := range c.Policies {
		if !validPart(p) || seen[p] {
			return fmt.Errorf("root config: policies: %q: empty, not alphanumeric or repeated", p)
		}
		if _, ok := policyKind(p); !ok {
			return fmt.Errorf("root config: policies: %q: not a policy (have %v)", p, DefaultPolicies())
		}
		seen[p] = true
	}
	if err := c.IPAM.Validate(); err != nil {
		return fmt.Errorf("root config: %w", err)
	}
	return nil
}

func (c RootConfig) withDefaults() RootConfig {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if len(c.Policies) == 0 {
		c.Policies = DefaultPolicies()
	}
	c.Policies = slices.Clone(c.Policies)
	c.IPAM = c.IPAM.WithDefaults()
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Sweep == 0 {
		c.Sweep = 10 * time.Second
	}
	if c.staleAfter <= 0 {
		c.staleAfter = max(10*c.Timeout, 30*time.Second)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}

// DefaultTimeout is the default budget of one request's work against
// Redis, root and cluster alike. It keeps a request against a Redis that
// hangs under a second (see RootConfig.Timeout).
const DefaultTimeout = 600 * time.Millisecond

// Root is the root service manager (SPEC §5).
type Root struct {
	*api
	cfg        RootConfig
	alloc      ipam.Allocator
	notify     *notifier
	keyTag     string // prefix + "{r}:"
	staleAfter time.Duration
	stop       context.CancelFunc // ends the sweeper
	wg         sync.WaitGroup     // the sweeper
	// worker ranges, for validating namespace IPs
	workerV4Lo, workerV4Hi netip.Addr
	workerV6Lo, workerV6Hi netip.Addr
}

// NewRoot returns the root service manager over rdb and alloc. Close stops
// its notifier.
func NewRoot(cfg RootConfig, rdb redis.UniversalClient, alloc ipam.Allocator) (*Root, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Root{
		api:    newAPI(cfg.Log, rdb, cfg.Token),
		cfg:    cfg,
		alloc:  alloc,
		keyTag: cfg.Prefix + "{r}:",
	}
	first, _ := cfg.IPAM.SubnetAt(0)
	last, _ := cfg.IPAM.SubnetAt(cfg.IPAM.WorkerCount - 1)
	r.workerV4Lo, r.workerV6Lo = first.V4.Addr(), first.V6.Addr()
	r.workerV4Hi, r.workerV6Hi = lastAddr(last.V4), lastAddr(last.V6)
	r.notify = newNotifier(cfg.Notify, cfg.Token, cfg.Log, r.reg)
	r.staleAfter = cfg.staleAfter
	sctx, stop := context.WithCancel(context.Background())
	r.stop = stop
	if cfg.Sweep > 0 {
		r.wg.Add(1)
		go r.sweeper(sctx, cfg.Sweep)
	}

	r.handle("POST /api/net/cluster", r.registerCluster)
	r.handle("DELETE /api/net/cluster/:cid", r.deleteCluster)
	r.handle("PUT /api/net/cluster/:cid/nodes", r.putNodes)
	r.handle("PUT /api/net/cluster/:cid/nodes/:node", r.putNode)
	r.handle("DELETE /api/net/cluster/:cid/nodes/:node", r.deleteNode)
	r.handle("GET /api/net/cluster/:cid/peers", r.peers)
	r.handle("POST /api/net/service/deploy", r.deployService)
	r.handle("POST /api/net/service/net_deploy_status", r.netDeployStatus)
	r.handle("POST /api/net/service/net_undeploy_status", r.netUndeployStatus)
	r.handle("GET /api/net/service/ip/:ip/instances", r.serviceByIP)
	r.handle("GET /api/net/service/:job/instances", r.serviceByJob)
	r.handle("DELETE /api/net/service/:id", r.deleteService)
	r.handle("POST /api/net/instance/deploy", r.deployInstance)
	r.handle("DELETE /api/net/interest/:job", r.dropInterest)
	r.handle("GET /api/net/subnet", r.allocSubnet)
	r.handle("DELETE /api/net/subnet/:node", r.releaseSubnet)
	r.handle("GET /api/pubnet/service/netinfo/available-ip", r.availableIP)
	r.handle("DELETE /api/net/:id/:n", r.deleteInstance)
	return r, nil
}

// Handler is the fasthttp handler of every root endpoint.
func (r *Root) Handler() fasthttp.RequestHandler { return r.serve }

// Close stops the notifier and the sweeper; pending notifications are
// dropped (clusters refresh their caches periodically), pending frees stay
// in Redis for the next root.
func (r *Root) Close() error {
	r.stop()
	r.wg.Wait()
	r.notify.close()
	return nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.AsSlice()
	hostBits := len(b)*8 - p.Bits()
	for i := len(b) - 1; hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

func (r *Root) kSvc(id string) string   { return r.keyTag + "svc:" + id }
func (r *Root) kInt(id string) string   { return r.keyTag + "int:" + id }
func (r *Root) kCint(cid string) string { return r.keyTag + "cint:" + cid }
func (r *Root) kJobs() string           { return r.keyTag + "jobs" }
func (r *Root) kClusters() string       { return r.keyTag + "clusters" }

func (r *Root) ctx(ctx *fasthttp.RequestCtx) (context.Context, context.CancelFunc) {
	return context.WithTimeout(detach(ctx, context.Background()), r.cfg.Timeout)
}

// ---- clusters ----

type clusterInfo struct {
	ClusterID      string `json:"cluster_id"`
	ClusterAddress string `json:"cluster_address"`
	ClusterPort    int    `json:"cluster_port"`
}

func (r *Root) registerCluster(ctx *fasthttp.RequestCtx, _ []string) error {
	var in struct {
		ClusterID      *string `json:"cluster_id"`
		ClusterAddress *string `json:"cluster_address"`
		ClusterPort    *int    `json:"cluster_port"`
	}
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	switch {
	case in.ClusterID == nil:
		return badf("missing_field", "cluster_id: missing")
	case in.ClusterAddress == nil || *in.ClusterAddress == "":
		return badf("missing_field", "cluster_address: missing")
	case in.ClusterPort == nil:
		return badf("missing_field", "cluster_port: missing")
	}
	if err := validID("cluster_id", *in.ClusterID); err != nil {
		return err
	}
	if *in.ClusterPort < 1 || *in.ClusterPort > 65535 {
		return badf("bad_port", "cluster_port: %d not in 1..65535", *in.ClusterPort)
	}
	addr := *in.ClusterAddress
	if len(addr) > 255 || strings.ContainsAny(addr, " \t\r\n/?#@") && !strings.Contains(addr, "://") {
		return badf("bad_address", "cluster_address: %q is not a host name, IP address or URL", addr)
	}
	ci := clusterInfo{ClusterID: *in.ClusterID, ClusterAddress: addr, ClusterPort: *in.ClusterPort}
	b, _ := json.Marshal(ci)
	c, cancel := r.ctx(ctx)
	defer cancel()
	res, err := registerClusterScript.Run(c, r.rdb, []string{r.kClusters()}, r.keyTag, ci.ClusterID, b).Slice()
	if err != nil {
		return redisErr("register cluster", err)
	}
	r.notify.retarget(ci)
	r.sendHints(res[1:])
	writeJSON(ctx, 200, ci)
	return nil
}

func (r *Root) deleteCluster(ctx *fasthttp.RequestCtx, p []string) error {
	cid := p[0]
	if err := validID("cluster_id", cid); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	res, err := deleteClusterScript.Run(c, r.rdb, []string{r.kClusters(), r.kCint(cid), r.kEndpoints(cid)},
		cid, r.keyTag+"int:", r.keyTag).Slice()
	if err != nil {
		return redisErr("delete cluster", err)
	}
	if res[0].(int64) == 0 {
		return notFoundf("cluster_id: %q is not registered", cid)
	}
	r.notify.forget(cid)
	r.sendHints(res[1:])
	writeJSON(ctx, 200, map[string]string{"cluster_id": cid})
	return nil
}

// ---- services ----

type serviceMeta struct {
	ID            string                 `json:"_id"`
	JobName       string                 `json:"job_name"`
	ServiceIPList []nodeclient.ServiceIP `json:"service_ip_list"`
	// Owners are the pool owners of the service IPs by policy (see
	// pending.go); absent in records from before generations.
	Owners map[string]string `json:"owners,omitempty"`
}

// storedInstance is an instance record: the instance and its pool owner.
type storedInstance struct {
	nodeclient.Instance
	Owner string `json:"owner,omitempty"`
}

// deploymentDescriptor is Oakestra's description of a service in POST
// /api/net/service/deploy.
type deploymentDescriptor struct {
	AppName     string `json:"app_name"`
	AppNS       string `json:"app_ns"`
	MsName      string `json:"microservice_name"`
	MsNS        string `json:"microservice_namespace"`
	ServiceName string `json:"service_name"`
	ServiceNS   string `json:"service_ns"`
	RRIP        string `json:"RR_ip"`
	RRIPv6      string `json:"RR_ip_v6"`
	ClosestIP   string `json:"closest_ip"`
	ClosestIPv6 string `json:"closest_ip_v6"`
}

type deployAnswer struct {
	JobName       string                 `json:"job_name"`
	ServiceIPList []nodeclient.ServiceIP `json:"service_ip_list"`
}

// Pool owner bases; newOwner adds the generation.
func svcOwnerBase(id, policy string) string { return "svc/" + id + "/" + policy }
func instOwnerBase(id string, n int) string { return "inst/" + id + "/" + strconv.Itoa(n) }

func (r *Root) deployService(ctx *fasthttp.RequestCtx, _ []string) error {
	var in struct {
		ID *string               `json:"_id"`
		DD *deploymentDescriptor `json:"deployment_descriptor"`
	}
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	if in.ID == nil {
		return badf("missing_field", "_id: missing")
	}
	if err := validID("_id", *in.ID); err != nil {
		return err
	}
	if in.DD == nil {
		return badf("missing_field", "deployment_descriptor: missing")
	}
	dd := in.DD
	// microservice_name/namespace are Oakestra's; service_name/service_ns
	// are accepted in their place.
	if dd.MsName == "" {
		dd.MsName = dd.ServiceName
	}
	if dd.MsNS == "" {
		dd.MsNS = dd.ServiceNS
	}
	for _, f := range []struct{ name, v string }{
		{"deployment_descriptor.app_name", dd.AppName}, {"deployment_descriptor.app_ns", dd.AppNS},
		{"deployment_descriptor.microservice_name", dd.MsName}, {"deployment_descriptor.microservice_namespace", dd.MsNS},
	} {
		if f.v == "" {
			return badf("missing_field", "%s: missing", f.name)
		}
		if !validPart(f.v) {
			return badf("bad_name", "%s: %q must match ^[a-zA-Z0-9]{1,30}$", f.name, f.v)
		}
	}
	job := dd.AppName + "." + dd.AppNS + "." + dd.MsName + "." + dd.MsNS
	id := *in.ID

	reqs := make([]ipam.Request, len(r.cfg.Policies))
	for i, pol := range r.cfg.Policies {
		kind, _ := policyKind(pol)         // Validate checked every name
		reqs[i] = ipam.Request{Kind: kind} // Owner: after prepare
		field, cu4, cu6 := customIPs(dd, pol)
		if cu4 != "" {
			a, err := parseAddr("deployment_descriptor."+field, cu4, 4)
			if err != nil {
				return err
			}
			if !r.cfg.IPAM.ServiceV4.Contains(a) {
				return badf("out_of_pool", "deployment_descriptor.%s: %s outside the service pool %s", field, a, r.cfg.IPAM.ServiceV4)
			}
			reqs[i].Custom4 = a
		}
		if cu6 != "" {
			a, err := parseAddr("deployment_descriptor."+field+"_v6", cu6, 6)
			if err != nil {
				return err
			}
			kp, _ := r.cfg.IPAM.KindPrefix(kind)
			if !kp.Contains(a) {
				return badf("out_of_pool", "deployment_descriptor.%s_v6: %s outside the %s pool %s", field, a, pol, kp)
			}
			reqs[i].Custom6 = a
		}
	}

	c, cancel := r.ctx(ctx)
	defer cancel()
	// Prepare: conflicts are found before anything is allocated, and an
	// intent names the owners the allocation is for.
	args := []any{id, job, r.staleArg()}
	for _, pol := range r.cfg.Policies {
		args = append(args, pol, newOwner(svcOwnerBase(id, pol)))
	}
	keys := []string{r.kSvc(id), r.kJobs(), r.kPend(id), r.kPending()}
	code, payload, _, err := r.step(c, prepareServiceScript, id, "deploy service: prepare", keys, args...)
	if err != nil {
		return err
	}
	switch code {
	case -2:
		return conflictf("job_name: %s already belongs to service _id %q", job, payload)
	case -3:
		return conflictf("_id: %q already names service %s", id, payload)
	case 0:
		return r.answerExistingService(ctx, payload, reqs)
	}
	ownerList, _ := payload.([]any)
	if len(ownerList) != len(reqs) {
		return fmt.Errorf("deploy service: prepare: %d owners for %d policies", len(ownerList), len(reqs))
	}
	slots := make([]string, len(reqs))
	owners := make([]string, len(reqs))
	for i := range reqs {
		owners[i], _ = ownerList[i].(string)
		slots[i] = "p:" + r.cfg.Policies[i]
		reqs[i].Owner = owners[i]
	}

	pairs, err := r.alloc.Alloc(c, reqs)
	if err != nil {
		if errors.Is(err, ipam.ErrConflict) {
			// Name the field of the custom address that is taken.
			for i, q := range reqs {
				if (q.Custom4.IsValid() || q.Custom6.IsValid()) && strings.Contains(err.Error(), q.Owner+" ") {
					f, _, _ := customIPs(&deploymentDescriptor{}, r.cfg.Policies[i])
					err = newErr(ipam.ErrConflict, "address_in_use", "deployment_descriptor.%s: requested address not free (%v)", f, err)
					break
				}
			}
		}
		return r.afterAllocErr(c, id, slots, owners, fmt.Errorf("deploy service: allocate service IPs: %w", err))
	}
	meta := serviceMeta{ID: id, JobName: job, Owners: map[string]string{}}
	for i, pol := range r.cfg.Policies {
		meta.ServiceIPList = append(meta.ServiceIPList, nodeclient.ServiceIP{IpType: pol, Address: pairs[i].V4.String(), AddressV6: pairs[i].V6.String()})
		meta.Owners[pol] = owners[i]
	}
	mb, _ := json.Marshal(meta)
	args = []any{id, job, mb}
	for i, pol := range r.cfg.Policies {
		args = append(args, pol, owners[i])
	}
	// A failure here leaves the intent: a retry gets the same addresses, the
	// sweep frees them if none comes.
	code, payload, _, err = r.step(c, commitServiceScript, id, "deploy service: store", keys, args...)
	if err != nil {
		return err
	}
	switch code {
	case -2:
		return conflictf("job_name: %s already belongs to service _id %q", job, payload)
	case -3:
		return conflictf("_id: %q already names service %s", id, payload)
	case -4:
		return fmt.Errorf("deploy service: addresses reclaimed while the request stalled, retry: %w", ErrUnavailable)
	case 0:
		return r.answerExistingService(ctx, payload, reqs)
	}
	writeJSON(ctx, 200, deployAnswer{JobName: meta.JobName, ServiceIPList: meta.ServiceIPList})
	return nil
}

// answerExistingService answers a deploy of a service that exists (stored
// meta JSON in payload): its addresses, unless the request asks for custom
// ones it does not hold (409, as for any taken address).
func (r *Root) answerExistingService(ctx *fasthttp.RequestCtx, payload any, reqs []ipam.Request) error {
	s, _ := payload.(string)
	var meta serviceMeta
	if err := json.Unmarshal([]byte(s), &meta); err != nil {
		return fmt.Errorf("deploy service: stored meta: %w", err)
	}
	for i, pol := range r.cfg.Policies {
		field, _, _ := customIPs(&deploymentDescriptor{}, pol)
		for _, ip := range meta.ServiceIPList {
			if ip.IpType != pol {
				continue
			}
			if q := reqs[i].Custom4; q.IsValid() && q.String() != ip.Address {
				return newErr(ipam.ErrConflict, "address_in_use", "deployment_descriptor.%s: service %s already holds %s", field, meta.JobName, ip.Address)
			}
			if q := reqs[i].Custom6; q.IsValid() && q.String() != ip.AddressV6 {
				return newErr(ipam.ErrConflict, "address_in_use", "deployment_descriptor.%s_v6: service %s already holds %s", field, meta.JobName, ip.AddressV6)
			}
		}
	}
	writeJSON(ctx, 200, deployAnswer{JobName: meta.JobName, ServiceIPList: meta.ServiceIPList})
	return nil
}

func (r *Root) deleteService(ctx *fasthttp.RequestCtx, p []string) error {
	id := p[0]
	if err := validID("_id", id); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	// step also finishes what an earlier, half-finished attempt left (its
	// retry lands here as -1).
	code, payload, _, err := r.step(c, deleteServiceScript, id, "delete service",
		[]string{r.kSvc(id), r.kJobs(), r.kInt(id), r.kPend(id), r.kPending()}, id, r.keyTag+"cint:", r.staleArg())
	if err != nil {
		return err
	}
	switch code {
	case -1:
		return notFoundf("_id: no service %q", id)
	case -2:
		return conflictf("_id: service %q still has instances", id)
	}
	var m serviceMeta
	s, _ := payload.(string)
	_ = json.Unmarshal([]byte(s), &m)
	writeJSON(ctx, 200, map[string]string{"_id": id, "job_name": m.JobName})
	return nil
}

// ---- instances ----

type instanceAnswer struct {
	JobName string `json:"job_name"`
	nodeclient.Instance
}

func (r *Root) deployInstance(ctx *fasthttp.RequestCtx, _ []string) error {
	var in struct {
		ID        *string `json:"_id"`
		N         *int    `json:"instance_number"`
		ClusterID *string `json:"cluster_id"`
	}
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	switch {
	case in.ID == nil:
		return badf("missing_field", "_id: missing")
	case in.N == nil:
		return badf("missing_field", "instance_number: missing")
	case in.ClusterID == nil:
		return badf("missing_field", "cluster_id: missing")
	}
	if err := validID("_id", *in.ID); err != nil {
		return err
	}
	if err := validID("cluster_id", *in.ClusterID); err != nil {
		return err
	}
	if *in.N < 0 {
		return badf("bad_instance_number", "instance_number: %d is negative", *in.N)
	}
	id, n, cid := *in.ID, *in.N, *in.ClusterID
	c, cancel := r.ctx(ctx)
	defer cancel()

	field := "i:" + strconv.Itoa(n)
	keys := []string{r.kSvc(id), r.kInt(id), r.kClusters(), r.kPend(id), r.kPending(), r.kHosts(id), r.kHostChanges(id), r.kRehost()}
	code, payload, clusters, err := r.step(c, prepareInstanceScript, id, "deploy instance: prepare", keys,
		id, field, cid, newOwner(instOwnerBase(id, n)), r.staleArg())
	if err != nil {
		return err
	}
	switch code {
	case -1:
		return notFoundf("_id: no service %q", id)
	case -2:
		return notFoundf("cluster_id: %q is not registered", cid)
	case 0, 1:
		return r.answerInstance(ctx, c, id, n, code == 1, payload, clusters)
	}
	owner, _ := payload.(string)
	pairs, err := r.alloc.Alloc(c, []ipam.Request{{Owner: owner, Kind: ipam.KindInstance}})
	if err != nil {
		return r.afterAllocErr(c, id, []string{field}, []string{owner},
			fmt.Errorf("deploy instance: allocate instance IPs: %w", err))
	}
	inst := storedInstance{Owner: owner, Instance: nodeclient.Instance{InstanceNumber: n,
		InstanceIP: pairs[0].V4.String(), InstanceIPv6: pairs[0].V6.String(), ClusterID: cid}}
	ib, _ := json.Marshal(inst)
	// A failure here leaves the intent: a retry gets the same addresses, the
	// sweep frees them if none comes.
	code, payload, clusters, err = r.step(c, commitInstanceScript, id, "deploy instance: store", keys, id, field, owner, ib, cid)
	if err != nil {
		return err
	}
	switch code {
	case -1:
		return notFoundf("_id: no service %q", id)
	case -3:
		return fmt.Errorf("deploy instance: addresses reclaimed while the request stalled, retry: %w", ErrUnavailable)
	}
	return r.answerInstance(ctx, c, id, n, code == 1, payload, clusters)
}

// answerInstance answers a deploy with the stored instance (payload:
// instance and service meta JSON, and whether the clusters hosting the
// service changed), notifying the interested clusters when it changed.
func (r *Root) answerInstance(ctx *fasthttp.RequestCtx, c context.Context, id string, n int, changed bool, payload any, clusters []any) error {
	pl, _ := payload.([]any)
	if len(pl) < 2 {
		return fmt.Errorf("deploy instance: script payload of %d values", len(pl))
	}
	if len(pl) > 2 && pl[2] == int64(1) {
		r.rehost(c, id)
	}
	is, _ := pl[0].(string)
	ms, _ := pl[1].(string)
	var inst nodeclient.Instance
	if err := json.Unmarshal([]byte(is), &inst); err != nil {
		return fmt.Errorf("deploy instance: stored instance: %w", err)
	}
	var m serviceMeta
	_ = json.Unmarshal([]byte(ms), &m)
	if changed {
		r.notifyClusters(clusters, m.JobName, n, "DEPLOYMENT")
	}
	writeJSON(ctx, 200, instanceAnswer{JobName: m.JobName, Instance: inst})
	return nil
}

func (r *Root) deleteInstance(ctx *fasthttp.RequestCtx, p []string) error {
	id, ns := p[0], p[1]
	if err := validID("_id", id); err != nil {
		return err
	}
	n, err := strconv.Atoi(ns)
	if err != nil || n < -1 {
		return badf("bad_instance_number", "instance_number: %q is not an integer >= -1", ns)
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	res, err := deleteInstancesScript.Run(c, r.rdb, []string{r.kSvc(id), r.kInt(id), r.kClusters(), r.kPend(id), r.kPending(),
		r.kHosts(id), r.kHostChanges(id), r.kRehost()},
		id, strconv.Itoa(n), r.staleArg()).Slice()
	if err != nil {
		return redisErr("delete instance", err)
	}
	code, payload, frees, clusters, err := scriptReply(res)
	if err != nil {
		return fmt.Errorf("delete instance: %w", err)
	}
	var m serviceMeta
	var removed []int
	if code == 1 {
		pl, _ := payload.([]any)
		if len(pl) < 2 {
			return fmt.Errorf("delete instance: script payload of %d values", len(pl))
		}
		if len(pl) > 2 && pl[2] == int64(1) {
			r.rehost(c, id)
		}
		s, _ := pl[0].(string)
		_ = json.Unmarshal([]byte(s), &m)
		nums, _ := pl[1].([]any)
		for _, v := range nums {
			s, _ := v.(string)
			k, _ := strconv.Atoi(s)
			removed = append(removed, k)
		}
		slices.Sort(removed)
		// The records are gone whatever happens to the release below:
		// clusters hear of it now.
		for _, k := range removed {
			r.notifyClusters(clusters, m.JobName, k, "UNDEPLOYMENT")
		}
	}
	// The removed instances' addresses, and whatever an earlier attempt
	// failed to free (its retry finds nothing left to remove).
	if err := r.finish(c, id, frees); err != nil {
		return fmt.Errorf("delete instance: %w", err)
	}
	switch code {
	case -1:
		return notFoundf("_id: no service %q", id)
	case -2:
		return notFoundf("instance_number: service %q has no instance %d", id, n)
	}
	if removed == nil {
		removed = []int{}
	}
	writeJSON(ctx, 200, map[string]any{"_id": id, "job_name": m.JobName, "removed": removed})
	return nil
}

type statusIn struct {
	InstanceNumber *int    `json:"instance_number"`
	NamespaceIP    *string `json:"namespace_ip"`
	NamespaceIPv6  *string `json:"namespace_ip_v6"`
	HostIP         *string `json:"host_ip"`
	HostPort       *int    `json:"host_port"`
}

func (r *Root) inWorkerRange(a netip.Addr) bool {
	if a.Is4() {
		return a.Compare(r.workerV4Lo) >= 0 && a.Compare(r.workerV4Hi) <= 0
	}
	return a.Compare(r.workerV6Lo) >= 0 && a.Compare(r.workerV6Hi) <= 0
}

func (r *Root) netDeployStatus(ctx *fasthttp.RequestCtx, _ []string) error {
	return r.deployStatus(ctx, false)
}

// netUndeployStatus is Oakwire's extension: the instance stopped at the
// given host; clear its location if it is still there (a migration may
// already have moved it).
func (r *Root) netUndeployStatus(ctx *fasthttp.RequestCtx, _ []string) error {
	return r.deployStatus(ctx, true)
}

func (r *Root) deployStatus(ctx *fasthttp.RequestCtx, undeploy bool) error {
	var in struct {
		JobID     *string    `json:"job_id"`
		Instances []statusIn `json:"instances"`
	}
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	if in.JobID == nil {
		return badf("missing_field", "job_id: missing")
	}
	if err := validID("job_id", *in.JobID); err != nil {
		return err
	}
	if len(in.Instances) == 0 {
		return badf("missing_field", "instances: missing or empty")
	}
	var args []any
	seen := map[int]bool{}
	for i, s := range in.Instances {
		f := func(name string) string { return fmt.Sprintf("instances[%d].%s", i, name) }
		if s.InstanceNumber == nil {
			return badf("missing_field", "%s: missing", f("instance_number"))
		}
		if *s.InstanceNumber < 0 {
			return badf("bad_instance_number", "%s: %d is negative", f("instance_number"), *s.InstanceNumber)
		}
		if seen[*s.InstanceNumber] {
			return badf("duplicate", "%s: %d listed twice", f("instance_number"), *s.InstanceNumber)
		}
		seen[*s.InstanceNumber] = true
		if s.HostIP == nil || *s.HostIP == "" {
			return badf("missing_field", "%s: missing", f("host_ip"))
		}
		hip, err := parseAddr(f("host_ip"), *s.HostIP, 0)
		if err != nil {
			return err
		}
		if s.HostPort == nil {
			return badf("missing_field", "%s: missing", f("host_port"))
		}
		if *s.HostPort < 1 || *s.HostPort > 65535 {
			return badf("bad_port", "%s: %d not in 1..65535", f("host_port"), *s.HostPort)
		}
		field := "i:" + strconv.Itoa(*s.InstanceNumber)
		if undeploy {
			args = append(args, field, hip.String(), strconv.Itoa(*s.HostPort))
			continue
		}
		if s.NamespaceIP == nil || *s.NamespaceIP == "" {
			return badf("missing_field", "%s: missing", f("namespace_ip"))
		}
		ns4, err := parseAddr(f("namespace_ip"), *s.NamespaceIP, 4)
		if err != nil {
			return err
		}
		if !r.inWorkerRange(ns4) {
			return badf("out_of_pool", "%s: %s outside the worker subnets %s–%s", f("namespace_ip"), ns4, r.workerV4Lo, r.workerV4Hi)
		}
		ns6s := ""
		if s.NamespaceIPv6 != nil && *s.NamespaceIPv6 != "" {
			ns6, err := parseAddr(f("namespace_ip_v6"), *s.NamespaceIPv6, 6)
			if err != nil {
				return err
			}
			if !r.inWorkerRange(ns6) {
				return badf("out_of_pool", "%s: %s outside the worker subnets %s–%s", f("namespace_ip_v6"), ns6, r.workerV6Lo, r.workerV6Hi)
			}
			ns6s = ns6.String()
		}
		args = append(args, field, ns4.String(), ns6s, hip.String(), strconv.Itoa(*s.HostPort))
	}
	id := *in.JobID
	c, cancel := r.ctx(ctx)
	defer cancel()
	meta, err := r.rdb.HGet(c, r.kSvc(id), "meta").Result()
	if errors.Is(err, redis.Nil) {
		return notFoundf("job_id: no service %q", id)
	} else if err != nil {
		return redisErr("deploy status: read", err)
	}
	var m serviceMeta
	_ = json.Unmarshal([]byte(meta), &m)
	script := deployStatusScript
	if undeploy {
		script = undeployStatusScript
	}
	res, err := script.Run(c, r.rdb, []string{r.kSvc(id), r.kInt(id), r.kClusters()}, args...).Slice()
	if err != nil {
		return redisErr("deploy status: store", err)
	}
	switch res[0].(int64) {
	case -1:
		return notFoundf("job_id: no service %q", id)
	case -2:
		return notFoundf("instances: service %q has no instance %s", id, strings.TrimPrefix(res[1].(string), "i:"))
	}
	if res[0].(int64) > 0 {
		typ := "DEPLOYMENT"
		if undeploy {
			typ = "UNDEPLOYMENT"
		}
		for _, s := range in.Instances {
			r.notifyClusters(res[1:], m.JobName, *s.InstanceNumber, typ)
		}
	}
	writeJSON(ctx, 200, map[string]any{"job_id": id, "job_name": m.JobName, "updated": res[0]})
	return nil
}

func (r *Root) notifyClusters(clusters []any, job string, n int, typ string) {
	for _, c := range clusters {
		var ci clusterInfo
		if err := json.Unmarshal([]byte(c.(string)), &ci); err != nil {
			continue
		}
		r.notify.enqueue(ci, jobUpdate{JobName: job, InstanceNumber: n, Type: typ}.notice())
	}
}

// ---- lookups and interests ----

func (r *Root) serviceByJob(ctx *fasthttp.RequestCtx, p []string) error {
	job, err := normJob("job_name", p[0])
	if err != nil {
		return err
	}
	cid, err := r.clusterParam(ctx)
	if err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	res, err := resolveJobScript.Run(c, r.rdb, []string{r.kJobs(), r.kClusters()}, job, cid, r.keyTag).Slice()
	if err != nil {
		return redisErr("get service", err)
	}
	switch res[0].(int64) {
	case -1:
		return notFoundf("job_name: no service %s", job)
	case -2:
		return notFoundf("cluster_id: %q is not registered", cid)
	}
	r.sendHints(res[2:])
	e, err := entryFromFields(res[1].([]any))
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, e)
	return nil
}

func (r *Root) serviceByIP(ctx *fasthttp.RequestCtx, p []string) error {
	a, err := parseAddr("ip", p[0], 0)
	if err != nil {
		return err
	}
	if a.Is4() && !r.cfg.IPAM.ServiceV4.Contains(a) || a.Is6() && !r.cfg.IPAM.ServiceV6Base.Contains(a) {
		return badf("out_of_pool", "ip: %s is not in the service pools %s, %s", a, r.cfg.IPAM.ServiceV4, r.cfg.IPAM.ServiceV6Base)
	}
	cid, err := r.clusterParam(ctx)
	if err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	owner, err := r.alloc.Owner(c, a)
	if err != nil {
		if errors.Is(err, ipam.ErrNotFound) {
			return notFoundf("ip: %s belongs to no service or instance", a)
		}
		return fmt.Errorf("get service by ip: %w", err)
	}
	// owners are svc/<id>/<policy>[/<gen>] or inst/<id>/<n>[/<gen>]
	parts := strings.Split(owner, "/")
	if len(parts) < 3 {
		return notFoundf("ip: %s belongs to no service or instance", a)
	}
	return r.answerService(ctx, c, parts[1], cid, fmt.Sprintf("ip: %s belongs to no service or instance", a))
}

func (r *Root) clusterParam(ctx *fasthttp.RequestCtx) (string, error) {
	cid := string(ctx.QueryArgs().Peek("cluster_id"))
	if cid == "" {
		return "", nil
	}
	return cid, validID("cluster_id", cid)
}

// answerService writes the service entry of id, registering cid's interest
// when cid is set.
func (r *Root) answerService(ctx *fasthttp.RequestCtx, c context.Context, id, cid, notFound string) error {
	var fields []any
	if cid == "" {
		m, err := r.rdb.HGetAll(c, r.kSvc(id)).Result()
		if err != nil {
			return redisErr("get service", err)
		}
		if m["meta"] == "" {
			return notFoundf("%s", notFound)
		}
		for k, v := range m {
			fields = append(fields, k, v)
		}
	} else {
		res, err := getServiceScript.Run(c, r.rdb, []string{r.kSvc(id), r.kInt(id), r.kCint(cid), r.kClusters()}, id, cid, r.keyTag).Slice()
		if err != nil {
			return redisErr("get service", err)
		}
		switch res[0].(int64) {
		case -1:
			return notFoundf("%s", notFound)
		case -2:
			return notFoundf("cluster_id: %q is not registered", cid)
		}
		r.sendHints(res[2:])
		fields = res[1].([]any)
	}
	e, err := entryFromFields(fields)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, e)
	return nil
}

// entryFromFields builds a service entry from the service hash (field,
// value, field, value…).
func entryFromFields(fields []any) (nodeclient.ServiceEntry, error) {
	var e nodeclient.ServiceEntry
	e.InstanceList = []nodeclient.Instance{}
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
		var inst nodeclient.Instance
		if err := json.Unmarshal([]byte(v), &inst); err != nil {
			return e, fmt.Errorf("service entry: %s: %w", k, err)
		}
		e.InstanceList = append(e.InstanceList, inst)
	}
	slices.SortFunc(e.InstanceList, func(a, b nodeclient.Instance) int { return a.InstanceNumber - b.InstanceNumber })
	return e, nil
}

func (r *Root) dropInterest(ctx *fasthttp.RequestCtx, p []string) error {
	job, err := normJob("job_name", p[0])
	if err != nil {
		return err
	}
	cid, err := r.clusterParam(ctx)
	if err != nil {
		return err
	}
	if cid == "" {
		return badf("missing_field", "cluster_id: missing query parameter")
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	id, err := r.rdb.HGet(c, r.kJobs(), job).Result()
	if errors.Is(err, redis.Nil) {
		return notFoundf("job_name: no service %s", job)
	} else if err != nil {
		return redisErr("drop interest", err)
	}
	hints, err := dropInterestScript.Run(c, r.rdb, []string{r.kInt(id), r.kCint(cid)}, r.keyTag, id, cid).Slice()
	if err != nil {
		return redisErr("drop interest", err)
	}
	r.sendHints(hints)
	writeJSON(ctx, 200, map[string]string{"job_name": job, "cluster_id": cid})
	return nil
}

// ---- subnets and preview ----

type subnetAnswer struct {
	NodeID       string `json:"node_id"`
	SubnetAddr   string `json:"subnet_addr"`
	SubnetAddrV6 string `json:"subnet_addr_v6"`
	Subnet       string `json:"subnet"`
	SubnetV6     string `json:"subnet_v6"`
}

func (r *Root) allocSubnet(ctx *fasthttp.RequestCtx, _ []string) error {
	node := string(ctx.QueryArgs().Peek("node_id"))
	if node == "" {
		// Not idempotent without a node id (Oakestra's behaviour); the
		// answer names the generated id so the subnets can be freed.
		var b [8]byte
		_, _ = rand.Read(b[:])
		node = "anon-" + hex.EncodeToString(b[:])
	} else if err := validID("node_id", node); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	sp, err := r.alloc.AllocSubnet(c, node)
	if err != nil {
		return fmt.Errorf("allocate subnet: %w", err)
	}
	writeJSON(ctx, 200, subnetAnswer{NodeID: node, SubnetAddr: sp.V4.Addr().String(), SubnetAddrV6: sp.V6.Addr().String(),
		Subnet: sp.V4.String(), SubnetV6: sp.V6.String()})
	return nil
}

func (r *Root) releaseSubnet(ctx *fasthttp.RequestCtx, p []string) error {
	node := p[0]
	if err := validID("node_id", node); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	if err := r.alloc.ReleaseSubnet(c, node); err != nil {
		if errors.Is(err, ipam.ErrNotFound) {
			return notFoundf("node_id: %q holds no subnet", node)
		}
		return fmt.Errorf("release subnet: %w", err)
	}
	writeJSON(ctx, 200, map[string]string{"node_id": node})
	return nil
}

func (r *Root) availableIP(ctx *fasthttp.RequestCtx, _ []string) error {
	fam := 4
	switch v := string(ctx.QueryArgs().Peek("v")); v {
	case "", "4":
	case "6":
		fam = 6
	default:
		return badf("bad_param", "v: %q, want 4 or 6", v)
	}
	kind := ipam.Kind(1)
	if k := string(ctx.QueryArgs().Peek("kind")); k != "" {
		pk, registered := policyKind(k)
		switch {
		case k == "instance":
			kind = ipam.KindInstance
		case registered && slices.Contains(r.cfg.Policies, k):
			kind = pk
		default:
			return badf("bad_param", "kind: %q, want instance or one of %v", k, r.cfg.Policies)
		}
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	a, err := r.alloc.Peek(c, kind, fam)
	if err != nil {
		return fmt.Errorf("preview: %w", err)
	}
	writeJSON(ctx, 200, map[string]string{"ip": a.String()})
	return nil
}
