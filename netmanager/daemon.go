package netmanager

import (
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

	"github.com/oakwire/oakwire/internal/version"
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
			FlowsFile: d.cfg.FlowsFile(), FlowsPerPort: d.cfg.FlowsPerPort, Miss: d.miss,
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
