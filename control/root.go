package control

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/policy"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// DefaultPrefix is the default Redis key prefix.
const DefaultPrefix = "oakwire:"

// DefaultTimeout is the default budget of one request's work against
// Redis, root and cluster alike. It keeps a request against a Redis that
// hangs under a second (see RootConfig.Timeout).
const DefaultTimeout = 600 * time.Millisecond

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

// RootConfig configures the root service manager. It is read once by
// NewRoot (an immutable snapshot).
type RootConfig struct {
	// Prefix starts every Redis key (default DefaultPrefix). It may not
	// contain '{' or '}' (the hash tags are ours).
	Prefix string
	// Token is the bearer token of every role (OAKWIRE_TOKEN); RoleTokens
	// narrow roles to their own tokens (auth.go). The cluster role's token
	// goes with the notifications to clusters. None set: no auth.
	Token      string
	RoleTokens Tokens
	// MetricsOpen serves /metrics without a token; otherwise it takes a
	// token of any role (when auth is on).
	MetricsOpen bool
	// Policies are the names of the balancing policies that get service
	// IPs, in the order of service_ip_list (default DefaultPolicies). Each
	// gets one v4+v6 service IP per service, from its kind's range
	// whatever this list holds.
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
	if _, err := c.policyIDs(); err != nil {
		return fmt.Errorf("root config: policies: %w", err)
	}
	if err := c.IPAM.Validate(); err != nil {
		return fmt.Errorf("root config: %w", err)
	}
	if err := c.tokens().Validate(); err != nil {
		return fmt.Errorf("root config: %w", err)
	}
	return nil
}

// tokens is Token and RoleTokens together.
func (c *RootConfig) tokens() Tokens {
	t := c.RoleTokens
	if t.All == "" {
		t.All = c.Token
	}
	return t
}

// policyIDs are the configured policies: each named as the policy spells
// its name, once, and of a kind the address plan has.
func (c *RootConfig) policyIDs() ([]policy.ID, error) {
	if len(c.Policies) == 0 || len(c.Policies) >= ipam.MaxKinds {
		return nil, fmt.Errorf("want 1..%d, have %d", ipam.MaxKinds-1, len(c.Policies))
	}
	var ids []policy.ID
	for _, p := range c.Policies {
		id, ok := policy.Parse(p)
		switch {
		case !api.ValidPart(p) || slices.Contains(ids, id):
			return nil, fmt.Errorf("%q: empty, not alphanumeric or repeated", p)
		case !ok || id.String() != p || int(id) >= ipam.MaxKinds:
			return nil, fmt.Errorf("%q: not a policy (have %v)", p, DefaultPolicies())
		}
		ids = append(ids, id)
	}
	return ids, nil
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

// Root is the root service manager (SPEC §5). Its handlers are in
// rootclusters.go, rootservices.go, rootinstances.go, rootpools.go and
// rootpeers.go; its state is rootStore's.
type Root struct {
	*server
	cfg      RootConfig
	policies []policy.ID // cfg.Policies
	store    *rootStore
	notify   *notifier
	stop     context.CancelFunc // ends the sweeper
	wg       sync.WaitGroup     // the sweeper
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
		server: newServer(cfg.Log, rdb, cfg.tokens(), cfg.MetricsOpen),
		cfg:    cfg,
		store:  &rootStore{rdb: rdb, alloc: alloc, tag: cfg.Prefix + "{r}:", staleAfter: cfg.staleAfter},
	}
	r.policies, _ = cfg.policyIDs()
	first, _ := cfg.IPAM.SubnetAt(0)
	last, _ := cfg.IPAM.SubnetAt(cfg.IPAM.WorkerCount - 1)
	r.workerV4Lo, r.workerV6Lo = first.V4.Addr(), first.V6.Addr()
	r.workerV4Hi, r.workerV6Hi = lastAddr(last.V4), lastAddr(last.V6)
	r.notify = newNotifier(cfg.Notify, cfg.tokens().For(RoleCluster), cfg.Log, r.reg)
	sctx, stop := context.WithCancel(context.Background())
	r.stop = stop
	if cfg.Sweep > 0 {
		r.wg.Add(1)
		go r.sweeper(sctx, cfg.Sweep)
	}

	r.handle("POST /api/net/cluster", RoleOrchestrator|RoleCluster, r.registerCluster) // Oakwire clusters register themselves
	r.handle("DELETE /api/net/cluster/:cid", RoleOrchestrator, r.deleteCluster)
	r.handle("PUT /api/net/cluster/:cid/nodes", RoleCluster, r.putNodes)
	r.handle("PUT /api/net/cluster/:cid/nodes/:node", RoleCluster, r.putNode)
	r.handle("DELETE /api/net/cluster/:cid/nodes/:node", RoleCluster, r.deleteNode)
	r.handle("GET /api/net/cluster/:cid/peers", RoleCluster, r.peers)
	r.handle("POST /api/net/service/deploy", RoleOrchestrator, r.deployService)
	r.handle("POST /api/net/service/net_deploy_status", RoleCluster, r.netDeployStatus)
	r.handle("POST /api/net/service/net_undeploy_status", RoleCluster, r.netUndeployStatus)
	r.handle("GET /api/net/service/ip/:ip/instances", RoleOrchestrator|RoleCluster, r.serviceByIP)
	r.handle("GET /api/net/service/:job/instances", RoleOrchestrator|RoleCluster, r.serviceByJob)
	r.handle("DELETE /api/net/service/:id", RoleOrchestrator, r.deleteService)
	r.handle("POST /api/net/instance/deploy", RoleOrchestrator, r.deployInstance)
	r.handle("DELETE /api/net/interest/:job", RoleCluster, r.dropInterest)
	r.handle("GET /api/net/subnet", RoleCluster, r.allocSubnet)
	r.handle("DELETE /api/net/subnet/:node", RoleCluster, r.releaseSubnet)
	r.handle("GET /api/pubnet/service/netinfo/available-ip", RoleOrchestrator|RoleCluster, r.availableIP)
	r.handle("GET /api/pubnet/service/netinfo/available-ip/:x", RoleOrchestrator|RoleCluster, r.availableIPs)
	r.handle("GET /api/pubnet/service/netinfo/ip/:ip", RoleOrchestrator|RoleCluster, r.netinfoByIP)
	r.handle("GET /api/pubnet/service/netinfo/:name", RoleOrchestrator|RoleCluster, r.netinfoByName)
	r.handle("DELETE /api/net/:id/:n", RoleOrchestrator, r.deleteInstance)
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

func (r *Root) ctx(ctx *fasthttp.RequestCtx) (context.Context, context.CancelFunc) {
	return context.WithTimeout(detach(ctx, context.Background()), r.cfg.Timeout)
}

// notifyClusters tells each cluster in to of a change of instance n of
// job (typ: api.TypeDeployment or api.TypeUndeployment).
func (r *Root) notifyClusters(to []api.Cluster, job string, n int, typ string) {
	for _, ci := range to {
		r.notify.enqueue(ci, jobNotice(api.JobUpdate{JobName: job, InstanceNumber: n, Type: typ}))
	}
}
