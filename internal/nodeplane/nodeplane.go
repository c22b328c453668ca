// Package nodeplane drives the node's AF_XDP data plane (package
// dataplane) as the NetManager daemon's netmanager.Dataplane: it maps the
// daemon's node description, ports, service view and stats to the
// engine's, and nothing more. The daemon owns the cluster client and the
// service feed; the engine gets the view as snapshots (SetServices) and
// reports the addresses it does not know through NodeInfo.Miss. dataplane
// imports no netmanager and netmanager no dataplane: cmd/netmanager wires
// them together here.
package nodeplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/dataplane"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
	"github.com/oakwire/oakwire/netmanager"
)

// Dataplane is the AF_XDP data plane as a netmanager.Dataplane.
type Dataplane struct {
	// Logger gets the engine's log lines; nil means slog.Default().
	Logger *slog.Logger

	// mu guards the fields below.
	mu        sync.Mutex
	e         *dataplane.Engine
	byIfindex map[int]fastpath.PortID
	offload   bool
	flowsFile string
}

var _ netmanager.Dataplane = (*Dataplane)(nil)

func (d *Dataplane) log() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.Default()
}

// Engine returns the running engine (nil before Start or after Close).
func (d *Dataplane) Engine() *dataplane.Engine {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.e
}

// Start makes the engine from node: uplink, node IP, tunnel port, workers
// and their placement, XDP mode or kernel tier, pins; and takes back the
// flows a graceful stop saved.
func (d *Dataplane) Start(_ context.Context, node netmanager.NodeInfo) error {
	cfg, err := d.config(node)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.e != nil {
		return errors.New("dataplane: started twice")
	}
	e, err := dataplane.New(cfg)
	if err != nil {
		return err
	}
	d.e, d.byIfindex, d.offload, d.flowsFile = e, map[int]fastpath.PortID{}, node.Offload, node.FlowsFile
	if node.FlowsFile != "" {
		if k, err := e.LoadFlows(node.FlowsFile); err != nil {
			d.log().Warn("dataplane: flows of the previous run", "err", err)
		} else if k > 0 {
			d.log().Info("dataplane: flows of the previous run kept", "flows", k)
		}
	}
	return nil
}

// config is the engine's configuration for node.
func (d *Dataplane) config(node netmanager.NodeInfo) (dataplane.Config, error) {
	mode, err := bpfprog.ParseMode(node.XDPMode) // "": bpfprog.DefaultMode
	if err != nil {
		return dataplane.Config{}, err
	}
	tp := node.TunnelPort
	if tp == 0 {
		tp = dataplane.DefaultTunnelPort
	}
	if tp < 0 || tp > 65535 {
		return dataplane.Config{}, fmt.Errorf("%w: tunnel port %d", dataplane.ErrInvalidConfig, tp)
	}
	yield, err := xsk.ParseYield(node.WorkerYield)
	if err != nil {
		return dataplane.Config{}, fmt.Errorf("%w: %w", dataplane.ErrInvalidConfig, err)
	}
	pin := node.PinPath
	if node.Offload && pin != "" && !dataplane.OnBPFFS(pin) {
		d.log().Warn("dataplane: kernel tier: bpf-dir is not on a bpffs; nothing is pinned and flows end with the daemon", "bpf-dir", pin)
		pin = ""
	}
	cfg := dataplane.Config{
		Uplink: node.Uplink, NodeIP: node.NodeIP, TunnelPort: uint16(tp),
		Workers: node.Workers, CPUs: node.WorkerCPUs, Mode: mode, Logger: d.Logger,
		Poller:  xsk.PollerConfig{Yield: yield, Spin: node.WorkerSpin},
		Offload: node.Offload, PinPath: pin,
		Flows: fastpath.FlowConfig{PerPort: node.FlowsPerPort},
	}
	if node.Miss != nil {
		miss := node.Miss
		cfg.Resolver = dataplane.ResolverFunc(func(_ context.Context, ip netip.Addr) error {
			miss(ip) // never blocks: the daemon's feed queues it
			return nil
		})
	}
	return cfg, nil
}

// SetServices hands the daemon's service view to the engine.
func (d *Dataplane) SetServices(svcs []fastpath.ServiceSpec, insts []fastpath.InstanceSpec, peers []netip.AddrPort) error {
	d.mu.Lock()
	e := d.e
	d.mu.Unlock()
	if e == nil {
		return errors.New("dataplane: not started")
	}
	return e.SetServices(svcs, insts, peers)
}

func mac6(h net.HardwareAddr) (m [6]byte) {
	copy(m[:], h)
	return m
}

// AddPort attaches a container port. Without the kernel tier the daemon
// turned TX checksum offload off on the container's interface, so
// checksums are updated incrementally; with it the offloads stay on and
// the workers recompute checksums (CHECKSUM_PARTIAL packets).
func (d *Dataplane) AddPort(p netmanager.Port) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.e == nil {
		return errors.New("dataplane: not started")
	}
	if p.Instance < 0 {
		return fmt.Errorf("%w: instance %d", dataplane.ErrInvalidConfig, p.Instance)
	}
	csum := fastpath.CsumIncremental
	if d.offload {
		csum = fastpath.CsumRecompute
	}
	id, err := d.e.AddPort(dataplane.PortConfig{
		Ifindex: p.HostIndex, HostMAC: mac6(p.HostMAC), ContainerMAC: mac6(p.ContMAC),
		NS4: p.NSIP4, NS6: p.NSIP6, Job: p.Job, Instance: uint32(p.Instance), Csum: csum,
	})
	if err != nil {
		return err
	}
	d.byIfindex[p.HostIndex] = id
	return nil
}

// RemovePort detaches a container port.
func (d *Dataplane) RemovePort(p netmanager.Port) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.e == nil {
		return nil
	}
	id, ok := d.byIfindex[p.HostIndex]
	if !ok {
		return nil
	}
	delete(d.byIfindex, p.HostIndex)
	return d.e.RemovePort(id)
}

// Stats reports the engine's counters in the daemon's shape.
func (d *Dataplane) Stats() netmanager.DataplaneStats {
	d.mu.Lock()
	e := d.e
	d.mu.Unlock()
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
	mode := "xdp-" + s.Mode
	if s.Offload {
		mode = "kernel-tier"
	}
	return netmanager.DataplaneStats{
		Mode: mode, Workers: s.Workers, CPUs: s.CPUs, Yield: s.Yield,
		UplinkRxQueues: s.UplinkRxQueues, Sockets: s.Sockets,
		Tables: map[string]int{
			"ports": s.Ports, "services": s.Services, "instances": s.Instances,
			"peers": s.Peers, "flows": s.Flows, "kernel_flows": s.TierFlows,
		},
		Counters: c,
	}
}

// Flows lists the engine's flows in the daemon's shape.
func (d *Dataplane) Flows() []netmanager.Flow {
	d.mu.Lock()
	e := d.e
	d.mu.Unlock()
	if e == nil {
		return nil
	}
	fs := e.Flows()
	t := e.Table()
	out := make([]netmanager.Flow, 0, len(fs))
	for _, f := range fs {
		nf := netmanager.Flow{Proto: protoName(f.Proto), Src: f.Src.String(), Dst: f.Dst.String(), Ingress: f.Ingress,
			Tier: "workers", Pending: f.Pending, Packets: f.Packets, Bytes: f.Bytes,
			IdleMS: f.Idle.Milliseconds(), Closing: f.Closing}
		if f.Kernel {
			nf.Tier = "kernel"
		}
		if f.Service.IsValid() {
			nf.Service = f.Service.String()
			if t != nil {
				nf.Job = t.JobOf(f.Service)
			}
		}
		if f.HasInstance {
			inst := f.Instance
			nf.Instance = &inst
		}
		out = append(out, nf)
	}
	return out
}

func protoName(p uint8) string {
	switch p {
	case fastpath.ProtoTCP:
		return "tcp"
	case fastpath.ProtoUDP:
		return "udp"
	case fastpath.ProtoICMP:
		return "icmp"
	case fastpath.ProtoICMPv6:
		return "icmpv6"
	}
	return strconv.Itoa(int(p))
}

// Close takes the data plane down (links, sockets, programs; the kernel
// tier's pinned ones stay); containers' interfaces are not touched. The
// worker pool's flows go to the flows file for the next start.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.e == nil {
		return nil
	}
	err := d.e.Close()
	if d.flowsFile != "" {
		err = errors.Join(err, d.e.SaveFlows(d.flowsFile))
	}
	d.e = nil
	return err
}
