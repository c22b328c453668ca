//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfprog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// MaxServicePrefixes is how many service prefixes per family the program
// checks (the array length of struct steer_services in c/steer.h).
const MaxServicePrefixes = len(bpfSteerServices{}.V4)

// Objects is one loaded copy of the steering programs and their maps. It is
// safe for concurrent use. Links returned by the Attach methods belong to
// the caller; close them before Close, or the programs stay attached until
// the links are closed or the process exits.
type Objects struct {
	objs    bpfObjects
	sh      *shared
	reasons []string // counter names indexed by enum steer_reason
	queues  int

	closeOnce sync.Once
	closeErr  error
}

// shared is the per-node state that Objects loaded with Config.Share have in
// common with their owner.
type shared struct {
	// mu guards peers and endpoints and serialises writes to the
	// services, node_cfg, peers and endpoints maps, so the maps always
	// mirror them.
	mu sync.Mutex
	// peers maps a peer address to the set of its source ports.
	peers map[netip.Addr]map[uint16]struct{}
	// node is this node's tunnel endpoints (SetNode); peerEnds the peers'
	// (Peer.TunnelPort). The endpoints map holds their union.
	node, peerEnds map[netip.AddrPort]struct{}
}

// Load loads the steering programs into the kernel and initialises the
// service ranges. It attaches nothing.
func Load(cfg Config) (*Objects, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	reasons, err := reasonNames(spec)
	if err != nil {
		return nil, err
	}
	if cfg.Queues < 0 || cfg.MaxPeers < 0 {
		return nil, fmt.Errorf("config: negative Queues (%d) or MaxPeers (%d)", cfg.Queues, cfg.MaxPeers)
	}
	if cfg.Queues > 0 {
		spec.Maps[bpfMapXsks].MaxEntries = uint32(cfg.Queues)
	}
	opts := &ebpf.CollectionOptions{}
	if cfg.Share != nil {
		s := &cfg.Share.objs
		if s.Peers == nil {
			return nil, errors.New("config: Share is closed or not loaded")
		}
		spec.Maps[bpfMapPeers].MaxEntries = s.Peers.MaxEntries()
		// cilium/ebpf clones the replacements; ours close independently.
		opts.MapReplacements = map[string]*ebpf.Map{
			bpfMapServices:  s.Services,
			bpfMapNodeCfg:   s.NodeCfg,
			bpfMapPeers:     s.Peers,
			bpfMapPorts:     s.Ports,
			bpfMapEndpoints: s.Endpoints,
		}
		spec.Maps[bpfMapEndpoints].MaxEntries = s.Endpoints.MaxEntries()
	} else if cfg.MaxPeers > 0 {
		spec.Maps[bpfMapPeers].MaxEntries = uint32(cfg.MaxPeers)
		spec.Maps[bpfMapEndpoints].MaxEntries = uint32(cfg.MaxPeers)
	}

	o := &Objects{reasons: reasons, queues: int(spec.Maps[bpfMapXsks].MaxEntries)}
	if err := spec.LoadAndAssign(&o.objs, opts); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load programs: %+v", verr)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	if cfg.Share != nil {
		o.sh = cfg.Share.sh
		return o, nil
	}
	o.sh = &shared{peers: make(map[netip.Addr]map[uint16]struct{}),
		node: map[netip.AddrPort]struct{}{}, peerEnds: map[netip.AddrPort]struct{}{}}
	ranges := cfg.ServiceRanges
	if ranges == nil {
		ranges = DefaultServiceRanges()
	}
	if err := o.SetServiceRanges(ranges); err != nil {
		return nil, errors.Join(err, o.Close())
	}
	return o, nil
}

// reasonNames reads enum steer_reason from the object's BTF: "STEER_NOT_PEER"
// becomes "not_peer"; STEER_REASON_MAX ends the list.
func reasonNames(spec *ebpf.CollectionSpec) ([]string, error) {
	return enumNames(spec, "steer_reason", "STEER_")
}

// enumNames reads a counter enum from the object's BTF: its values, named
// in lower case without prefix, up to (not including) prefix+"REASON_MAX".
func enumNames(spec *ebpf.CollectionSpec, enum, prefix string) ([]string, error) {
	var e *btf.Enum
	if err := spec.Types.TypeByName(enum, &e); err != nil {
		return nil, fmt.Errorf("btf %s: %w", enum, err)
	}
	var max uint64
	for _, v := range e.Values {
		if v.Name == prefix+"REASON_MAX" {
			max = v.Value
		}
	}
	if max == 0 || max > 256 {
		return nil, fmt.Errorf("btf %s: bad %sREASON_MAX %d", enum, prefix, max)
	}
	names := make([]string, max)
	for _, v := range e.Values {
		if v.Value < max {
			names[v.Value] = strings.ToLower(strings.TrimPrefix(v.Name, prefix))
		}
	}
	return names, nil
}

// sumPerCPU sums slot i of a per-CPU array of uint64.
func sumPerCPU(m *ebpf.Map, i uint32) (uint64, error) {
	var per []uint64
	if err := m.Lookup(i, &per); err != nil {
		return 0, fmt.Errorf("stats map lookup %d: %w", i, err)
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum, nil
}

// PortProgram is xdp_port, for a container's host-side veth.
func (o *Objects) PortProgram() *ebpf.Program { return o.objs.XdpPort }

// UplinkProgram is xdp_uplink, for the node's uplink.
func (o *Objects) UplinkProgram() *ebpf.Program { return o.objs.XdpUplink }

// PassProgram is xdp_pass, which returns XDP_PASS (see AttachPass).
func (o *Objects) PassProgram() *ebpf.Program { return o.objs.XdpPass }

// XSKMap is the XSKMAP, rx queue index → AF_XDP socket.
func (o *Objects) XSKMap() *ebpf.Map { return o.objs.Xsks }

// StatsMap is the per-CPU counter array indexed by enum steer_reason.
func (o *Objects) StatsMap() *ebpf.Map { return o.objs.Stats }

// Queues is the number of XSKMAP slots.
func (o *Objects) Queues() int { return o.queues }

// SetServiceRanges replaces the destinations xdp_port steers to AF_XDP, at
// most MaxServicePrefixes per family. IPv4-mapped IPv6 prefixes count as
// IPv4. The map entry is rewritten in one update; a frame may see either the
// old or the new set (array map values are copied without a lock).
func (o *Objects) SetServiceRanges(prefixes []netip.Prefix) error {
	var s bpfSteerServices
	for _, p := range prefixes {
		if !p.IsValid() {
			return fmt.Errorf("service range %v: invalid prefix", p)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		p = p.Masked()
		if p.Addr().Is4() {
			if int(s.N4) == len(s.V4) {
				return fmt.Errorf("service range %v: %w (max %d IPv4)", p, ErrTooManyPrefixes, len(s.V4))
			}
			a := p.Addr().As4()
			m := mask16(p.Bits())
			s.V4[s.N4] = bpfSteerPrefix4{Addr: word(a[:]), Mask: word(m[:4])}
			s.N4++
			continue
		}
		if int(s.N6) == len(s.V6) {
			return fmt.Errorf("service range %v: %w (max %d IPv6)", p, ErrTooManyPrefixes, len(s.V6))
		}
		s.V6[s.N6] = bpfSteerPrefix6{Addr: words(p.Addr().As16()), Mask: words(mask16(p.Bits()))}
		s.N6++
	}
	o.sh.mu.Lock()
	defer o.sh.mu.Unlock()
	if err := o.objs.Services.Put(uint32(0), &s); err != nil {
		return fmt.Errorf("services map update: %w", err)
	}
	return nil
}

// SetNode sets this node's tunnel endpoint for xdp_uplink: its IPv4 and/or
// IPv6 address (an invalid netip.Addr means none) and the tunnel UDP port
// (0 turns tunnel steering off: everything passes).
func (o *Objects) SetNode(ip4, ip6 netip.Addr, tunnelPort uint16) error {
	var n bpfSteerNode
	if ip4.IsValid() {
		if !ip4.Unmap().Is4() {
			return fmt.Errorf("node ip4 %v: not IPv4", ip4)
		}
		a := ip4.Unmap().As4()
		n.Ip4, n.HasIp4 = word(a[:]), 1
	}
	if ip6.IsValid() {
		if !ip6.Is6() || ip6.Is4In6() {
			return fmt.Errorf("node ip6 %v: not IPv6", ip6)
		}
		n.Ip6, n.HasIp6 = words(ip6.As16()), 1
	}
	n.TunnelPort = tunnelPort
	node := map[netip.AddrPort]struct{}{}
	for _, a := range []netip.Addr{ip4, ip6} {
		if a.IsValid() && tunnelPort != 0 {
			node[netip.AddrPortFrom(a.Unmap(), tunnelPort)] = struct{}{}
		}
	}
	o.sh.mu.Lock()
	defer o.sh.mu.Unlock()
	if err := o.objs.NodeCfg.Put(uint32(0), &n); err != nil {
		return fmt.Errorf("node map update: %w", err)
	}
	old := o.sh.node
	o.sh.node = node
	return o.syncEndpointsLocked(old, o.sh.peerEnds)
}

// syncEndpointsLocked makes the endpoints map the union of sh.node and
// sh.peerEnds, given that it was the union of oldNode and oldPeers: new
// entries first, then the stale ones. sh.mu must be held.
func (o *Objects) syncEndpointsLocked(oldNode, oldPeers map[netip.AddrPort]struct{}) error {
	has := func(a netip.AddrPort) bool {
		_, n := o.sh.node[a]
		_, p := o.sh.peerEnds[a]
		return n || p
	}
	var errs []error
	one := uint8(1)
	for _, set := range []map[netip.AddrPort]struct{}{o.sh.node, o.sh.peerEnds} {
		for a := range set {
			k := endpointKey(a)
			if err := o.objs.Endpoints.Put(&k, &one); err != nil {
				errs = append(errs, fmt.Errorf("endpoints map update %v: %w", a, err))
			}
		}
	}
	for _, set := range []map[netip.AddrPort]struct{}{oldNode, oldPeers} {
		for a := range set {
			if has(a) {
				continue
			}
			k := endpointKey(a)
			if err := o.objs.Endpoints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("endpoints map delete %v: %w", a, err))
			}
		}
	}
	return errors.Join(errs...)
}

func endpointKey(a netip.AddrPort) bpfSteerEndpoint {
	k := bpfSteerEndpoint{Port: a.Port()}
	pk := peerKey(a.Addr())
	k.Family, k.Addr = pk.Family, pk.Addr
	return k
}

// SetPort records the container behind the host-side veth ifindex:
// xdp_port and tc_port drop every frame from it with another source (and
// every frame from a veth with no entry), and the kernel tier delivers
// to it with its host MAC.
func (o *Objects) SetPort(ifindex int, port Port) error {
	var p bpfSteerPort
	if port.IP4.IsValid() {
		a := port.IP4.Unmap().As4()
		p.Ip4, p.HasIp4 = word(a[:]), 1
	}
	if port.IP6.IsValid() {
		p.Ip6, p.HasIp6 = words(port.IP6.As16()), 1
	}
	p.HostMac = port.HostMAC
	if err := o.objs.Ports.Put(uint32(ifindex), &p); err != nil {
		return fmt.Errorf("ports map update %d: %w", ifindex, err)
	}
	return nil
}

// DeletePort forgets the container behind ifindex (not an error if
// unknown).
func (o *Objects) DeletePort(ifindex int) error {
	err := o.objs.Ports.Delete(uint32(ifindex))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ports map delete %d: %w", ifindex, err)
	}
	return nil
}

// ReplacePeers makes the peer set exactly peers. New entries are written
// before stale ones are deleted, so a peer in both sets is never refused.
func (o *Objects) ReplacePeers(peers []Peer) error {
	next := make(map[netip.Addr]map[uint16]struct{}, len(peers))
	for _, p := range peers {
		a, err := peerAddr(p.Addr)
		if err != nil {
			return err
		}
		if next[a] == nil {
			next[a] = make(map[uint16]struct{})
		}
		next[a][p.Port] = struct{}{}
	}
	ends := make(map[netip.AddrPort]struct{}, len(peers))
	for _, p := range peers {
		if p.TunnelPort != 0 {
			ends[netip.AddrPortFrom(p.Addr.Unmap(), p.TunnelPort)] = struct{}{}
		}
	}
	o.sh.mu.Lock()
	defer o.sh.mu.Unlock()
	old := o.sh.peers
	o.sh.peers = next
	var errs []error
	for a := range next {
		errs = append(errs, o.syncPeerLocked(a))
	}
	for a := range old {
		if _, ok := next[a]; !ok {
			errs = append(errs, o.syncPeerLocked(a))
		}
	}
	oldEnds := o.sh.peerEnds
	o.sh.peerEnds = ends
	errs = append(errs, o.syncEndpointsLocked(o.sh.node, oldEnds))
	return errors.Join(errs...)
}

// Peers returns the current peer set, in no particular order.
func (o *Objects) Peers() []Peer {
	o.sh.mu.Lock()
	defer o.sh.mu.Unlock()
	var out []Peer
	for a, ports := range o.sh.peers {
		for port := range ports {
			out = append(out, Peer{Addr: a, Port: port})
		}
	}
	return out
}

// syncPeerLocked writes the map entry of address a from sh.peers: absent if
// a has no ports, the port if it has exactly one, else 0 (any port).
// sh.mu must be held.
func (o *Objects) syncPeerLocked(a netip.Addr) error {
	key := peerKey(a)
	ports := o.sh.peers[a]
	if len(ports) == 0 {
		err := o.objs.Peers.Delete(&key)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("peers map delete %v: %w", a, err)
		}
		return nil
	}
	var v bpfSteerPeer
	if len(ports) == 1 {
		for port := range ports {
			v.Port = port
		}
	}
	if err := o.objs.Peers.Put(&key, &v); err != nil {
		return fmt.Errorf("peers map update %v: %w", a, err)
	}
	return nil
}

func peerAddr(a netip.Addr) (netip.Addr, error) {
	if !a.IsValid() {
		return a, errors.New("peer: invalid address")
	}
	return a.Unmap(), nil
}

func peerKey(a netip.Addr) bpfSteerPeerKey {
	if a.Is4() {
		b := a.As4()
		return bpfSteerPeerKey{Family: bpfSteerFamilySTEER_FAMILY_IPV4, Addr: [4]uint32{word(b[:])}}
	}
	return bpfSteerPeerKey{Family: bpfSteerFamilySTEER_FAMILY_IPV6, Addr: words(a.As16())}
}

// RegisterXSK puts the AF_XDP socket fd into XSKMAP slot queue, so frames
// that arrive on rx queue queue and are steered go to it. The kernel refuses
// a socket that is not bound or has no RX ring.
func (o *Objects) RegisterXSK(queue, fd int) error {
	if queue < 0 || queue >= o.queues {
		return fmt.Errorf("xskmap slot %d: out of range [0,%d)", queue, o.queues)
	}
	if err := o.objs.Xsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("xskmap update slot %d: %w", queue, err)
	}
	return nil
}

// UnregisterXSK empties XSKMAP slot queue; steered frames on that queue then
// pass to the kernel. Emptying an empty slot is not an error.
func (o *Objects) UnregisterXSK(queue int) error {
	err := o.objs.Xsks.Delete(uint32(queue))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("xskmap delete slot %d: %w", queue, err)
	}
	return nil
}

// CounterNames lists the counter names in enum steer_reason order
// ("passed_not_service", "redirected", ...).
func (o *Objects) CounterNames() []string { return append([]string(nil), o.reasons...) }

// Counters returns every counter, summed over CPUs.
func (o *Objects) Counters() (map[string]uint64, error) {
	out := make(map[string]uint64, len(o.reasons))
	for i, name := range o.reasons {
		v, err := o.counter(uint32(i))
		if err != nil {
			return nil, err
		}
		out[name] = v
	}
	return out, nil
}

// Counter returns one counter by name, summed over CPUs.
func (o *Objects) Counter(name string) (uint64, error) {
	for i, n := range o.reasons {
		if n == name {
			return o.counter(uint32(i))
		}
	}
	return 0, fmt.Errorf("counter %q: unknown (have %s)", name, strings.Join(o.reasons, ", "))
}

func (o *Objects) counter(i uint32) (uint64, error) { return sumPerCPU(o.objs.Stats, i) }

// AttachPort attaches xdp_port to ifindex (a container's host-side veth) as
// a bpf_link; it detaches when the link is closed or the process exits.
func (o *Objects) AttachPort(ifindex int, mode Mode) (link.Link, error) {
	return attach(o.objs.XdpPort, "xdp_port", ifindex, mode)
}

// AttachUplink attaches xdp_uplink to ifindex (the node's uplink) as a
// bpf_link.
func (o *Objects) AttachUplink(ifindex int, mode Mode) (link.Link, error) {
	return attach(o.objs.XdpUplink, "xdp_uplink", ifindex, mode)
}

// AttachPass attaches xdp_pass to ifindex as a bpf_link. Use it on the peer
// end of a veth that frames are XDP_REDIRECTed into from another interface
// (devmap/bpf_redirect): veth_xdp_xmit drops such frames (counted as tx
// drops) unless the peer's NAPI runs, which an XDP program on the peer
// guarantees (GRO on the peer can also enable it on newer kernels).
// AF_XDP steering (XSKMAP) does not need it, and neither do frames an
// AF_XDP socket transmits (measured, DESIGN.md).
func (o *Objects) AttachPass(ifindex int, mode Mode) (link.Link, error) {
	return attach(o.objs.XdpPass, "xdp_pass", ifindex, mode)
}

func attach(p *ebpf.Program, name string, ifindex int, mode Mode) (link.Link, error) {
	var flags link.XDPAttachFlags
	switch mode {
	case ModeGeneric:
		flags = link.XDPGenericMode
	case ModeNative:
		flags = link.XDPDriverMode
	default:
		return nil, fmt.Errorf("attach %s to ifindex %d: unknown mode %v", name, ifindex, mode)
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: p, Interface: ifindex, Flags: flags})
	if err != nil {
		return nil, fmt.Errorf("attach %s to ifindex %d (%v): %w", name, ifindex, mode, err)
	}
	return l, nil
}

// RefreshUplink loads a fresh copy of xdp_uplink on o's maps and swaps it
// into l, the link of o's uplink program. veth hands an XDP program to its
// RX queues when the program is set (veth_enable_xdp), so a queue that
// becomes active later (ethtool -L on a native-mode veth) runs no program
// until one is set again; updating a link to the program it already has is
// a no-op in the kernel (bpf_xdp_link_update), hence the copy. The swap is
// atomic: no frame misses the program.
func (o *Objects) RefreshUplink(l link.Link) error {
	spec, err := loadBpf()
	if err != nil {
		return fmt.Errorf("load spec: %w", err)
	}
	spec.Maps[bpfMapXsks].MaxEntries = o.objs.Xsks.MaxEntries()
	spec.Maps[bpfMapPeers].MaxEntries = o.objs.Peers.MaxEntries()
	var p struct {
		XdpUplink *ebpf.Program `ebpf:"xdp_uplink"`
	}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		bpfMapXsks: o.objs.Xsks, bpfMapServices: o.objs.Services, bpfMapNodeCfg: o.objs.NodeCfg,
		bpfMapPeers: o.objs.Peers, bpfMapStats: o.objs.Stats, bpfMapPorts: o.objs.Ports, bpfMapEndpoints: o.objs.Endpoints,
	}}
	spec.Maps[bpfMapEndpoints].MaxEntries = o.objs.Endpoints.MaxEntries()
	if err := spec.LoadAndAssign(&p, opts); err != nil {
		return fmt.Errorf("load xdp_uplink: %w", err)
	}
	if err := l.Update(p.XdpUplink); err != nil {
		return errors.Join(fmt.Errorf("update uplink link: %w", err), p.XdpUplink.Close())
	}
	old := o.objs.XdpUplink
	o.objs.XdpUplink = p.XdpUplink
	return old.Close()
}

// Close releases programs and maps (idempotent). Attached links keep their
// program in the kernel until they are closed.
func (o *Objects) Close() error {
	o.closeOnce.Do(func() {
		var errs []error
		for _, c := range []interface{ Close() error }{
			o.objs.XdpPass, o.objs.XdpPort, o.objs.XdpUplink,
			o.objs.NodeCfg, o.objs.Peers, o.objs.Services, o.objs.Stats, o.objs.Xsks,
			o.objs.Ports, o.objs.Endpoints,
		} {
			if err := c.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		o.closeErr = errors.Join(errs...)
	})
	return o.closeErr
}

// word reads 4 network-order bytes as the uint32 whose in-memory layout is
// those bytes, which is how the program compares addresses (no byte swaps).
func word(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

func words(b [16]byte) [4]uint32 {
	return [4]uint32{word(b[0:4]), word(b[4:8]), word(b[8:12]), word(b[12:16])}
}

// mask16 is a 128-bit prefix mask of bits ones, in network order.
func mask16(bits int) [16]byte {
	var m [16]byte
	for i := range m {
		switch {
		case bits >= 8:
			m[i] = 0xff
			bits -= 8
		case bits > 0:
			m[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return m
}
