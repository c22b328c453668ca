package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/netmanager"
)

// NetManager adapts an Engine to netmanager.Dataplane. Start makes the
// Engine from the node's description; the control side pushes the service
// table through Engine().SetServices and answers unknown service IPs
// through the Resolver given here.
type NetManager struct {
	// Resolver is passed to the Engine (may be nil).
	Resolver Resolver
	// CPUs pins the workers (optional).
	CPUs []int

	// mu guards e and byIfindex.
	mu        sync.Mutex
	e         *Engine
	byIfindex map[int]fastpath.PortID
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
	e, err := New(Config{
		Uplink: node.Uplink, NodeIP: node.NodeIP, TunnelPort: uint16(tp),
		Workers: node.Workers, CPUs: n.CPUs, Mode: mode, Resolver: n.Resolver,
	})
	if err != nil {
		return err
	}
	n.e, n.byIfindex = e, map[int]fastpath.PortID{}
	return nil
}

func mac6(h net.HardwareAddr) (m [6]byte) {
	copy(m[:], h)
	return m
}

// AddPort attaches a container port. The NetManager turned TX checksum
// offload off on the container's interface, so checksums are updated
// incrementally.
func (n *NetManager) AddPort(p netmanager.Port) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.e == nil {
		return errors.New("dataplane: not started")
	}
	if p.Instance < 0 {
		return fmt.Errorf("%w: instance %d", ErrInvalidConfig, p.Instance)
	}
	id, err := n.e.AddPort(PortConfig{
		Ifindex: p.HostIndex, HostMAC: mac6(p.HostMAC), ContainerMAC: mac6(p.ContMAC),
		NS4: p.NSIP4, NS6: p.NSIP6, Job: p.Job, Instance: uint32(p.Instance),
		Csum: fastpath.CsumIncremental,
	})
	if err != nil {
		return err
	}
	n.byIfindex[p.HostIndex] = id
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
	return n.e.RemovePort(id)
}

// Stats reports the engine's counters in the daemon's shape.
func (n *NetManager) Stats() netmanager.DataplaneStats {
	n.mu.Lock()
	e := n.e
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
	return netmanager.DataplaneStats{
		Mode:    "xdp-" + s.Mode,
		Workers: s.Workers,
		Sockets: s.Sockets,
		Tables: map[string]int{
			"ports": s.Ports, "services": s.Services, "instances": s.Instances,
			"peers": s.Peers, "flows": s.Flows,
		},
		Counters: c,
	}
}

// Close takes the data plane down (links, sockets, programs); containers'
// interfaces are not touched.
func (n *NetManager) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.e == nil {
		return nil
	}
	err := n.e.Close()
	n.e = nil
	return err
}
