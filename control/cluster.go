package control

import (
	"cmp"
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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// ClusterConfig configures a cluster service manager (an immutable
// snapshot read by NewCluster).
type ClusterConfig struct {
	Prefix    string // Redis key prefix (default DefaultPrefix), no { }
	Token     string // bearer token, ours and root's; empty: no auth
	ClusterID string // required
	RootURL   string // required: root service manager, host:port or URL
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
	return nil
}

// Cluster is a cluster service manager (SPEC §6): Oakestra's cluster
// endpoints plus the node-facing API under /api/node/.
type Cluster struct {
	*api
	cfg   ClusterConfig
	root  *rootClient
	tag   string // prefix{c:<id>}:
	wakeC string // pub/sub channel of node wake-ups

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
	c := &Cluster{
		api:     newAPI(cfg.Log, rdb, cfg.Token),
		cfg:     cfg,
		root:    newRootClient(cfg.RootURL, cfg.Token, cfg.RootTimeout),
		tag:     cfg.Prefix + "{c:" + cfg.ClusterID + "}:",
		waiters: map[string]chan struct{}{},
		ctx:     ctx,
		cancel:  cancel,
	}
	c.wakeC = c.tag + "wake"
	c.peerUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "oakwire_cluster_peer_updates_total",
		Help: "Updates of the peers held of linked clusters: delta (root's change applied), fetch (fetched from root), stale (an answer older than the view held, fetched again)."},
		[]string{"kind"})
	c.reg.MustRegister(c.peerUpdates)

	c.handle("POST /api/net/deployment", c.deployment)
	c.handle("DELETE /api/net/deployment/:job", c.deleteDeployment)
	c.handle("POST /api/net/job/update", c.jobUpdate)
	c.handle("POST /api/net/peers/update", c.peersUpdate)
	c.handle("POST /api/node/register", c.registerNode)
	c.handle("GET /api/node/resolve", c.resolve)
	c.handle("POST /api/node/instance/deployed", c.instanceDeployed)
	c.handle("POST /api/node/instance/undeployed", c.instanceUndeployed)
	c.handle("DELETE /api/node/interest/:job", c.dropInterest)
	c.handle("GET /api/node/peers", c.peers)
	c.handle("GET /api/node/watch", c.watch)
	c.handle("DELETE /api/node/:node", c.deleteNode)
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

func (c *Cluster) kNodes() string             { return c.tag + "nodes" }
func (c *Cluster) kCache(job string) string   { return c.tag + "cache:" + job }
func (c *Cluster) kIPIdx() string             { return c.tag + "ipidx" }
func (c *Cluster) kJint(job string) string    { return c.tag + "jint:" + job }
func (c *Cluster) kNint(node string) string   { return c.tag + "nint:" + node }
func (c *Cluster) kNseq(node string) string   { return c.tag + "nseq:" + node }
func (c *Cluster) kStream(node string) string { return c.tag + "nstream:" + node }
func (c *Cluster) kJobs() string              { return c.tag + "jobs" }

func (c *Cluster) pushArgs(rest ...any) []any {
	return append([]any{c.tag, c.cfg.WatchRetention, c.wakeC}, rest...)
}

// ---- background ----

func (c *Cluster) registerWithRoot() {
	if c.cfg.Advertise == "" {
		return
	}
	host, port, err := splitAdvertise(c.cfg.Advertise)
	if err != nil {
		c.log.Error("advertise address", "err", err)
		return
	}
	ci := clusterInfo{ClusterID: c.cfg.ClusterID, ClusterAddress: host, ClusterPort: port}
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
		ps := c.rdb.Subscribe(c.ctx, c.wakeC)
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
		jobs, err := c.rdb.SMembers(ctx, c.kJobs()).Result()
		cancel()
		if err != nil {
			continue
		}
		for _, j := range jobs {
			if _, err := c.refresh(c.ctx, j); err != nil && !errors.Is(err, ErrNotFound) {
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

func (c *Cluster) wakeAll(nodes []any) {
	for _, n := range nodes {
		if s, ok := n.(string); ok {
			c.wake(s)
		}
	}
}

// getEpoch returns the epoch of this cluster's Redis state, creating it on
// first use. It is read every time (one round trip, pipelined), so a Redis
// that lost its data gets a new epoch and every watcher re-syncs.
func (c *Cluster) getEpoch(ctx context.Context) (string, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	pipe := c.rdb.Pipeline()
	pipe.SetNX(ctx, c.tag+"epoch", hex.EncodeToString(b[:]), 0)
	get := pipe.Get(ctx, c.tag+"epoch")
	if _, err := pipe.Exec(ctx); err != nil {
		return "", redisErr("epoch", err)
	}
	return get.Val(), nil
}

// ---- cache ----

// store caches e and pushes it to interested nodes.
func (c *Cluster) store(ctx context.Context, e nodeclient.ServiceEntry) error {
	if e.InstanceList == nil {
		e.InstanceList = []nodeclient.Instance{}
	}
	b, _ := json.Marshal(e)
	rc, cancel := c.rctx(ctx)
	defer cancel()
	nodes, err := cacheSetScript.Run(rc, c.rdb, []string{c.kCache(e.JobName), c.kIPIdx(), c.kJint(e.JobName), c.kJobs()},
		c.pushArgs(e.JobName, b)...).Slice()
	if err != nil {
		return redisErr("cache service", err)
	}
	c.wakeAll(nodes)
	return nil
}

func (c *Cluster) remove(ctx context.Context, job string) error {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	nodes, err := cacheRemoveScript.Run(rc, c.rdb, []string{c.kCache(job), c.kIPIdx(), c.kJint(job), c.kJobs()},
		c.pushArgs(job)...).Slice()
	if err != nil {
		return redisErr("uncache service", err)
	}
	c.wakeAll(nodes)
	return nil
}

// refresh fetches job from root (keeping the cluster's interest there) and
// caches it; a service root no longer knows is removed (ErrNotFound).
func (c *Cluster) refresh(ctx context.Context, job string) (nodeclient.ServiceEntry, error) {
	e, err := c.root.serviceByJob(ctx, job, c.cfg.ClusterID)
	if errors.Is(err, ErrNotFound) {
		if rerr := c.remove(ctx, job); rerr != nil {
			return e, rerr
		}
		return e, err
	}
	if err != nil {
		return e, err
	}
	return e, c.store(ctx, e)
}

// cached returns the cached entry of job, fetching it from root if absent.
func (c *Cluster) cached(ctx context.Context, job string) (nodeclient.ServiceEntry, error) {
	rc, cancel := c.rctx(ctx)
	s, err := c.rdb.Get(rc, c.kCache(job)).Result()
	cancel()
	if err == nil {
		var e nodeclient.ServiceEntry
		if err := json.Unmarshal([]byte(s), &e); err != nil {
			return e, fmt.Errorf("cached %s: %w", job, err)
		}
		return e, nil
	}
	if !errors.Is(err, redis.Nil) {
		return nodeclient.ServiceEntry{}, redisErr("read cache", err)
	}
	return c.refresh(ctx, job)
}

// ---- Oakestra-compatible endpoints ----

func (c *Cluster) deployment(ctx *fasthttp.RequestCtx, _ []string) error {
	var in struct {
		JobName *string `json:"job_name"`
	}
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	if in.JobName == nil {
		return badf("missing_field", "job_name: missing")
	}
	job, err := normJob("job_name", *in.JobName)
	if err != nil {
		return err
	}
	e, err := c.refresh(ctx, job)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, e)
	return nil
}

func (c *Cluster) deleteDeployment(ctx *fasthttp.RequestCtx, p []string) error {
	job, err := normJob("job_name", p[0])
	if err != nil {
		return err
	}
	if err := c.remove(ctx, job); err != nil {
		return err
	}
	if err := c.root.dropInterest(ctx, job, c.cfg.ClusterID); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	writeJSON(ctx, 200, map[string]string{"job_name": job})
	return nil
}

func (c *Cluster) jobUpdate(ctx *fasthttp.RequestCtx, _ []string) error {
	var in struct {
		JobName *string `json:"job_name"`
		N       *int    `json:"instance_number"`
		Type    *string `json:"type"`
	}
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	if in.JobName == nil {
		return badf("missing_field", "job_name: missing")
	}
	job, err := normJob("job_name", *in.JobName)
	if err != nil {
		return err
	}
	if in.Type != nil && *in.Type != "DEPLOYMENT" && *in.Type != "UNDEPLOYMENT" {
		return badf("bad_type", "type: %q, want DEPLOYMENT or UNDEPLOYMENT", *in.Type)
	}
	if _, err := c.refresh(ctx, job); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	writeJSON(ctx, 200, map[string]string{"job_name": job})
	return nil
}

// ---- node-facing API ----

type nodeRecord struct {
	NodeID     string               `json:"node_id"`
	NodeIP     string               `json:"node_ip"`
	TunnelPort int                  `json:"tunnel_port"`
	Location   *nodeclient.Location `json:"location,omitempty"`
	Subnet     string               `json:"subnet"`
	SubnetV6   string               `json:"subnet_v6"`
}

// DefaultTunnelPort is the nodes' default UDP tunnel port (SPEC §1).
const DefaultTunnelPort = 50103

func (c *Cluster) registerNode(ctx *fasthttp.RequestCtx, _ []string) error {
	var in struct {
		NodeID     *string `json:"node_id"`
		NodeIP     *string `json:"node_ip"`
		TunnelPort *int    `json:"tunnel_port"`
		Location   *struct {
			Lat  *float64 `json:"lat"`
			Long *float64 `json:"long"`
		} `json:"location"`
	}
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	if in.NodeID == nil {
		return badf("missing_field", "node_id: missing")
	}
	if err := validID("node_id", *in.NodeID); err != nil {
		return err
	}
	if in.NodeIP == nil || *in.NodeIP == "" {
		return badf("missing_field", "node_ip: missing")
	}
	ip, err := parseAddr("node_ip", *in.NodeIP, 0)
	if err != nil {
		return err
	}
	port := DefaultTunnelPort
	if in.TunnelPort != nil && *in.TunnelPort != 0 {
		port = *in.TunnelPort
	}
	if port < 1 || port > 65535 {
		return badf("bad_port", "tunnel_port: %d not in 1..65535", port)
	}
	rec := nodeRecord{NodeID: *in.NodeID, NodeIP: ip.String(), TunnelPort: port}
	if l := in.Location; l != nil {
		if l.Lat == nil || l.Long == nil {
			return badf("missing_field", "location: needs lat and long")
		}
		if *l.Lat < -90 || *l.Lat > 90 || *l.Long < -180 || *l.Long > 180 {
			return badf("bad_location", "location: lat %g / long %g out of range", *l.Lat, *l.Long)
		}
		rec.Location = &nodeclient.Location{Lat: *l.Lat, Long: *l.Long}
	}
	epoch, err := c.epochFor(ctx)
	if err != nil {
		return err
	}
	sn, err := c.root.subnet(ctx, rec.NodeID)
	if err != nil {
		return err
	}
	rec.Subnet, rec.SubnetV6 = sn.Subnet, sn.SubnetV6
	// Root learns the endpoint first, so peers in other clusters may know
	// it by the time the node is told it is registered.
	if err := c.root.putNode(ctx, c.cfg.ClusterID, rec.endpoint()); err != nil {
		return err
	}
	b, _ := json.Marshal(rec)
	rc, cancel := c.rctx(ctx)
	defer cancel()
	ver, err := registerNodeScript.Run(rc, c.rdb, []string{c.kNodes(), c.kNseq(rec.NodeID)},
		c.pushArgs(rec.NodeID, b, rec.NodeIP, rec.TunnelPort, c.cfg.ClusterID)...).Int64()
	if err != nil {
		return redisErr("register node", err)
	}
	peers, err := c.peerList(rc, rec.NodeID)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, nodeclient.RegisterResponse{NodeID: rec.NodeID, SubnetAddr: sn.SubnetAddr, SubnetAddrV6: sn.SubnetAddrV6,
		Subnet: sn.Subnet, SubnetV6: sn.SubnetV6, Peers: peers, Epoch: epoch, Version: uint64(ver)})
	return nil
}

func (c *Cluster) epochFor(ctx context.Context) (string, error) {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	return c.getEpoch(rc)
}

func (c *Cluster) deleteNode(ctx *fasthttp.RequestCtx, p []string) error {
	node := p[0]
	if err := validID("node_id", node); err != nil {
		return err
	}
	if _, err := c.node(ctx, node); err != nil {
		return err
	}
	if err := c.root.releaseSubnet(ctx, node); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	// Other clusters' nodes drop it as a peer (a failure leaves the node
	// registered here, for the caller to retry).
	if err := c.root.deleteNode(ctx, c.cfg.ClusterID, node); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	rc, cancel := c.rctx(ctx)
	defer cancel()
	n, err := deleteNodeScript.Run(rc, c.rdb, []string{c.kNodes(), c.kNint(node), c.kNseq(node), c.kStream(node)},
		c.pushArgs(node, c.cfg.ClusterID)...).Int()
	if err != nil {
		return redisErr("delete node", err)
	}
	if n == 0 {
		return notFoundf("node_id: %q is not registered", node)
	}
	c.wake(node)
	writeJSON(ctx, 200, map[string]string{"node_id": node})
	return nil
}

// node returns the registered node, or ErrNotFound.
func (c *Cluster) node(ctx context.Context, node string) (nodeRecord, error) {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	var rec nodeRecord
	s, err := c.rdb.HGet(rc, c.kNodes(), node).Result()
	if errors.Is(err, redis.Nil) {
		return rec, notFoundf("node_id: %q is not registered", node)
	} else if err != nil {
		return rec, redisErr("read node", err)
	}
	if err := json.Unmarshal([]byte(s), &rec); err != nil {
		return rec, fmt.Errorf("node %s: %w", node, err)
	}
	return rec, nil
}

func (c *Cluster) nodeParam(ctx *fasthttp.RequestCtx) (string, error) {
	node := string(ctx.QueryArgs().Peek("node_id"))
	if node == "" {
		return "", badf("missing_field", "node_id: missing query parameter")
	}
	return node, validID("node_id", node)
}

func (c *Cluster) resolve(ctx *fasthttp.RequestCtx, _ []string) error {
	node, err := c.nodeParam(ctx)
	if err != nil {
		return err
	}
	ipS := string(ctx.QueryArgs().Peek("ip"))
	jobS := string(ctx.QueryArgs().Peek("job"))
	if (ipS == "") == (jobS == "") {
		return badf("missing_field", "ip, job: give exactly one")
	}
	var job string
	var ip netip.Addr
	if jobS != "" {
		if job, err = normJob("job", jobS); err != nil {
			return err
		}
	} else if ip, err = parseAddr("ip", ipS, 0); err != nil {
		return err
	}
	if _, err := c.node(ctx, node); err != nil {
		return err
	}
	if job == "" {
		rc, cancel := c.rctx(ctx)
		j, err := c.rdb.HGet(rc, c.kIPIdx(), ip.String()).Result()
		cancel()
		switch {
		case err == nil:
			job = j
		case errors.Is(err, redis.Nil):
			e, err := c.root.serviceByIP(ctx, ip.String(), c.cfg.ClusterID)
			if err != nil {
				return err
			}
			job = e.JobName
			if err := c.addInterest(ctx, node, job); err != nil {
				return err
			}
			if err := c.store(ctx, e); err != nil {
				return err
			}
			writeJSON(ctx, 200, e)
			return nil
		default:
			return redisErr("resolve ip", err)
		}
	}
	if err := c.addInterest(ctx, node, job); err != nil {
		return err
	}
	e, err := c.cached(ctx, job)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			c.dropLocalInterest(ctx, node, job)
		}
		return err
	}
	writeJSON(ctx, 200, e)
	return nil
}

func (c *Cluster) addInterest(ctx context.Context, node, job string) error {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	pipe := c.rdb.TxPipeline()
	pipe.SAdd(rc, c.kNint(node), job)
	pipe.SAdd(rc, c.kJint(job), node)
	if _, err := pipe.Exec(rc); err != nil {
		return redisErr("add interest", err)
	}
	return nil
}

func (c *Cluster) dropLocalInterest(ctx context.Context, node, job string) {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	_ = dropNodeInterestScript.Run(rc, c.rdb, []string{c.kNint(node), c.kJint(job)}, node, job).Err()
}

func (c *Cluster) dropInterest(ctx *fasthttp.RequestCtx, p []string) error {
	job, err := normJob("job_name", p[0])
	if err != nil {
		return err
	}
	node, err := c.nodeParam(ctx)
	if err != nil {
		return err
	}
	if _, err := c.node(ctx, node); err != nil {
		return err
	}
	rc, cancel := c.rctx(ctx)
	left, err := dropNodeInterestScript.Run(rc, c.rdb, []string{c.kNint(node), c.kJint(job)}, node, job).Int()
	cancel()
	if err != nil {
		return redisErr("drop interest", err)
	}
	if left == 0 {
		// No node of this cluster cares any more: stop root's pushes and
		// the cache entry (Oakestra does the same).
		if err := c.remove(ctx, job); err != nil {
			return err
		}
		if err := c.root.dropInterest(ctx, job, c.cfg.ClusterID); err != nil && !errors.Is(err, ErrNotFound) {
			c.log.Warn("drop interest at root", "job", job, "err", err)
		}
	}
	writeJSON(ctx, 200, map[string]string{"job_name": job, "node_id": node})
	return nil
}

func (c *Cluster) instanceDeployed(ctx *fasthttp.RequestCtx, _ []string) error {
	return c.instanceReport(ctx, false)
}

// instanceUndeployed: the instance stopped on this node. It is not deleted
// at root (its instance IPs survive a migration; the orchestrator deletes
// instances with DELETE /api/net/{_id}/{n}); root clears its location if it
// is still this node.
func (c *Cluster) instanceUndeployed(ctx *fasthttp.RequestCtx, _ []string) error {
	return c.instanceReport(ctx, true)
}

func (c *Cluster) instanceReport(ctx *fasthttp.RequestCtx, undeploy bool) error {
	var in struct {
		NodeID        *string `json:"node_id"`
		JobName       *string `json:"job_name"`
		N             *int    `json:"instance_number"`
		NamespaceIP   *string `json:"namespace_ip"`
		NamespaceIPv6 *string `json:"namespace_ip_v6"`
	}
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	switch {
	case in.NodeID == nil:
		return badf("missing_field", "node_id: missing")
	case in.JobName == nil:
		return badf("missing_field", "job_name: missing")
	case in.N == nil:
		return badf("missing_field", "instance_number: missing")
	}
	if err := validID("node_id", *in.NodeID); err != nil {
		return err
	}
	job, err := normJob("job_name", *in.JobName)
	if err != nil {
		return err
	}
	if *in.N < 0 {
		return badf("bad_instance_number", "instance_number: %d is negative", *in.N)
	}
	rec, err := c.node(ctx, *in.NodeID)
	if err != nil {
		return err
	}
	st := statusOut{InstanceNumber: *in.N, HostIP: rec.NodeIP, HostPort: rec.TunnelPort}
	if !undeploy {
		if in.NamespaceIP == nil || *in.NamespaceIP == "" {
			return badf("missing_field", "namespace_ip: missing")
		}
		sn4, _ := netip.ParsePrefix(rec.Subnet)
		sn6, _ := netip.ParsePrefix(rec.SubnetV6)
		a, err := parseAddr("namespace_ip", *in.NamespaceIP, 4)
		if err != nil {
			return err
		}
		if !sn4.Contains(a) {
			return badf("out_of_pool", "namespace_ip: %s outside the node's subnet %s", a, sn4)
		}
		st.NamespaceIP = a.String()
		if in.NamespaceIPv6 != nil && *in.NamespaceIPv6 != "" {
			a6, err := parseAddr("namespace_ip_v6", *in.NamespaceIPv6, 6)
			if err != nil {
				return err
			}
			if !sn6.Contains(a6) {
				return badf("out_of_pool", "namespace_ip_v6: %s outside the node's subnet %s", a6, sn6)
			}
			st.NamespaceIPv6 = a6.String()
		}
	}
	e, err := c.cached(ctx, job)
	if err != nil {
		return err
	}
	if !undeploy {
		// A node running an instance needs the service's entry (its own
		// instance IPs rewrite its containers' source addresses), so it is
		// interested from now on; the change root announces next reaches
		// it through its watch. Should root fail below, the interest stays:
		// it only means pushes the node may not need.
		if err := c.addInterest(ctx, *in.NodeID, job); err != nil {
			return err
		}
	}
	if err := c.root.deployStatus(ctx, undeploy, e.ID, st); err != nil {
		return err
	}
	writeJSON(ctx, 200, map[string]any{"job_name": job, "instance_number": st.InstanceNumber})
	return nil
}

// peerList is the peer set of node self: every other node of this
// cluster, then the nodes of the linked clusters (clusterpeers.go), sorted
// by cluster and node id.
func (c *Cluster) peerList(ctx context.Context, self string) ([]nodeclient.Peer, error) {
	pipe := c.rdb.Pipeline()
	own := pipe.HGetAll(ctx, c.kNodes())
	foreign := pipe.HGetAll(ctx, c.kXPeers())
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, redisErr("read nodes", err)
	}
	peers := []nodeclient.Peer{}
	for id, s := range own.Val() {
		if id == self {
			continue
		}
		var rec nodeRecord
		if json.Unmarshal([]byte(s), &rec) == nil {
			peers = append(peers, nodeclient.Peer{ClusterID: c.cfg.ClusterID, NodeID: id, IP: rec.NodeIP, Port: rec.TunnelPort})
		}
	}
	for cid, s := range foreign.Val() {
		var ps []nodeclient.Peer
		if json.Unmarshal([]byte(s), &ps) != nil {
			continue
		}
		for _, p := range ps {
			p.ClusterID = cid
			peers = append(peers, p)
		}
	}
	slices.SortFunc(peers, func(a, b nodeclient.Peer) int {
		return cmp.Or(strings.Compare(a.ClusterID, b.ClusterID), strings.Compare(a.NodeID, b.NodeID))
	})
	return peers, nil
}

func (c *Cluster) peers(ctx *fasthttp.RequestCtx, _ []string) error {
	node, err := c.nodeParam(ctx)
	if err != nil {
		return err
	}
	epoch, err := c.epochFor(ctx)
	if err != nil {
		return err
	}
	rc, cancel := c.rctx(ctx)
	defer cancel()
	pipe := c.rdb.Pipeline()
	ex := pipe.HExists(rc, c.kNodes(), node)
	seq := pipe.Get(rc, c.kNseq(node))
	if _, err := pipe.Exec(rc); err != nil && !errors.Is(err, redis.Nil) {
		return redisErr("peers", err)
	}
	if !ex.Val() {
		return notFoundf("node_id: %q is not registered", node)
	}
	v, _ := seq.Uint64()
	peers, err := c.peerList(rc, node)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, nodeclient.PeersResponse{Peers: peers, Epoch: epoch, Version: v})
	return nil
}

// ---- watch ----

const maxWatchBatch = 1000

func (c *Cluster) watch(ctx *fasthttp.RequestCtx, _ []string) error {
	node, err := c.nodeParam(ctx)
	if err != nil {
		return err
	}
	args := ctx.QueryArgs()
	var since uint64
	if s := string(args.Peek("since")); s != "" {
		if since, err = strconv.ParseUint(s, 10, 64); err != nil {
			return badf("bad_param", "since: %q is not a version (unsigned integer)", s)
		}
	}
	wait := 30 * time.Second
	if s := string(args.Peek("timeout")); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 {
			wait = time.Duration(f * float64(time.Second))
		} else if d, err := time.ParseDuration(s); err == nil && d >= 0 {
			wait = d
		} else {
			return badf("bad_param", "timeout: %q, want seconds or a duration", s)
		}
	}
	wait = min(wait, c.cfg.MaxWatch)
	wantEpoch := string(args.Peek("epoch"))
	var deltas bool
	switch s := string(args.Peek("peers")); s {
	case "", "full":
	case "delta":
		deltas = true
	default:
		return badf("bad_param", "peers: %q, want full or delta", s)
	}
	deadline := time.Now().Add(wait)
	for {
		ch := c.waitCh(node) // before reading: a push after the read wakes us
		resp, done, err := c.changes(ctx, node, since, wantEpoch, deltas)
		if err != nil {
			return err
		}
		left := time.Until(deadline)
		if done || left <= 0 || c.ctx.Err() != nil {
			writeJSON(ctx, 200, resp)
			return nil
		}
		t := time.NewTimer(min(left, c.cfg.WatchPoll))
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// changes reads the node's changes after since; done reports whether the
// answer has anything (changes or a resync). With deltas, peers changes
// carry their delta and the whole peer set is sent only if one has none.
func (c *Cluster) changes(ctx context.Context, node string, since uint64, wantEpoch string, deltas bool) (nodeclient.WatchResponse, bool, error) {
	epoch, err := c.epochFor(ctx)
	if err != nil {
		return nodeclient.WatchResponse{}, false, err
	}
	resp := nodeclient.WatchResponse{Epoch: epoch, Changes: []nodeclient.Change{}}
	rc, cancel := c.rctx(ctx)
	defer cancel()
	pipe := c.rdb.Pipeline()
	ex := pipe.HExists(rc, c.kNodes(), node)
	seq := pipe.Get(rc, c.kNseq(node))
	if _, err := pipe.Exec(rc); err != nil && !errors.Is(err, redis.Nil) {
		return resp, false, redisErr("watch", err)
	}
	if !ex.Val() {
		return resp, false, notFoundf("node_id: %q is not registered", node)
	}
	cur, _ := seq.Uint64()
	resp.Version = cur
	if (wantEpoch != "" && wantEpoch != epoch) || since > cur {
		return c.resync(rc, node, resp)
	}
	if since == cur {
		resp.Version = since
		return resp, false, nil
	}
	msgs, err := c.rdb.XRangeN(rc, c.kStream(node), strconv.FormatUint(since+1, 10)+"-0", "+", maxWatchBatch).Result()
	if err != nil {
		return resp, false, redisErr("watch: read stream", err)
	}
	if len(msgs) == 0 || streamSeq(msgs[0].ID) != since+1 {
		return c.resync(rc, node, resp) // trimmed: the node missed changes
	}
	peersChanged := false
	for _, m := range msgs {
		ch := nodeclient.Change{Version: streamSeq(m.ID)}
		ch.Type, _ = m.Values["t"].(string)
		ch.JobName, _ = m.Values["j"].(string)
		d, _ := m.Values["d"].(string)
		switch ch.Type {
		case nodeclient.ChangeService:
			var e nodeclient.ServiceEntry
			if json.Unmarshal([]byte(d), &e) == nil {
				ch.Service = &e
			}
		case nodeclient.ChangePeers:
			var pd nodeclient.PeerDelta
			if deltas && d != "" && json.Unmarshal([]byte(d), &pd) == nil {
				ch.PeerDelta = &pd
			} else {
				peersChanged = true
			}
		}
		resp.Changes = append(resp.Changes, ch)
		resp.Version = ch.Version
	}
	if peersChanged {
		if resp.Peers, err = c.peerList(rc, node); err != nil {
			return resp, false, err
		}
	}
	return resp, true, nil
}

func streamSeq(id string) uint64 {
	s, _, _ := strings.Cut(id, "-")
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

// resync fills resp with the full current state of the node's interests.
// resp.Version was read before the state, so a change racing with the
// resync is delivered again by the next watch (entries are idempotent).
func (c *Cluster) resync(ctx context.Context, node string, resp nodeclient.WatchResponse) (nodeclient.WatchResponse, bool, error) {
	resp.Resync = true
	resp.Services = []nodeclient.ServiceEntry{}
	jobs, err := c.rdb.SMembers(ctx, c.kNint(node)).Result()
	if err != nil {
		return resp, false, redisErr("resync: interests", err)
	}
	slices.Sort(jobs)
	if len(jobs) > 0 {
		keys := make([]string, len(jobs))
		for i, j := range jobs {
			keys[i] = c.kCache(j)
		}
		vals, err := c.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return resp, false, redisErr("resync: entries", err)
		}
		for _, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue
			}
			var e nodeclient.ServiceEntry
			if json.Unmarshal([]byte(s), &e) == nil {
				resp.Services = append(resp.Services, e)
			}
		}
	}
	if resp.Peers, err = c.peerList(ctx, node); err != nil {
		return resp, false, err
	}
	return resp, true, nil
}
