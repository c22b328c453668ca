package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
	"github.com/oakwire/oakwire/netmanager"
)

// NetManager adapts an Engine to netmanager.Dataplane. Start makes the
// Engine from the node's description and, when the node's cluster offers
// the node-facing API, feeds it from the cluster: a netmanager.Services
// pushes the service table into Engine.SetServices (watch, resolution on a
// miss, interest expiry), and the Engine's misses go to Services.Miss.
type NetManager struct {
	// Resolver, when set, answers unknown service IPs instead of the
	// cluster (tests). Nil: the cluster's Services resolve them.
	Resolver Resolver
	// CPUs pins the workers (optional; nil takes NodeInfo.WorkerCPUs).
	CPUs []int
	// Services tunes the cluster feed (negative TTL, idle expiry).
	Services netmanager.ServiceOptions
	// Logger gets the engine's log lines (Config.Logger); nil means
	// slog.Default().
	Logger *slog.Logger

	// mu guards e, svcs, stop, byIfindex and local.
	mu        sync.Mutex
	e         *Engine
	svcs      *netmanager.Services
	stop      context.CancelFunc
	byIfindex map[int]fastpath.PortID
	local     map[string]int // job → local ports of it
	offload   bool
}

func (n *NetManager) log() *slog.Logger {
	if n.Logger != nil {
		return n.Logger
	}
	return slog.Default()
}

// miss hands an unknown service IP to the cluster feed. It never blocks:
// Services.Miss queues, dedups and caches negatively on its own.
func (n *NetManager) miss(_ context.Context, ip netip.Addr) error {
	n.mu.Lock()
	svcs := n.svcs
	n.mu.Unlock()
	if svcs == nil {
		return errors.New("dataplane: no cluster to resolve through")
	}
	svcs.Miss(ip)
	return nil
}

var _ netmanager.Dataplane = (*NetManager)(nil)

// Engine returns the running engine (nil before Start or after Close).
func (n *NetManager) Engine() *Engine {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.e
}

// Start makes the engine: uplink, node IP, tunnel port, workers and XDP mode
// from node.
func (n *NetManager) Start(_ context.Context, node netmanager.NodeInfo) error {
	mode, err := bpfprog.ParseMode(node.XDPMode)
	if node.XDPMode == "" {
		mode, err = bpfprog.ModeGeneric, nil
	}
	if err != nil {
		return err
	}
	tp := node.TunnelPort
	if tp == 0 {
		tp = DefaultTunnelPort
	}
	if tp < 0 || tp > 65535 {
		return fmt.Errorf("%w: tunnel port %d", ErrInvalidConfig, tp)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.e != nil {
		return errors.New("dataplane: started twice")
	}
	res := n.Resolver
	src, fromCluster := netmanager.ServiceSourceFor(node.Cluster, 30*time.Second)
	if res == nil && fromCluster {
		res = ResolverFunc(n.miss)
	}
	yield, err := xsk.ParseYield(node.WorkerYield)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	cpus := n.CPUs
	if cpus == nil {
		cpus = node.WorkerCPUs
	}
	pin := node.PinPath
	if node.Offload && pin != "" && !onBPFFS(pin) {
		n.log().Warn("dataplane: kernel tier: bpf-dir is not on a bpffs; nothing is pinned and flows end with the daemon", "bpf-dir", pin)
		pin = ""
	}
	e, err := New(Config{
		Uplink: node.Uplink, NodeIP: node.NodeIP, TunnelPort: uint16(tp),
		Workers: node.Workers, CPUs: cpus, Mode: mode, Resolver: res, Logger: n.Logger,
		Poller:  xsk.PollerConfig{Yield: yield, Spin: node.WorkerSpin},
		Offload: node.Offload, PinPath: pin,
	})
	if err != nil {
		return err
	}
	n.e, n.byIfindex, n.local, n.offload = e, map[int]fastpath.PortID{}, map[string]int{}, node.Offload
	if fromCluster {
		ctx, cancel := context.WithCancel(context.Background())
		n.svcs, n.stop = netmanager.NewServices(src, e, n.Services), cancel
		go n.svcs.Run(ctx)
	}
	return nil
}

// setLocalLocked counts job's local ports; a job with a local instance
// keeps the node's interest in it forever (SPEC 6).
func (n *NetManager) setLocalLocked(job string, delta int) {
	n.local[job] += delta
	if n.local[job] <= 0 {
		delete(n.local, job)
	}
	if n.svcs != nil {
		n.svcs.View.SetLocal(job, n.local[job] > 0)
	}
}

func mac6(h net.HardwareAddr) (m [6]byte) {
	copy(m[:], h)
	return m
}

// AddPort attaches a container port. Without the kernel tier the
// NetManager turned TX checksum offload off on the container's interface,
// so checksums are updated incrementally; with it the offloads stay on and
// the workers recompute checksums (CHECKSUM_PARTIAL packets).
func (n *NetManager) AddPort(p netmanager.Port) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.e == nil {
		return errors.New("dataplane: not started")
	}
	if p.Instance < 0 {
		return fmt.Errorf("%w: instance %d", ErrInvalidConfig, p.Instance)
	}
	csum := fastpath.CsumIncremental
	if n.offload {
		csum = fastpath.CsumRecompute
	}
	id, err := n.e.AddPort(PortConfig{
		Ifindex: p.HostIndex, HostMAC: mac6(p.HostMAC), ContainerMAC: mac6(p.ContMAC),
		NS4: p.NSIP4, NS6: p.NSIP6, Job: p.Job, Instance: uint32(p.Instance),
		Csum: csum,
	})
	if err != nil {
		return err
	}
	n.byIfindex[p.HostIndex] = id
	n.setLocalLocked(p.Job, 1)
	return nil
}

// RemovePort detaches a container port.
func (n *NetManager) RemovePort(p netmanager.Port) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.e == nil {
		return nil
	}
	id, ok := n.byIfindex[p.HostIndex]
	if !ok {
		return nil
	}
	delete(n.byIfindex, p.HostIndex)
	n.setLocalLocked(p.Job, -1)
	return n.e.RemovePort(id)
}

// Stats reports the engine's counters in the daemon's shape.
func (n *NetManager) Stats() netmanager.DataplaneStats {
	n.mu.Lock()
	e, svcs := n.e, n.svcs
	n.mu.Unlock()
	if e == nil {
		return netmanager.DataplaneStats{Mode: "xdp", Tables: map[string]int{}, Counters: map[string]uint64{}}
	}
	s := e.Stats()
	c := make(map[string]uint64, len(s.Counters)+int(fastpath.NumReasons)+int(fastpath.NumEvents))
	for k, v := range s.Counters {
		c[k] = v
	}
	for i, v := range s.Fast.Drops {
		if i != 0 {
			c["drop_"+fastpath.DropReason(i).String()] = v
		}
	}
	for i, v := range s.Fast.Events {
		c["event_"+fastpath.Event(i).String()] = v
	}
	if svcs != nil {
		for k, v := range svcs.Stats().Counters() {
			c["services_"+k] = v
		}
	}
	mode := "xdp-" + s.Mode
	if s.Offload {
		mode = "kernel-tier"
	}
	return netmanager.DataplaneStats{
		Mode:           mode,
		Workers:        s.Workers,
		CPUs:           s.CPUs,
		Yield:          s.Yield,
		UplinkRxQueues: s.UplinkRxQueues,
		Sockets:        s.Sockets,
		Tables: map[string]int{
			"ports": s.Ports, "services": s.Services, "instances": s.Instances,
			"peers": s.Peers, "flows": s.Flows, "kernel_flows": s.TierFlows,
		},
		Counters: c,
	}
}

// Close takes the data plane down (links, sockets, programs); containers'
// interfaces are not touched.
func (n *NetManager) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stop != nil {
		n.stop() // the feed's goroutines end; SetServices on a closed engine is refused
		n.stop, n.svcs = nil, nil
	}
	if n.e == nil {
		return nil
	}
	err := n.e.Close()
	n.e = nil
	return err
}
