package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// ClusterConfig configures a cluster service manager (an immutable
// snapshot read by NewCluster).
type ClusterConfig struct {
	Prefix string // Redis key prefix (default DefaultPrefix), no { }
	// Token is the bearer token of every role (OAKWIRE_TOKEN), ours and
	// root's; RoleTokens narrow roles to their own (auth.go): the cluster
	// role's token is what root sends us and we send root. None: no auth.
	Token      string
	RoleTokens Tokens
	// MetricsOpen serves /metrics without a token.
	MetricsOpen bool
	ClusterID   string // required
	RootURL     string // required: root service manager, host:port or URL
	// Advertise is the address root uses to reach this cluster
	// ("host:port" or URL). Empty: not registered with root (Start).
	Advertise string
	// WatchRetention is how many changes each node's stream keeps; a node
	// further behind re-syncs (default 1000).
	WatchRetention int
	// WatchPoll is the fallback re-check period of a waiting watch, should
	// a wake-up message be lost (default 250 ms).
	WatchPoll time.Duration
	// MaxWatch caps a watch's wait (default 60 s).
	MaxWatch time.Duration
	// Refresh is the period of re-fetching every cached service from root,
	// repairing missed notifications (default 30 s; negative: never).
	Refresh time.Duration
	// PeerSync is the period of the full peer sync with root: this
	// cluster's node endpoints up, the endpoints of the linked clusters
	// down, repairing missed hints (default 5 min; negative: only at
	// start). Root's hints carry every change within the second.
	PeerSync time.Duration
	// Timeout bounds Redis work per request (default DefaultTimeout: a
	// Redis that hangs gives 503 within a second); RootTimeout one call to
	// root (default 3 s).
	Timeout, RootTimeout time.Duration
	Log                  *slog.Logger
}

func (c ClusterConfig) withDefaults() ClusterConfig {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.WatchRetention <= 0 {
		c.WatchRetention = 1000
	}
	if c.WatchPoll <= 0 {
		c.WatchPoll = 250 * time.Millisecond
	}
	if c.MaxWatch <= 0 {
		c.MaxWatch = 60 * time.Second
	}
	if c.Refresh == 0 {
		c.Refresh = 30 * time.Second
	}
	if c.PeerSync == 0 {
		c.PeerSync = 5 * time.Minute
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.RootTimeout <= 0 {
		c.RootTimeout = 3 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}

// Validate checks the configuration after defaults.
func (c *ClusterConfig) Validate() error {
	if strings.ContainsAny(c.Prefix, "{}") {
		return fmt.Errorf("cluster config: prefix %q: may not contain { or }", c.Prefix)
	}
	if err := validID("cluster-id", c.ClusterID); err != nil {
		return fmt.Errorf("cluster config: %w", err)
	}
	if c.RootURL == "" {
		return errors.New("cluster config: root: missing")
	}
	if err := c.tokens().Validate(); err != nil {
		return fmt.Errorf("cluster config: %w", err)
	}
	return nil
}

// tokens is Token and RoleTokens together.
func (c *ClusterConfig) tokens() Tokens {
	t := c.RoleTokens
	if t.All == "" {
		t.All = c.Token
	}
	return t
}

// Cluster is a cluster service manager (SPEC §6): Oakestra's cluster
// endpoints plus the node-facing API under /api/node/. Its handlers are
// in clusterservices.go, clusternodes.go, clusterwatch.go and
// clusterpeers.go; its state is clusterStore's.
type Cluster struct {
	*server
	cfg   ClusterConfig
	root  *rootClient
	store *clusterStore

	mu      sync.Mutex // guards waiters
	waiters map[string]chan struct{}

	// peerUpdates counts the changes of the peers held of other clusters
	// by how they came: a root delta, a fetch, or a view refused as older.
	peerUpdates *prometheus.CounterVec

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewCluster returns a cluster service manager over rdb. Start runs its
// background work; Close stops it.
func NewCluster(cfg ClusterConfig, rdb redis.UniversalClient) (*Cluster, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	tag := cfg.Prefix + "{c:" + cfg.ClusterID + "}:"
	c := &Cluster{
		server: newServer(cfg.Log, rdb, cfg.tokens(), cfg.MetricsOpen),
		cfg:    cfg,
		root:   newRootClient(cfg.RootURL, cfg.tokens().For(RoleCluster), cfg.RootTimeout),
		store: &clusterStore{rdb: rdb, tag: tag, wakeC: tag + "wake", retention: cfg.WatchRetention,
			clusterID: cfg.ClusterID},
		waiters: map[string]chan struct{}{},
		ctx:     ctx,
		cancel:  cancel,
	}
	c.peerUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "oakwire_cluster_peer_updates_total",
		Help: "Updates of the peers held of linked clusters: delta (root's change applied), fetch (fetched from root), stale (an answer older than the view held, fetched again)."},
		[]string{"kind"})
	c.reg.MustRegister(c.peerUpdates)

	c.handle("POST /api/net/deployment", RoleOrchestrator, c.deployment)
	c.handle("DELETE /api/net/deployment/:job", RoleOrchestrator, c.deleteDeployment)
	c.handle("POST /api/net/job/update", RoleCluster, c.jobUpdate)
	c.handle("POST /api/net/peers/update", RoleCluster, c.peersUpdate)
	c.handle("POST /api/node/register", RoleNode, c.registerNode)
	c.handle("GET /api/node/resolve", RoleNode, c.resolve)
	c.handle("POST /api/node/instance/deployed", RoleNode, c.instanceDeployed)
	c.handle("POST /api/node/instance/undeployed", RoleNode, c.instanceUndeployed)
	c.handle("DELETE /api/node/interest/:job", RoleNode, c.dropInterest)
	c.handle("GET /api/node/peers", RoleNode, c.peers)
	c.handle("GET /api/node/watch", RoleNode, c.watch)
	c.handle("DELETE /api/node/:node", RoleNode, c.deleteNode)
	return c, nil
}

// Handler is the fasthttp handler of every cluster endpoint.
func (c *Cluster) Handler() fasthttp.RequestHandler { return c.serve }

// Start subscribes to wake-ups, registers the cluster with root (retrying
// in the background until it succeeds, then syncing peers with it) and
// starts the periodic refresh and peer sync.
func (c *Cluster) Start() {
	c.wg.Add(2)
	go c.subscribe()
	go func() {
		defer c.wg.Done()
		c.registerWithRoot()
		c.peerSyncer()
	}()
	if c.cfg.Refresh > 0 {
		c.wg.Add(1)
		go c.refresher()
	}
}

// Close stops background work and wakes every waiting watch.
func (c *Cluster) Close() error {
	c.cancel()
	c.mu.Lock()
	for n, ch := range c.waiters {
		close(ch)
		delete(c.waiters, n)
	}
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

func (c *Cluster) rctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(detach(ctx, c.ctx), c.cfg.Timeout)
}

func (c *Cluster) registerWithRoot() {
	if c.cfg.Advertise == "" {
		return
	}
	host, port, err := splitAdvertise(c.cfg.Advertise)
	if err != nil {
		c.log.Error("advertise address", "err", err)
		return
	}
	ci := api.Cluster{ClusterID: c.cfg.ClusterID, ClusterAddress: host, ClusterPort: api.Int(port)}
	backoff := 200 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.RootTimeout)
		err := c.root.registerCluster(ctx, ci)
		cancel()
		if err == nil {
			c.log.Info("registered with root", "cluster", ci.ClusterID, "address", c.cfg.Advertise)
			return
		}
		c.log.Warn("register with root; retrying", "err", err, "in", backoff)
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func splitAdvertise(a string) (string, int, error) {
	if i := strings.Index(a, "://"); i >= 0 {
		a = a[i+3:]
	}
	a = strings.TrimRight(a, "/")
	ap, err := netip.ParseAddrPort(a)
	if err == nil {
		return ap.Addr().String(), int(ap.Port()), nil
	}
	i := strings.LastIndexByte(a, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("advertise %q: want host:port", a)
	}
	p, err := strconv.Atoi(a[i+1:])
	if err != nil || p < 1 || p > 65535 {
		return "", 0, fmt.Errorf("advertise %q: bad port", a)
	}
	return a[:i], p, nil
}

// subscribe wakes local watches when any replica pushed to their node.
// Lost messages (Redis down) only delay delivery to the next poll.
func (c *Cluster) subscribe() {
	defer c.wg.Done()
	for c.ctx.Err() == nil {
		ps := c.rdb.Subscribe(c.ctx, c.store.wakeC)
		stop := context.AfterFunc(c.ctx, func() { _ = ps.Close() })
		for msg := range ps.Channel() {
			for _, n := range strings.Split(msg.Payload, ",") {
				c.wake(n)
			}
		}
		stop()
		_ = ps.Close()
		select {
		case <-c.ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *Cluster) refresher() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := c.rctx(c.ctx)
		jobs, err := c.store.cachedJobs(ctx)
		cancel()
		if err != nil {
			continue
		}
		for _, j := range jobs {
			if _, err := c.refresh(c.ctx, j); err != nil && !errors.Is(err, api.ErrNotFound) {
				c.log.Debug("refresh", "job", j, "err", err)
			}
		}
	}
}

// waitCh returns the channel closed at the node's next wake-up.
func (c *Cluster) waitCh(node string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.waiters[node]
	if ch == nil {
		ch = make(chan struct{})
		if c.ctx.Err() != nil {
			close(ch)
			return ch
		}
		c.waiters[node] = ch
	}
	return ch
}

func (c *Cluster) wake(node string) {
	c.mu.Lock()
	ch := c.waiters[node]
	delete(c.waiters, node)
	c.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

func (c *Cluster) wakeAll(nodes []string) {
	for _, n := range nodes {
		c.wake(n)
	}
}
