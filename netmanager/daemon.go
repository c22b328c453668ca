package netmanager

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/internal/version"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/netmanager/localapi"
)

// Options are the daemon's collaborators. Dataplane and NewCluster are
// required: cmd/netmanager passes the production ones; unit tests pass
// fakes.
type Options struct {
	Config     Config
	Dataplane  Dataplane
	NewCluster ClusterFactory
	Logger     *slog.Logger
	// Build is which build runs, for /status and /metrics; cmd/netmanager
	// adds the BPF objects' hashes. Zero: version.Get().
	Build version.Info
}

// Daemon is the node-side NetManager.
type Daemon struct {
	cfg        Config
	dp         Dataplane
	newCluster ClusterFactory
	log        *slog.Logger
	build      version.Info
	metrics    *metrics
	started    time.Time

	// regMu serialises Register calls (held across the cluster call).
	regMu sync.Mutex
	// mu serialises every change of the node (register, deploy, undeploy,
	// adopt) and guards all fields below. It is never held across a call
	// to the cluster: Deploy and Undeploy reserve their instance
	// (deploying, undeploying) and let go of it for the report.
	mu        sync.Mutex
	st        *State
	nodeID    string
	cluster   Cluster
	confirmed bool   // the cluster answered a Register
	lastErr   string // last registration error, for /status and 409s
	dpStarted bool
	ctx       context.Context // Run's context (for Dataplane.Start)
	// deploying holds the deploys set up locally and waiting for the
	// cluster to take their report, by owner (job/instance). d.mu is not
	// held during that call; this reservation is what keeps a second
	// deploy of the instance, or of its host ports, out meanwhile. Their
	// containers are not in st.Containers (not in the state file) until
	// the report succeeds.
	deploying map[string]*pendingDeploy
	// undeploying holds the undeployed instances whose report to the
	// cluster is still out (Undeploy).
	undeploying map[string]bool
	// saves counts state file writes, so a rolled-back deploy can tell
	// whether one happened while it was out of the lock.
	saves uint64

	// svcs is the service feed (view, resolver, watch) from the cluster
	// into the data plane; nil until the data plane runs, or when the
	// cluster has no node-facing API. stopSvcs ends it.
	svcs     atomic.Pointer[Services]
	stopSvcs context.CancelFunc

	// root places client-only containers (nil: refused); clientReserved
	// holds the client instance numbers being deployed (d.mu);
	// releasing is set while a goroutine retries st.ClientReleases.
	root           clientRoot
	clientReserved map[int]bool
	releasing      atomic.Bool
	releaseAt      time.Time // next retry of st.ClientReleases (d.mu)

	// flowStats turns the data plane's flows into per-service counters
	// (/metrics); lastSample is guarded by flowStats.sampling.
	flowStats  *flowStats
	lastSample time.Time
}

// pendingDeploy is a deploy between its local set-up and its commit.
type pendingDeploy struct {
	c    *Container
	undo []func() // in order of set-up; undone in reverse
	// saves is d.saves when the deploy let go of d.mu.
	saves uint64
}

// New checks the options and returns a daemon ready to Run.
func New(o Options) (*Daemon, error) {
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	if o.Dataplane == nil {
		return nil, errors.New("netmanager: no data plane")
	}
	if o.NewCluster == nil {
		return nil, errors.New("netmanager: no cluster factory")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Build.Version == "" {
		o.Build = version.Get()
	}
	d := &Daemon{cfg: o.Config, dp: o.Dataplane, newCluster: o.NewCluster, log: o.Logger, build: o.Build, started: time.Now(),
		deploying: map[string]*pendingDeploy{}, undeploying: map[string]bool{}, clientReserved: map[int]bool{}}
	if o.Config.Root != "" {
		d.root = newHTTPRoot(o.Config.Root, o.Config.RootToken())
	}
	d.flowStats = newFlowStats(o.Config.ServiceMetricsMax)
	d.metrics = newMetrics(d)
	return d, nil
}

// Run sets the node up from the state file (re-adopting its containers),
// serves the local API and registers with the cluster, until ctx is done.
// On return the API and the data plane are down; containers stay attached.
func (d *Daemon) Run(ctx context.Context) (err error) {
	d.ctx = ctx
	if d.cfg.Insecure && d.cfg.ClusterToken() == "" {
		d.log.Warn("running without OAKWIRE_TOKEN (--insecure): cluster calls are unauthenticated")
	}
	defer func() {
		err = errors.Join(err, d.closeCollaborators())
	}()
	if err := d.load(); err != nil {
		return err
	}
	ln, err := listenUnix(d.cfg.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(d.cfg.Socket)
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	d.log.Info("serving", "socket", d.cfg.Socket, "node_id", d.nodeIDSnapshot())
	go d.watchUplink(ctx)

	d.mu.Lock()
	addr := d.clusterAddressLocked()
	id := d.nodeID
	d.mu.Unlock()
	if addr != "" && id != "" {
		go d.registerLoop(ctx, id, addr)
	} else {
		d.log.Info("waiting for POST /register")
	}

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-serveErr:
			return fmt.Errorf("api: %w", err)
		case <-tick.C:
			d.expireQuarantine()
			d.retryClientReleases()
			d.sampleFlows()
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("api shutdown: %w", err)
	}
	d.log.Info("stopped; containers stay attached")
	return nil
}

func (d *Daemon) closeCollaborators() error {
	// A flow sample in flight reads the data plane: let it end first (Run's
	// tick, which starts them, has stopped).
	d.flowStats.sampling.Lock()
	defer d.flowStats.sampling.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.stopSvcs != nil {
		d.stopSvcs() // the feed's goroutines end; pushes into a closed data plane are refused
		d.stopSvcs = nil
		d.svcs.Store(nil)
	}
	if err := d.dp.Close(); err != nil {
		errs = append(errs, fmt.Errorf("data plane close: %w", err))
	}
	if d.cluster != nil {
		if err := d.cluster.Close(); err != nil {
			errs = append(errs, fmt.Errorf("cluster close: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (d *Daemon) nodeIDSnapshot() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.nodeID
}

func (d *Daemon) clusterAddressLocked() string {
	if d.cfg.Cluster != "" {
		return d.cfg.Cluster
	}
	return d.st.ClusterAddress
}

// saveLocked writes the state file. d.mu held.
func (d *Daemon) saveLocked() error {
	if err := saveState(d.cfg.StateFile(), d.st); err != nil {
		return err
	}
	d.saves++
	return nil
}

// nftContainersLocked is every container whose port mappings must be in
// the nft table: the attached ones and those of deploys in flight (whose
// rules are live while they wait for the cluster). d.mu held.
func (d *Daemon) nftContainersLocked() []*Container {
	if len(d.deploying) == 0 {
		return d.st.Containers
	}
	out := append([]*Container(nil), d.st.Containers...)
	owners := make([]string, 0, len(d.deploying))
	for o := range d.deploying {
		owners = append(owners, o)
	}
	slices.Sort(owners) // a stable ruleset for the same set of containers
	for _, o := range owners {
		out = append(out, d.deploying[o].c)
	}
	return out
}

func (d *Daemon) applyNftLocked() error {
	return applyNft(nftRuleset(&d.cfg, d.st.Subnets.Subnet(), d.nftContainersLocked()))
}

// listenUnix listens on path with mode 0660, replacing a stale socket but
// refusing to steal one a running daemon answers on.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket %s: exists and is not a socket", path)
		}
		if socketAnswers(path) {
			return nil, fmt.Errorf("socket %s: another netmanager answers on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: chmod: %w", path, err)
	}
	return ln, nil
}

// load reads the state file and, when it holds subnets, sets the node up
// again and re-adopts the containers whose veth still exists.
func (d *Daemon) load() error {
	st, err := loadState(d.cfg.StateFile())
	if err != nil {
		return err
	}
	if st == nil {
		st = &State{}
	}
	if st.Sysctls == nil {
		st.Sysctls = map[string]string{}
	}
	if st.Quarantine == nil {
		st.Quarantine = map[netip.Addr]time.Time{}
	}
	if d.cfg.NodeID != "" && st.NodeID != "" && st.NodeID != d.cfg.NodeID {
		return fmt.Errorf("state %s belongs to node %q, not %q: run `netmanager teardown` first", d.cfg.StateFile(), st.NodeID, d.cfg.NodeID)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.st = st
	d.nodeID = d.cfg.NodeID
	if d.nodeID == "" {
		d.nodeID = st.NodeID
	}
	if st.Subnets == nil {
		return nil
	}
	if addr := d.clusterAddressLocked(); addr != "" {
		cl, err := d.newCluster(addr, d.nodeID)
		if err != nil {
			return fmt.Errorf("cluster %s: %w", addr, err)
		}
		d.cluster = cl
	}
	if err := d.setupNodeLocked(); err != nil {
		return err
	}
	kept := st.Containers[:0]
	for _, c := range st.Containers {
		ok, err := readopt(c)
		if err != nil {
			return fmt.Errorf("re-adopt %s: %w", ownerOf(c.Job, c.Instance), err)
		}
		if !ok {
			d.log.Warn("container gone; dropping it", "service", c.Job, "instance", c.Instance, "veth", c.HostIf)
			d.releaseLocked(ownerOf(c.Job, c.Instance), c.NSIP4)
			if d.cluster != nil {
				go d.reportGone(d.cluster, c.Job, c.Instance)
			}
			if c.Client && !slices.Contains(st.ClientReleases, c.Instance) {
				// Its instance at root goes too (retryClientReleases).
				st.ClientReleases = append(st.ClientReleases, c.Instance)
			}
			continue
		}
		if err := d.dp.AddPort(c.port()); err != nil {
			return fmt.Errorf("re-adopt %s: data plane: %w", ownerOf(c.Job, c.Instance), err)
		}
		d.log.Info("re-adopted", "service", c.Job, "instance", c.Instance, "veth", c.HostIf, "ns_ip", c.NSIP4, "ns_ip6", c.NSIP6)
		kept = append(kept, c)
	}
	st.Containers = kept
	d.syncLocalJobsLocked()
	// nsIPs held by an owner with no container: a deploy that was waiting
	// for the cluster when the daemon died, after another change had
	// saved the state (Deploy). The deploy never happened; free them.
	for owner := range st.Subnets.Owners() {
		if strings.HasPrefix(owner, quarantinePrefix) ||
			slices.ContainsFunc(kept, func(c *Container) bool { return ownerOf(c.Job, c.Instance) == owner }) {
			continue
		}
		d.log.Warn("nsIPs held by no container (deploy cut short); freeing them", "owner", owner)
		_ = st.Subnets.Release(owner)
	}
	if err := d.applyNftLocked(); err != nil {
		return err
	}
	return d.saveLocked()
}

// reportGone tells the cluster about a container that vanished while the
// daemon was down (best effort, a few tries).
func (d *Daemon) reportGone(cl Cluster, job string, instance int) {
	for try := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := cl.ReportUndeployed(ctx, job, instance)
		cancel()
		if err == nil {
			return
		}
		d.log.Warn("report vanished container to cluster", "service", job, "instance", instance, "try", try+1, "err", err)
		time.Sleep(time.Duration(try+1) * time.Second)
	}
	d.metrics.reportErrors.Inc()
}

// setupNodeLocked sets up the gateway, forwarding, routes and the nft
// table for the known subnets, and starts the data plane once. d.mu held.
func (d *Daemon) setupNodeLocked() error {
	sub := d.st.Subnets.Subnet()
	gw := d.st.Subnets.Gateway()
	if err := setupNode(&d.cfg, sub, gw, d.st.Sysctls); err != nil {
		return fmt.Errorf("node setup: %w", err)
	}
	d.st.GatewayDev = gatewayDev
	if err := d.applyNftLocked(); err != nil {
		return fmt.Errorf("node setup: %w", err)
	}
	if !d.dpStarted {
		ni := NodeInfo{
			NodeID: d.nodeID, Uplink: d.cfg.Uplink, NodeIP: d.cfg.nodeAddr(), TunnelPort: d.cfg.TunnelPort,
			Subnets: sub, Gateway4: gw.V4, Gateway6: gw.V6, Workers: d.cfg.Workers, XDPMode: d.cfg.XDPMode,
			WorkerYield: d.cfg.WorkerYield, WorkerSpin: d.cfg.WorkerSpin,
			MTU:     d.cfg.MTU,
			Offload: d.cfg.Offload == "on", PinPath: d.cfg.PinPath(d.nodeID),
			FlowsFile: d.cfg.FlowsFile(), Miss: d.miss,
		}
		ni.WorkerCPUs, _ = ParseCPUList(d.cfg.WorkerCPUs) // validated
		if err := d.dp.Start(d.ctx, ni); err != nil {
			return fmt.Errorf("data plane start: %w", err)
		}
		d.dpStarted = true
		d.startServicesLocked()
	}
	return nil
}

// startServicesLocked starts the service feed from the cluster into the
// data plane (once: the data plane runs from now on). d.mu held.
func (d *Daemon) startServicesLocked() {
	if d.cluster == nil || d.svcs.Load() != nil {
		return
	}
	src := d.cluster.ServiceSource()
	if src == nil {
		return
	}
	svcs := NewServices(src, d.dp, ServiceOptions{Logger: d.log})
	svcs.View.SetLocalJobs(d.localJobsLocked())
	ctx, cancel := context.WithCancel(context.Background())
	d.stopSvcs = cancel
	d.svcs.Store(svcs)
	go svcs.Run(ctx)
}

// miss hands an address the data plane does not know to the service feed;
// it never blocks (NodeInfo.Miss).
func (d *Daemon) miss(ip netip.Addr) {
	if svcs := d.svcs.Load(); svcs != nil {
		svcs.Miss(ip)
	}
}

// localJobsLocked lists the jobs with an instance on this node (attached,
// or being deployed): the node keeps its interest in them (SPEC §6).
// d.mu held.
func (d *Daemon) localJobsLocked() []string {
	var jobs []string
	for _, c := range d.nftContainersLocked() {
		if !slices.Contains(jobs, c.Job) {
			jobs = append(jobs, c.Job)
		}
	}
	return jobs
}

// syncLocalJobsLocked tells the service feed which jobs run here.
// d.mu held.
func (d *Daemon) syncLocalJobsLocked() {
	if svcs := d.svcs.Load(); svcs != nil {
		svcs.View.SetLocalJobs(d.localJobsLocked())
	}
}

// dataplaneStats is the data plane's stats with the service feed's
// counters ("services_*").
func (d *Daemon) dataplaneStats() DataplaneStats {
	s := d.dp.Stats()
	if svcs := d.svcs.Load(); svcs != nil {
		if s.Counters == nil {
			s.Counters = map[string]uint64{}
		}
		for k, v := range svcs.Stats().Counters() {
			s.Counters["services_"+k] = v
		}
	}
	return s
}

// registerLoop registers with the cluster, retrying with backoff, until it
// answers or ctx ends.
func (d *Daemon) registerLoop(ctx context.Context, id, addr string) {
	backoff := time.Second
	for {
		err := d.Register(ctx, id, addr)
		if err == nil || errors.Is(err, ErrConflict) || errors.Is(err, ErrBadRequest) {
			if err != nil {
				d.log.Error("registration refused; not retrying", "cluster", addr, "err", err)
			}
			return
		}
		d.log.Warn("registration failed; retrying", "cluster", addr, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// Register registers the node id with the cluster at addr (POST
// /register). Same id again: no-op. Another id: ErrConflict.
func (d *Daemon) Register(ctx context.Context, id, addr string) error {
	if !api.ValidID(id) {
		return badRequest("bad_client_id", "client_id: %q: 1-128 characters of letters, digits and . _ - :", id)
	}
	if strings.TrimSpace(addr) == "" {
		return badRequest("missing_field", "cluster_address: missing")
	}
	target, err := clusterTarget(addr, d.cfg.ClusterPort)
	if err != nil {
		return badRequest("bad_cluster_address", "cluster_address: %v", err)
	}
	// regMu serialises registrations; d.mu is not held during the cluster
	// call so /status and deploys (with known subnets) go on meanwhile.
	d.regMu.Lock()
	defer d.regMu.Unlock()
	d.mu.Lock()
	if d.nodeID != "" && d.nodeID != id {
		d.mu.Unlock()
		return conflict("node_id", "client_id: this node is registered as %q, not %q", d.nodeID, id)
	}
	// The node has one cluster: the configured one, or the one it
	// registered with. Another address is refused, not ignored.
	if cur := d.clusterAddressLocked(); cur != "" && (d.confirmed || d.cfg.Cluster != "") {
		if ct, _ := clusterTarget(cur, d.cfg.ClusterPort); ct != target {
			d.mu.Unlock()
			return conflict("cluster_changed", "cluster_address: this node belongs to the cluster at %s, not %s (run `netmanager teardown` to move it)", ct, target)
		}
	}
	if d.confirmed {
		d.mu.Unlock()
		return nil
	}
	cl := d.cluster
	if cl == nil || d.clusterAddressLocked() != target {
		if cl, err = d.newCluster(target, id); err != nil {
			d.mu.Unlock()
			return badRequest("bad_cluster_address", "cluster_address: %v", err)
		}
	}
	d.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	reg, err := cl.Register(rctx, d.cfg.endpoint())
	cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.lastErr = err.Error()
		return fmt.Errorf("register with cluster %s: %w: %w", addr, ErrCluster, err)
	}
	if d.nodeID != "" && d.nodeID != id {
		return conflict("node_id", "client_id: this node is registered as %q, not %q", d.nodeID, id)
	}
	st := d.st
	if st.Subnets != nil && st.Subnets.Subnet() != reg.Subnets {
		return conflict("subnet_changed", "cluster %s gave subnets %s %s but this node holds %s %s: run `netmanager teardown`",
			addr, reg.Subnets.V4, reg.Subnets.V6, st.Subnets.Subnet().V4, st.Subnets.Subnet().V6)
	}
	fresh := st.Subnets == nil
	if fresh {
		ns, err := ipam.NewNodeSubnet(reg.Subnets)
		if err != nil {
			return fmt.Errorf("cluster %s: %w", addr, err)
		}
		st.Subnets = ns
	}
	if d.cluster != nil && d.cluster != cl {
		_ = d.cluster.Close()
	}
	d.cluster = cl
	d.nodeID = id
	st.NodeID = id
	if d.cfg.Cluster == "" {
		st.ClusterAddress = target
	}
	if err := d.setupNodeLocked(); err != nil {
		// Registered, but the node cannot carry traffic: say so in the
		// log and in /status (last_error) and the 409s of deploys, not
		// only as a retry.
		d.lastErr = err.Error()
		d.log.Error("node setup failed after registering", "cluster", addr, "err", err)
		if fresh { // undo the half-made node setup
			st.Subnets = nil
			if terr := teardownNode(st.Sysctls); terr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: %w", terr))
			}
			st.Sysctls = map[string]string{}
		}
		return err
	}
	if err := d.saveLocked(); err != nil {
		return err
	}
	d.confirmed = true
	d.lastErr = ""
	d.log.Info("registered", "node_id", id, "cluster", addr, "subnet", reg.Subnets.V4, "subnet_v6", reg.Subnets.V6)
	return nil
}

// DeployRequest is POST /container/deploy (Oakestra's fields plus ours:
// netns, containerId, ifName, client).
type DeployRequest = localapi.DeployRequest

// DeployResponse is its answer.
type DeployResponse = localapi.DeployResponse

// Deploy attaches a container. On any error nothing is left behind.
//
// The local set-up (nsIPs, veth, port mappings, data plane port) runs
// under d.mu; the report to the cluster, which may take its full timeout
// when the cluster is down, does not, so /status, metrics and other
// deploys go on meanwhile. The instance and its host ports are reserved
// (d.deploying) across the call; once the cluster answered, the deploy is
// committed to the state file, or rolled back completely, under d.mu.
func (d *Daemon) Deploy(ctx context.Context, r DeployRequest) (resp DeployResponse, err error) {
	if r.Client {
		return d.deployClient(ctx, r)
	}
	return d.deploy(ctx, r, false)
}

// deploy is Deploy of a named instance; client marks an instance of the
// node's client service (deployClient).
func (d *Daemon) deploy(ctx context.Context, r DeployRequest, client bool) (resp DeployResponse, err error) {
	job, err := normJob(r.ServiceName)
	if err != nil {
		return resp, badRequest("bad_name", "%v", err)
	}
	if r.InstanceNumber < 0 {
		return resp, badRequest("bad_instance", "instanceNumber: %d is negative", r.InstanceNumber)
	}
	switch {
	case r.PID < 0:
		return resp, badRequest("bad_pid", "pid: %d is negative", r.PID)
	case r.PID > 0 && r.Netns != "":
		return resp, badRequest("bad_request", "pid and netns: give one, not both")
	case r.PID == 0 && r.Netns == "":
		return resp, badRequest("missing_field", "pid: missing (or netns)")
	}
	maps, err := ParsePortMappings(r.PortMappings)
	if err != nil {
		return resp, badRequest("bad_port_mappings", "%v", err)
	}
	if r.IfName != "" && !validIfName(r.IfName) {
		return resp, badRequest("bad_if_name", "ifName: %q is not an interface name", r.IfName)
	}
	if r.ContainerID != "" && !validContainerID(r.ContainerID) {
		return resp, badRequest("bad_container_id", "containerId: %q: 1-256 characters of letters, digits and . _ -, starting with a letter or digit", r.ContainerID)
	}
	owner := ownerOf(job, r.InstanceNumber)

	d.mu.Lock()
	p, err := d.setUpDeployLocked(job, owner, r, maps, client)
	cl := d.cluster
	d.mu.Unlock()
	if err != nil {
		return resp, err
	}
	c := p.c
	var rerr error
	if cl != nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		rerr = cl.ReportDeployed(rctx, job, r.InstanceNumber, c.NSIP4, c.NSIP6)
		cancel()
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.deploying, owner)
	if rerr != nil {
		err = fmt.Errorf("report deploy of %s to cluster: %w: %w", owner, ErrCluster, rerr)
	} else {
		st := d.st
		st.Containers = append(st.Containers, c)
		p.undo = append(p.undo, func() {
			st.Containers = slices.DeleteFunc(st.Containers, func(o *Container) bool { return o == c })
		})
		err = d.saveLocked()
	}
	if err != nil {
		d.rollBackLocked(p)
		if d.saves != p.saves {
			// Another change saved the state while this deploy was out of
			// the lock, so the file holds its nsIPs: write it again, as if
			// this deploy had never been.
			if serr := d.saveLocked(); serr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: %w", serr))
			}
		}
		return resp, err
	}
	d.metrics.deploys.Inc()
	d.log.Info("deployed", "service", job, "instance", r.InstanceNumber, "veth", c.HostIf,
		"ns_ip", c.NSIP4, "ns_ip6", c.NSIP6, "ports", r.PortMappings, "container_id", c.ContainerID)
	gw := d.st.Subnets.Gateway()
	resp = DeployResponse{ServiceName: job, NsAddress: c.NSIP4.String(), NsAddressV6: c.NSIP6.String(),
		InstanceNumber: c.Instance, IfName: c.ContIf, MAC: net.HardwareAddr(c.ContMAC).String(),
		HostIf: c.HostIf, HostMAC: net.HardwareAddr(c.HostMAC).String(),
		Gateway: gw.V4.String(), GatewayV6: gw.V6.String(), MTU: c.MTU}
	if svcs := d.svcs.Load(); svcs != nil {
		if a, ok := svcs.View.InstanceIP(job, c.Instance, false); ok {
			resp.InstanceIP = a.String()
		}
		if a, ok := svcs.View.InstanceIP(job, c.Instance, true); ok {
			resp.InstanceIPv6 = a.String()
		}
	}
	return resp, nil
}

// rollBackLocked undoes a deploy's set-up in reverse order. d.mu held.
func (d *Daemon) rollBackLocked(p *pendingDeploy) {
	for i := len(p.undo) - 1; i >= 0; i-- {
		p.undo[i]()
	}
	d.syncLocalJobsLocked()
	d.metrics.deployErrors.Inc()
}

// setUpDeployLocked checks that the instance and its host ports are free,
// sets the container up on the node (nsIPs, veth, port mappings, data
// plane port) and reserves it in d.deploying. On error it has undone
// everything. d.mu held.
func (d *Daemon) setUpDeployLocked(job, owner string, r DeployRequest, maps []PortMapping, client bool) (_ *pendingDeploy, err error) {
	st := d.st
	if st.Subnets == nil {
		return nil, d.notRegisteredLocked()
	}
	if c := d.findLocked(job, r.InstanceNumber); c != nil {
		return nil, conflict("already_deployed", "serviceName %s instance %d: already deployed (%s)", job, r.InstanceNumber, c.NSIP4)
	}
	if _, ok := d.deploying[owner]; ok {
		return nil, conflict("deploy_in_progress", "serviceName %s instance %d: a deploy of it is in progress", job, r.InstanceNumber)
	}
	if d.undeploying[owner] {
		return nil, conflict("undeploy_in_progress", "serviceName %s instance %d: its undeploy is still reporting to the cluster", job, r.InstanceNumber)
	}
	ifName := cmp.Or(r.IfName, d.cfg.ContainerIf)
	if r.ContainerID != "" {
		for _, c := range d.nftContainersLocked() {
			if c.ContainerID == r.ContainerID && c.ContIf == ifName {
				return nil, conflict("already_deployed", "containerId %s ifName %s: already attached as %s", r.ContainerID, ifName, ownerOf(c.Job, c.Instance))
			}
		}
	}
	for _, m := range maps {
		for _, c := range d.nftContainersLocked() {
			if slices.ContainsFunc(c.PortMappings, func(o PortMapping) bool { return o.HostPort == m.HostPort && o.Proto == m.Proto }) {
				return nil, conflict("port_in_use", "portMappings: host port %d/%s is used by %s", m.HostPort, m.Proto, ownerOf(c.Job, c.Instance))
			}
		}
	}
	nsh, err := openNetns(r.PID, r.Netns, r.NetnsInode)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()

	p := &pendingDeploy{}
	defer func() {
		if err != nil {
			d.rollBackLocked(p)
		}
	}()
	pair, err := st.Subnets.Alloc(owner)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			return nil, conflict("exhausted", "node subnet %s: no free namespace IP", st.Subnets.Subnet().V4)
		}
		return nil, err
	}
	p.undo = append(p.undo, func() { _ = st.Subnets.Release(owner) })
	c := &Container{
		Job: job, Instance: r.InstanceNumber, PID: r.PID, Netns: netnsName(r.Netns),
		ContainerID: r.ContainerID, Network: r.Network, Client: client,
		HostIf: hostIfName(job, r.InstanceNumber), HostMAC: macJSON(hostMAC(pair.V4)),
		ContIf: ifName, ContMAC: macJSON(containerMAC(pair.V4)),
		NSIP4: pair.V4, NSIP6: pair.V6, MTU: d.cfg.MTU, PortMappings: maps,
		Deployed: time.Now().UTC(),
	}
	p.c = c
	// Reserved, and in the nft table (its port mappings, and its veth in
	// the ports set that isolation lets through) before the veth exists.
	d.deploying[owner] = p
	p.undo = append(p.undo, func() {
		delete(d.deploying, owner)
		_ = d.applyNftLocked()
	})
	if err := d.applyNftLocked(); err != nil {
		return nil, fmt.Errorf("nft %s: %w", owner, err)
	}
	// Offloads go off only where the AF_XDP workers carry every packet.
	keepOffloads := d.cfg.Dataplane != "xdp" || d.cfg.Offload == "on"
	if err := attach(c, nsh, st.Subnets.Gateway(), keepOffloads); err != nil {
		return nil, fmt.Errorf("attach %s: %w", owner, err)
	}
	p.undo = append(p.undo, func() { _ = detach(c) })
	if err := d.dp.AddPort(c.port()); err != nil {
		return nil, fmt.Errorf("data plane add port %s: %w", c.HostIf, err)
	}
	p.undo = append(p.undo, func() { _ = d.dp.RemovePort(c.port()) })
	d.syncLocalJobsLocked()
	p.saves = d.saves
	return p, nil
}

// netnsName is how the state and /status name a netns path: a caller's
// descriptor (/proc/PID/fd/N, gone with the call) by its namespace
// ("net:[4026532345]").
func netnsName(path string) string {
	if strings.HasPrefix(path, "/proc/") && strings.Contains(path, "/fd/") {
		if l, err := os.Readlink(path); err == nil {
			return l
		}
	}
	return path
}

// notRegisteredLocked is the error of a deploy before registration.
// d.mu held.
func (d *Daemon) notRegisteredLocked() error {
	msg := "node not registered with a cluster: POST /register first"
	if d.lastErr != "" {
		msg += " (last attempt: " + d.lastErr + ")"
	}
	return &apiError{kind: ErrNotRegistered, code: "not_registered", msg: msg}
}

func (d *Daemon) findLocked(job string, instance int) *Container {
	for _, c := range d.st.Containers {
		if c.Job == job && c.Instance == instance {
			return c
		}
	}
	return nil
}

// UndeployRequest is POST /container/undeploy and /docker/undeploy.
type UndeployRequest = localapi.UndeployRequest

// Undeploy detaches a container: data plane, veth, port mappings, nsIPs
// (into quarantine), state, then tells the cluster. Like Deploy's, the
// report goes out without d.mu; the instance stays reserved
// (d.undeploying) until it is done, so a new deploy of it cannot report
// "deployed" to the cluster ahead of this "undeployed".
func (d *Daemon) Undeploy(ctx context.Context, r UndeployRequest) error {
	var job string
	var err error
	d.mu.Lock()
	switch {
	case r.ServiceName == "" && r.ContainerID != "":
		job, r.InstanceNumber, err = d.byContainerLocked(r.ContainerID, r.IfName)
	default:
		job, err = normJob(r.ServiceName)
		if err != nil {
			err = badRequest("bad_name", "%v", err)
		}
	}
	if err != nil {
		d.mu.Unlock()
		return err
	}
	owner := ownerOf(job, r.InstanceNumber)
	var client bool
	if c := d.findLocked(job, r.InstanceNumber); c != nil {
		client = c.Client
	}
	errs, err := d.undeployLocked(job, owner, r.InstanceNumber)
	cl := d.cluster
	if err == nil && cl != nil {
		d.undeploying[owner] = true
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if cl != nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := cl.ReportUndeployed(rctx, job, r.InstanceNumber); err != nil {
			d.metrics.reportErrors.Inc()
			d.log.Warn("report undeploy to cluster", "service", job, "instance", r.InstanceNumber, "err", err)
		}
		cancel()
		d.mu.Lock()
		delete(d.undeploying, owner)
		d.mu.Unlock()
	}
	if client {
		d.releaseClient(ctx, r.InstanceNumber)
	}
	return errors.Join(errs...)
}

// byContainerLocked finds the attachment of a runtime's container (any
// interface when ifName is empty). d.mu held.
func (d *Daemon) byContainerLocked(id, ifName string) (string, int, error) {
	if d.st == nil {
		return "", 0, &apiError{kind: ErrNotFound, code: "not_deployed", msg: "containerId " + id + ": not attached on this node"}
	}
	for _, c := range d.nftContainersLocked() {
		if c.ContainerID == id && (ifName == "" || c.ContIf == ifName) {
			return c.Job, c.Instance, nil
		}
	}
	return "", 0, &apiError{kind: ErrNotFound, code: "not_deployed",
		msg: fmt.Sprintf("containerId %s ifName %q: not attached on this node", id, ifName)}
}

// undeployLocked is Undeploy's local part. err: nothing was undeployed;
// errs: it was, with these problems. d.mu held.
func (d *Daemon) undeployLocked(job, owner string, instance int) (errs []error, err error) {
	st := d.st
	c := d.findLocked(job, instance)
	if c == nil && d.deploying[owner] != nil {
		return nil, conflict("deploy_in_progress", "serviceName %s instance %d: its deploy is in progress", job, instance)
	}
	if c == nil {
		return nil, &apiError{kind: ErrNotFound, code: "not_deployed", msg: fmt.Sprintf("serviceName %s instance %d: not deployed on this node", job, instance)}
	}
	if err := d.dp.RemovePort(c.port()); err != nil {
		errs = append(errs, fmt.Errorf("data plane remove port %s: %w", c.HostIf, err))
	}
	if err := detach(c); err != nil {
		return nil, errors.Join(append(errs, err)...)
	}
	st.Containers = slices.DeleteFunc(st.Containers, func(o *Container) bool { return o == c })
	d.syncLocalJobsLocked()
	if err := d.applyNftLocked(); err != nil {
		errs = append(errs, err)
	}
	d.releaseLocked(owner, c.NSIP4)
	if err := d.saveLocked(); err != nil {
		errs = append(errs, err)
	}
	d.metrics.undeploys.Inc()
	d.log.Info("undeployed", "service", job, "instance", instance, "veth", c.HostIf, "ns_ip", c.NSIP4)
	return errs, nil
}

// quarantinePrefix starts the placeholder owners of quarantined nsIPs.
const quarantinePrefix = "quarantine/"

func quarantineOwner(a netip.Addr) string { return quarantinePrefix + a.String() }

// releaseLocked frees owner's nsIPs; with a quarantine they stay held by a
// placeholder owner until it expires. d.mu held.
func (d *Daemon) releaseLocked(owner string, v4 netip.Addr) {
	_ = d.st.Subnets.Release(owner)
	if d.cfg.Quarantine <= 0 {
		return
	}
	if _, err := d.st.Subnets.Adopt(quarantineOwner(v4), v4); err == nil {
		d.st.Quarantine[v4] = time.Now().Add(d.cfg.Quarantine).UTC()
	}
}

// expireQuarantine frees quarantined nsIPs whose time has come.
func (d *Daemon) expireQuarantine() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st == nil || d.st.Subnets == nil || len(d.st.Quarantine) == 0 {
		return
	}
	now := time.Now()
	changed := false
	for a, until := range d.st.Quarantine {
		if now.Before(until) {
			continue
		}
		_ = d.st.Subnets.Release(quarantineOwner(a))
		delete(d.st.Quarantine, a)
		changed = true
	}
	if changed {
		if err := d.saveLocked(); err != nil {
			d.log.Error("save state", "err", err)
		}
	}
}

// Teardown removes everything a daemon with this configuration set up on
// the node: the veths named in the state file, the gateway link, the nft
// table, the forwarding sysctls (restored), the socket and the state file.
// It refuses while a daemon answers on the socket. dataplane, when set,
// removes what the data plane leaves between daemons (the kernel tier's
// pinned links and flows under pinPath, its punt device).
func Teardown(cfg Config, log *slog.Logger, dataplane func(pinPath string) error) error {
	if socketAnswers(cfg.Socket) {
		return fmt.Errorf("teardown: a netmanager answers on %s: stop it first", cfg.Socket)
	}
	st, lerr := loadState(cfg.StateFile())
	var errs []error
	if lerr != nil {
		errs = append(errs, lerr)
	}
	saved := map[string]string{}
	if st != nil {
		for _, c := range st.Containers {
			if err := detach(c); err != nil {
				errs = append(errs, err)
				continue
			}
			log.Info("removed container interface", "service", c.Job, "instance", c.Instance, "veth", c.HostIf)
		}
		saved = st.Sysctls
	}
	if dataplane != nil {
		node := cfg.NodeID
		if node == "" && st != nil {
			node = st.NodeID
		}
		if err := dataplane(cfg.PinPath(node)); err != nil {
			errs = append(errs, fmt.Errorf("data plane: %w", err))
		}
	}
	if err := teardownNode(saved); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if lerr == nil {
		for _, f := range []string{cfg.StateFile(), cfg.FlowsFile()} {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
