//go:build linux

package dataplane

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
)

// The control side's view turned into the fast path's table, and the
// uplink neighbours it needs.

// SetServices replaces the control side's view: every service, every
// instance (local ones are matched to ports by Job and Number; their
// Local, Port and nsIP fields are filled in by the engine, and instances on
// this node without a port are left out), and the peer set (tunnel
// endpoints of the other nodes; source ports are not checked). A new
// snapshot is built and swapped atomically; the peers go to the steering
// program's peer map too. On error nothing changes.
func (e *Engine) SetServices(services []fastpath.ServiceSpec, instances []fastpath.InstanceSpec, peers []netip.AddrPort) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	oldS, oldI, oldP := e.services, e.instances, e.peers
	e.services = append([]fastpath.ServiceSpec(nil), services...)
	e.instances = append([]fastpath.InstanceSpec(nil), instances...)
	e.peers = append([]netip.AddrPort(nil), peers...)
	for i := range e.instances {
		if n := e.instances[i].Node; n.IsValid() && n.Port() == 0 {
			e.instances[i].Node = netip.AddrPortFrom(n.Addr(), DefaultTunnelPort)
		}
	}
	if err := e.rebuildLocked(); err != nil {
		e.services, e.instances, e.peers = oldS, oldI, oldP
		return err
	}
	bp := make([]bpfprog.Peer, 0, len(peers))
	for _, p := range peers {
		bp = append(bp, bpfprog.Peer{Addr: p.Addr().Unmap(), TunnelPort: cmp.Or(p.Port(), DefaultTunnelPort)})
	}
	if err := e.upObjs.ReplacePeers(bp); err != nil {
		return fmt.Errorf("peer map: %w", err)
	}
	e.nServices.Store(int64(len(services)))
	e.nInstances.Store(int64(len(instances)))
	e.nPeers.Store(int64(len(peers)))
	return nil
}

// Table returns the current snapshot (read-only).
func (e *Engine) Table() *fastpath.Table { return e.tables.Load() }

type jobNum struct {
	job string
	num uint32
}

// rebuildLocked builds a snapshot from the control state and swaps it in.
func (e *Engine) rebuildLocked() error {
	b := fastpath.Builder{
		Node: fastpath.NodeSpec{
			Addr:        netip.AddrPortFrom(e.cfg.NodeIP, e.cfg.TunnelPort),
			UplinkMAC:   e.uplinkMAC,
			UnderlayMTU: e.mtu,
			// A peer's kernel tier forwards CHECKSUM_PARTIAL packets as
			// they are (over veth they arrive so): recompute, at the cost
			// of one checksum per delivered packet.
			IngressCsum: fastpath.CsumRecompute,
		},
		Ranges:          e.cfg.Ranges,
		Services:        e.services,
		Peers:           e.peers,
		Prev:            e.tables.Load(),
		KernelNeighbors: e.cfg.Offload,
	}
	b.Instances = make([]fastpath.InstanceSpec, 0, len(e.instances)) // no reallocation: inst points into it
	local := make(map[jobNum]*port, len(e.ports))
	for _, p := range e.ports {
		local[jobNum{p.cfg.Job, p.cfg.Instance}] = p
	}
	inst := make(map[jobNum]*fastpath.InstanceSpec, len(e.instances))
	want := map[netip.Addr]bool{}
	for i := range e.instances {
		in := e.instances[i]
		k := jobNum{in.Job, in.Number}
		if p := local[k]; p != nil {
			in.Local, in.Port, in.NS4, in.NS6 = true, p.id, p.cfg.NS4, p.cfg.NS6
			in.Node = netip.AddrPortFrom(e.cfg.NodeIP, e.cfg.TunnelPort)
		} else {
			if !in.Node.IsValid() || in.Node.Addr().Unmap() == e.cfg.NodeIP {
				continue // here but not attached (yet), or nowhere
			}
			in.Local, in.Port = false, 0
			want[in.Node.Addr().Unmap()] = true
		}
		b.Instances = append(b.Instances, in)
		inst[k] = &b.Instances[len(b.Instances)-1]
	}
	ids := make([]int, 0, len(e.ports))
	for id := range e.ports {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	for _, id := range ids {
		p := e.ports[fastpath.PortID(id)]
		ps := fastpath.PortSpec{
			ID: p.id, NS4: p.cfg.NS4, NS6: p.cfg.NS6,
			ContainerMAC: p.cfg.ContainerMAC, HostMAC: p.cfg.HostMAC, Csum: p.cfg.Csum,
		}
		if in := inst[jobNum{p.cfg.Job, p.cfg.Instance}]; in != nil {
			ps.Inst4, ps.Inst6 = in.IP4, in.IP6
		}
		b.Ports = append(b.Ports, ps)
	}
	// A remote node's frames go to the MAC of the next hop towards it: the
	// node itself when it is on the uplink's link, else the route's gateway
	// (a router, a NAT). The table is keyed by node; neighbours by hop.
	hops := make(map[netip.Addr]bool, len(want))
	b.Neighbors = make(map[netip.Addr][6]byte, len(want))
	for a := range want {
		hop := e.nextHop(a)
		hops[hop] = true
		if m, ok := e.neigh[hop]; ok {
			b.Neighbors[a] = m
		}
	}
	t, err := b.Build()
	if err != nil {
		return fmt.Errorf("table: %w", err)
	}
	e.tables.Swap(t)
	e.wantNeigh = hops
	if e.slow != nil {
		e.slow.tableChanged() // held packets may be known now
	}
	if m := e.tm.Load(); m != nil {
		m.changed() // withdraw the executed flows the change made wrong
	}
	return nil
}

// nextHop is the neighbour that frames to node dst go to on the uplink: the
// gateway of the kernel's route to dst, or dst itself when the route has
// none (on-link) or cannot be read.
func (e *Engine) nextHop(dst netip.Addr) netip.Addr {
	rs, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(rs) == 0 || rs[0].Gw == nil {
		return dst
	}
	if gw, ok := netip.AddrFromSlice(rs[0].Gw); ok {
		return gw.Unmap()
	}
	return dst
}

// learnNeigh records a next-hop MAC on the uplink and rebuilds the table if
// it was needed and changed.
func (e *Engine) learnNeigh(ip netip.Addr, mac net.HardwareAddr) {
	if len(mac) != 6 {
		return
	}
	ip = ip.Unmap()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	m := [6]byte(mac)
	if old, ok := e.neigh[ip]; ok && old == m {
		return
	}
	e.neigh[ip] = m
	if e.wantNeigh[ip] {
		_ = e.rebuildLocked() // only the MAC changed: cannot fail where the last build did not
	}
}

// scanNeighLocked reads the uplink's neighbour table.
func (e *Engine) scanNeighLocked() {
	ns, err := netlink.NeighList(e.uplinkIdx, netlink.FAMILY_ALL)
	if err != nil {
		return
	}
	for _, n := range ns {
		if usableNeigh(n.State) && len(n.HardwareAddr) == 6 {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				e.neigh[a.Unmap()] = [6]byte(n.HardwareAddr)
			}
		}
	}
}

func usableNeigh(state int) bool {
	return state&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0
}

// neighLoop follows the uplink's neighbour table: netlink updates, plus a
// rescan shortly after the slow path sent through the kernel and every
// second while a needed neighbour is missing.
func (e *Engine) neighLoop() {
	ch := make(chan netlink.NeighUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.NeighSubscribe(ch, done); err != nil {
		ch = nil
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var rescan <-chan time.Time
	for {
		select {
		case <-e.stop:
			return
		case u, ok := <-ch:
			if !ok {
				ch = nil
				continue
			}
			if u.Type == unix.RTM_NEWNEIGH && u.LinkIndex == e.uplinkIdx && usableNeigh(u.State) {
				if a, ok := netip.AddrFromSlice(u.IP); ok {
					e.learnNeigh(a, u.HardwareAddr)
				}
			}
		case <-e.slow.neighKick:
			rescan = time.After(20 * time.Millisecond)
		case <-rescan:
			rescan = nil
			e.rescanIfMissing()
		case <-tick.C:
			e.rescanIfMissing()
		}
	}
}

func (e *Engine) rescanIfMissing() {
	e.mu.Lock()
	defer e.mu.Unlock()
	missing := false
	for a := range e.wantNeigh {
		if _, ok := e.neigh[a]; !ok {
			missing = true
		}
	}
	if !missing || e.closed {
		return
	}
	e.scanNeighLocked()
	_ = e.rebuildLocked()
}
