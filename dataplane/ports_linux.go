//go:build linux

package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
)

// Container ports: attaching one (a socket and xdp_port, or tc_port with
// the kernel tier) and detaching it.

// port is one attached container port.
type port struct {
	id     fastpath.PortID
	cfg    PortConfig
	worker int
	sock   *xsk.Socket // owned by workers[worker]; nil until opened (none with the kernel tier)
	objs   *bpfprog.Objects
	link   link.Link // xdp_port, or the kernel tier's tc_port
}

func (e *Engine) setOwner(id int32, wi int) {
	old := *e.owners.Load()
	own := append([]int16(nil), old...)
	own[id] = int16(wi)
	e.owners.Store(&own)
}

// AddPort attaches the data plane to a container port: an AF_XDP socket on
// queue 0 of the host-side veth (owned by the least loaded worker, fill
// ring primed), its XSKMAP entry, the port in the table, then xdp_port as a
// bpf_link. Other ports are not disturbed. It returns the port's id.
func (e *Engine) AddPort(pc PortConfig) (id fastpath.PortID, err error) {
	if pc.Ifindex <= 0 || (!pc.NS4.IsValid() && !pc.NS6.IsValid()) || pc.Job == "" {
		return 0, fmt.Errorf("%w: port ifindex %d, nsIPs %v %v, job %q", ErrInvalidConfig, pc.Ifindex, pc.NS4, pc.NS6, pc.Job)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, ErrClosed
	}
	load := make([]int, len(e.workers))
	for _, p := range e.ports {
		if p.cfg.Ifindex == pc.Ifindex {
			return 0, fmt.Errorf("%w: ifindex %d", ErrPortExists, pc.Ifindex)
		}
		load[p.worker]++
	}
	if pc.HostMAC == ([6]byte{}) {
		l, err := netlink.LinkByIndex(pc.Ifindex)
		if err != nil {
			return 0, fmt.Errorf("port ifindex %d: %w", pc.Ifindex, err)
		}
		copy(pc.HostMAC[:], l.Attrs().HardwareAddr)
	}
	for id = 0; id < fastpath.MaxPorts; id++ {
		if e.ports[id] == nil {
			break
		}
	}
	if id == fastpath.MaxPorts {
		return 0, fmt.Errorf("%w: more than %d ports", ErrInvalidConfig, fastpath.MaxPorts)
	}
	// The uplink's worker (0) gets ports last when there is a choice.
	wi := 0
	for i := range load {
		if load[i] < load[wi] || (load[i] == load[wi] && wi == 0 && i != 0) {
			wi = i
		}
	}
	p := &port{id: id, cfg: pc, worker: wi}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.teardownPortLocked(p))
		}
	}()
	if e.tier != nil {
		return id, e.addTierPortLocked(p)
	}
	if p.objs, err = bpfprog.Load(bpfprog.Config{Queues: 1, Share: e.upObjs}); err != nil {
		return 0, fmt.Errorf("port %d: load steering: %w", pc.Ifindex, err)
	}
	if p.sock, err = e.openSocket(wi, int32(id), pc.Ifindex, 0); err != nil {
		return 0, fmt.Errorf("port %d: socket: %w", pc.Ifindex, err)
	}
	e.ports[id] = p
	e.publishPortsLocked()
	e.setOwner(int32(id), wi)
	if err := p.objs.RegisterXSK(0, p.sock.Fd()); err != nil {
		return 0, fmt.Errorf("port %d: xskmap: %w", pc.Ifindex, err)
	}
	if err := p.objs.SetPort(pc.Ifindex, bpfprog.Port{IP4: pc.NS4, IP6: pc.NS6, HostMAC: pc.HostMAC}); err != nil {
		return 0, fmt.Errorf("port %d: %w", pc.Ifindex, err)
	}
	if err := e.rebuildLocked(); err != nil {
		return 0, err
	}
	if p.link, err = p.objs.AttachPort(pc.Ifindex, e.cfg.Mode); err != nil {
		return 0, err
	}
	e.nPorts.Store(int64(len(e.ports)))
	return id, nil
}

// addTierPortLocked attaches a port to the kernel tier: its addresses and
// MAC in the node maps, the port in the table, then tc_port on its host
// veth. No socket: its frames come punted, and the workers' frames to it
// leave through the punt device.
func (e *Engine) addTierPortLocked(p *port) error {
	pc := p.cfg
	if err := e.upObjs.SetPort(pc.Ifindex, bpfprog.Port{IP4: pc.NS4, IP6: pc.NS6, HostMAC: pc.HostMAC}); err != nil {
		return fmt.Errorf("port %d: %w", pc.Ifindex, err)
	}
	e.ports[p.id] = p
	e.publishPortsLocked()
	if err := e.rebuildLocked(); err != nil {
		return err
	}
	l, err := e.tier.AttachPort(pc.Ifindex)
	if err != nil {
		return err
	}
	p.link = l
	e.nPorts.Store(int64(len(e.ports)))
	return nil
}

// publishPortsLocked refreshes the PortID ↔ ifindex snapshots. e.mu held.
func (e *Engine) publishPortsLocked() {
	px := make([]int32, fastpath.MaxPorts)
	xp := make(map[int32]fastpath.PortID, len(e.ports))
	for id, p := range e.ports {
		px[id] = int32(p.cfg.Ifindex)
		xp[int32(p.cfg.Ifindex)] = id
	}
	e.portIfx.Store(&px)
	e.ifxPort.Store(&xp)
}

// RemovePort detaches port id: link first (no more steering), then the
// table entry, the socket and the programs.
func (e *Engine) RemovePort(id fastpath.PortID) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.ports[id]
	if p == nil {
		return fmt.Errorf("%w: %d", ErrNoPort, id)
	}
	return e.teardownPortLocked(p)
}

// PortByIfindex returns the id of the port on ifindex.
func (e *Engine) PortByIfindex(ifindex int) (fastpath.PortID, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, p := range e.ports {
		if p.cfg.Ifindex == ifindex {
			return id, true
		}
	}
	return 0, false
}

func (e *Engine) teardownPortLocked(p *port) error {
	var errs []error
	if p.link != nil {
		if e.tier != nil {
			errs = append(errs, p.link.Unpin()) // the port goes, not the daemon
		}
		errs = append(errs, p.link.Close())
		p.link = nil
	}
	if e.tier != nil {
		if m := e.tm.Load(); m != nil {
			m.withdrawIf(p.cfg.Ifindex)
		}
		errs = append(errs, e.upObjs.DeletePort(p.cfg.Ifindex))
	}
	if e.ports[p.id] == p {
		delete(e.ports, p.id)
		e.publishPortsLocked()
		e.setOwner(int32(p.id), -1)
		errs = append(errs, e.rebuildLocked())
		if p.sock != nil {
			if err := e.closeSocket(p.worker, p.sock); err != nil && !errors.Is(err, ErrClosed) {
				errs = append(errs, err)
			}
		}
		p.sock = nil
	}
	if p.objs != nil {
		errs = append(errs, p.objs.DeletePort(p.cfg.Ifindex), p.objs.Close())
		p.objs = nil
	}
	e.nPorts.Store(int64(len(e.ports)))
	return errors.Join(errs...)
}
