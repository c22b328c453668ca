package fastpath

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/oakwire/oakwire/policy"
)

// CsumMode says how a port's egress TCP/UDP checksums are maintained.
type CsumMode uint8

const (
	// CsumRecompute (default) recomputes the full TCP/UDP checksum of
	// packets from the container. Needed while the container's interface
	// has TX checksum offload on: its packets carry CHECKSUM_PARTIAL values
	// (only the pseudo-header sum), which an RFC 1624 update corrupts.
	// First fragments are always updated incrementally (the rest of the
	// datagram is not here; the kernel completes checksums before
	// fragmenting). An IPv4 UDP checksum of 0 stays 0.
	CsumRecompute CsumMode = iota
	// CsumIncremental trusts the container's checksums and updates them
	// per RFC 1624 (the NetManager turned TX offload off on the port).
	CsumIncremental
)

// Location is a node's reported position in degrees.
type Location = policy.Location

// PolicyIP is one service IP pair of a service: the addresses whose use
// selects Policy (a policy's name, package policy).
type PolicyIP struct {
	Policy string
	V4, V6 netip.Addr
}

// ServiceSpec describes a service ("job").
type ServiceSpec struct {
	Job string
	IPs []PolicyIP
}

// InstanceSpec describes one instance of a service, wherever it runs.
type InstanceSpec struct {
	Job      string
	Number   uint32
	IP4, IP6 netip.Addr // instance IPs (stable across migration)
	NS4, NS6 netip.Addr // namespace IPs (where it runs now)
	Node     netip.AddrPort
	Loc      *Location // node location; nil if unknown
	Local    bool      // runs on this node, behind Port
	Port     PortID
}

// PortSpec describes a local container port.
type PortSpec struct {
	ID           PortID
	NS4, NS6     netip.Addr // the container's nsIPs (anti-spoofing, ingress delivery)
	Inst4, Inst6 netip.Addr // the container's own instance IPs (egress source rewrite)
	ContainerMAC [6]byte
	HostMAC      [6]byte // host side of the veth: source MAC of frames we deliver
	Csum         CsumMode
}

// NodeSpec describes this node.
type NodeSpec struct {
	Addr      netip.AddrPort // node IP and tunnel port (default port 50103)
	UplinkMAC [6]byte
	Loc       *Location
	// UnderlayMTU is the uplink's IP MTU (default 1500).
	UnderlayMTU int
	// IngressCsum is how TCP/UDP checksums of tunnel packets delivered to
	// containers are kept: updated (default), or recomputed in full, as
	// the kernel tier needs: a peer's kernel tier forwards a container's
	// CHECKSUM_PARTIAL packets as they are, and over veth they arrive so.
	IngressCsum CsumMode
}

// Ranges are the platform's address ranges. Only destinations inside
// Service4/Service6 are translated.
type Ranges struct {
	Service4, Service6   netip.Prefix // default 10.30.0.0/16, fdff::/16
	Platform4, Platform6 netip.Prefix // default 10.16.0.0/12, fc00::/7
}

// DefaultRanges returns the SPEC §2 defaults.
func DefaultRanges() Ranges {
	return Ranges{
		Service4:  netip.MustParsePrefix("10.30.0.0/16"),
		Service6:  netip.MustParsePrefix("fdff::/16"),
		Platform4: netip.MustParsePrefix("10.16.0.0/12"),
		Platform6: netip.MustParsePrefix("fc00::/7"),
	}
}

// Builder holds plain Go values from which Build makes an immutable Table.
// The control plane fills a fresh Builder for every change.
type Builder struct {
	Node      NodeSpec
	Ranges    Ranges // zero value: DefaultRanges
	Services  []ServiceSpec
	Instances []InstanceSpec
	Ports     []PortSpec
	// Peers is the peer set: tunnel endpoints of the other nodes. Ingress
	// admits tunnel datagrams whose source *address* is a peer's: the UDP
	// source port is a flow hash (and NAT rewrites it), so it is not checked.
	Peers []netip.AddrPort
	// Neighbors maps a next-hop node IP to its MAC on the uplink. A remote
	// send to a node without one is an ActSlowPath verdict.
	Neighbors map[netip.Addr][6]byte
	// KernelNeighbors says the kernel fills in the uplink's MACs (the
	// kernel tier sends the workers' frames with bpf_redirect_neigh):
	// remote sends are ActTxUplink whatever Neighbors holds.
	KernelNeighbors bool
	// Prev, when set, is the table being replaced: policy state (round-robin
	// counters) carries over per service and policy.
	Prev *Table
}

// ErrInvalid wraps every Build validation error.
var ErrInvalid = errors.New("fastpath: invalid table")

// Service is one service in a Table.
type Service struct {
	Job       string
	Instances []int32        // indexes into Table.Instances
	policy    []policy.State // indexed by policy.ID
}

// Instance is one instance in a Table.
type Instance struct {
	InstanceSpec
	Svc     int32 // index into Table.Services
	nodeMAC [6]byte
	hasMAC  bool
	// outerSum is the one's complement sum of the outer IPv4 header's
	// constant words (everything but total length and checksum), so encap
	// finishes the header checksum with one addition.
	outerSum uint32
	// outer4 is the constant part of the Ethernet, outer IPv4 and UDP
	// headers toward the instance's node (IPv4 underlay only): encap copies
	// it and fills in lengths, checksum and source port.
	outer4 [EthernetLen + outerOverhead4]byte
}

// LocalPort is a local container port in a Table.
type LocalPort struct {
	PortSpec
}

type addrKind uint8

const (
	addrService addrKind = iota + 1
	addrInstance
)

type addrEntry struct {
	kind   addrKind
	policy policy.ID // service addresses
	idx    int32     // service or instance index
}

// Table is an immutable snapshot of everything the data path needs. Workers
// load it once per batch; nothing in it changes after Build.
type Table struct {
	Node      NodeSpec
	Ranges    Ranges
	Services  []Service
	Instances []Instance

	addrs   addrTable[addrEntry] // service and instance IPs
	localNS addrTable[PortID]    // local container nsIPs
	ports   []*LocalPort         // indexed by PortID
	peers   addrTable[struct{}]
	// nsNode maps every instance's nsIPs to the address of its node (this
	// node's for local ones): the inner sources a peer may send from,
	// beside instance IPs (Table.sourceNode).
	nsNode addrTable[netip.Addr]
	node4  bool
	maxIP  int // largest inner IP packet that fits the tunnel
	// svc4 is Ranges.Service4 as a network and mask on the address's
	// 32-bit value (inService's IPv4 case without netip.Prefix.Contains);
	// svc4OK is false when Service4 is not a valid IPv4 prefix (contains
	// nothing).
	svc4Net, svc4Mask uint32
	svc4OK            bool
}

// Build validates b and returns the snapshot.
func (b *Builder) Build() (*Table, error) {
	t := &Table{
		Node:    b.Node,
		Ranges:  b.Ranges,
		addrs:   newAddrTable[addrEntry](2 * (len(b.Services) + len(b.Instances))),
		localNS: newAddrTable[PortID](2 * len(b.Ports)),
		peers:   newAddrTable[struct{}](len(b.Peers)),
		nsNode:  newAddrTable[netip.Addr](2 * len(b.Instances)),
	}
	if t.Ranges == (Ranges{}) {
		t.Ranges = DefaultRanges()
	}
	if s4 := t.Ranges.Service4; s4.IsValid() && s4.Addr().Is4() {
		t.svc4OK = true
		t.svc4Mask = ^uint32(0) << (32 - s4.Bits()) // 0 for /0
		t.svc4Net = addr4(s4.Addr()) & t.svc4Mask
	}
	if t.Node.UnderlayMTU == 0 {
		t.Node.UnderlayMTU = 1500
	}
	if !t.Node.Addr.IsValid() {
		return nil, fmt.Errorf("%w: node address unset", ErrInvalid)
	}
	t.node4 = t.Node.Addr.Addr().Is4()
	t.maxIP = t.Node.UnderlayMTU - outerOverhead4
	if !t.node4 {
		t.maxIP = t.Node.UnderlayMTU - outerOverhead6
	}
	if t.maxIP < 576 {
		return nil, fmt.Errorf("%w: underlay MTU %d too small", ErrInvalid, t.Node.UnderlayMTU)
	}
	svcByJob, err := t.addServices(b.Services)
	if err != nil {
		return nil, err
	}
	if err := t.addPorts(b.Ports); err != nil {
		return nil, err
	}
	if err := t.addInstances(b, svcByJob); err != nil {
		return nil, err
	}
	for _, p := range b.Peers {
		t.peers.put(p.Addr(), struct{}{})
	}
	t.preparePolicies(b.Prev)
	return t, nil
}

// addAddr indexes a service or instance IP; the zero Addr is skipped.
func (t *Table) addAddr(a netip.Addr, e addrEntry, what string) error {
	if !a.IsValid() {
		return nil
	}
	if !t.inService(a) {
		return fmt.Errorf("%w: %s %v outside the service ranges", ErrInvalid, what, a)
	}
	if _, dup := t.addrs.get(a); dup {
		return fmt.Errorf("%w: %s %v used twice", ErrInvalid, what, a)
	}
	t.addrs.put(a, e)
	return nil
}

// addServices adds the services and their service IPs, and returns each
// job's index.
func (t *Table) addServices(specs []ServiceSpec) (map[string]int32, error) {
	svcByJob := make(map[string]int32, len(specs))
	t.Services = make([]Service, len(specs))
	for i, s := range specs {
		if _, dup := svcByJob[s.Job]; dup || s.Job == "" {
			return nil, fmt.Errorf("%w: service %q empty or duplicate", ErrInvalid, s.Job)
		}
		svcByJob[s.Job] = int32(i)
		t.Services[i] = Service{Job: s.Job, policy: make([]policy.State, policy.Count())}
		for _, pip := range s.IPs {
			pol, ok := policy.Parse(pip.Policy)
			if !ok || pol.String() != pip.Policy {
				return nil, fmt.Errorf("%w: service %s: unknown policy %q", ErrInvalid, s.Job, pip.Policy)
			}
			e := addrEntry{kind: addrService, policy: pol, idx: int32(i)}
			if err := t.addAddr(pip.V4, e, "service IP"); err != nil {
				return nil, err
			}
			if err := t.addAddr(pip.V6, e, "service IP"); err != nil {
				return nil, err
			}
		}
	}
	return svcByJob, nil
}

// addPorts adds the local ports and their namespace IPs.
func (t *Table) addPorts(specs []PortSpec) error {
	for _, p := range specs {
		if p.ID >= MaxPorts {
			return fmt.Errorf("%w: port %d beyond %d", ErrInvalid, p.ID, MaxPorts)
		}
		for int(p.ID) >= len(t.ports) {
			t.ports = append(t.ports, nil)
		}
		if t.ports[p.ID] != nil {
			return fmt.Errorf("%w: port %d twice", ErrInvalid, p.ID)
		}
		t.ports[p.ID] = &LocalPort{PortSpec: p}
		for _, a := range []netip.Addr{p.NS4, p.NS6} {
			if a.IsValid() {
				if _, dup := t.localNS.get(a); dup {
					return fmt.Errorf("%w: nsIP %v on two ports", ErrInvalid, a)
				}
				t.localNS.put(a, p.ID)
			}
		}
	}
	return nil
}

// addInstances adds b's instances, their instance IPs and the outer
// headers of the remote ones.
func (t *Table) addInstances(b *Builder, svcByJob map[string]int32) error {
	t.Instances = make([]Instance, len(b.Instances))
	for i, in := range b.Instances {
		si, ok := svcByJob[in.Job]
		if !ok {
			return fmt.Errorf("%w: instance %s/%d of unknown service", ErrInvalid, in.Job, in.Number)
		}
		for _, j := range t.Services[si].Instances {
			if t.Instances[j].Number == in.Number {
				return fmt.Errorf("%w: instance %s/%d twice", ErrInvalid, in.Job, in.Number)
			}
		}
		inst := Instance{InstanceSpec: in, Svc: si}
		if in.Local {
			if int(in.Port) >= len(t.ports) || t.ports[in.Port] == nil {
				return fmt.Errorf("%w: local instance %s/%d on unknown port %d", ErrInvalid, in.Job, in.Number, in.Port)
			}
		} else if in.Node.IsValid() {
			inst.nodeMAC, inst.hasMAC = b.Neighbors[in.Node.Addr()]
			inst.hasMAC = inst.hasMAC || b.KernelNeighbors
			if t.node4 && in.Node.Addr().Is4() {
				n, p := t.Node.Addr.Addr().As4(), in.Node.Addr().As4()
				inst.outerSum = 0x4500 + ipv4FlagDF + 64<<8 | ProtoUDP
				inst.outerSum += uint32(Sum(n[:], 0)) + uint32(Sum(p[:], 0))
				inst.outer4 = outerHeader4(inst.nodeMAC, t.Node.UplinkMAC, t.Node.Addr, in.Node)
			}
		} else {
			return fmt.Errorf("%w: remote instance %s/%d without node", ErrInvalid, in.Job, in.Number)
		}
		t.Instances[i] = inst
		for _, a := range []netip.Addr{in.NS4, in.NS6} {
			if a.IsValid() {
				t.nsNode.put(a, inst.nodeAddr(t))
			}
		}
		e := addrEntry{kind: addrInstance, idx: int32(i)}
		if err := t.addAddr(in.IP4, e, "instance IP"); err != nil {
			return err
		}
		if err := t.addAddr(in.IP6, e, "instance IP"); err != nil {
			return err
		}
		t.Services[si].Instances = append(t.Services[si].Instances, int32(i))
	}
	return nil
}

// preparePolicies sets every service's policy states, keeping the counters
// of prev's services of the same job.
func (t *Table) preparePolicies(prev *Table) {
	var prevSvc map[string]*Service
	if prev != nil {
		prevSvc = make(map[string]*Service, len(prev.Services))
		for i := range prev.Services {
			prevSvc[prev.Services[i].Job] = &prev.Services[i]
		}
	}
	var insts []policy.Instance
	for si := range t.Services {
		s := &t.Services[si]
		insts = insts[:0]
		for _, i := range s.Instances {
			in := &t.Instances[i]
			insts = append(insts, policy.Instance{Index: i, Number: in.Number, Local: in.Local, Loc: in.Loc})
		}
		for _, pol := range policy.All() {
			st := &s.policy[pol]
			if p := prevSvc[s.Job]; p != nil {
				st.Counter = p.policy[pol].Counter
			}
			if st.Counter == nil {
				st.Counter = new(atomic.Uint64)
			}
			st.Set = pol.Prepare(t.Node.Loc, insts)
		}
	}
}

// inService reports whether a is in the service ranges (translated).
func (t *Table) inService(a netip.Addr) bool {
	if a.Is4() {
		return t.svc4OK && addr4(a)&t.svc4Mask == t.svc4Net
	}
	return t.Ranges.Service6.Contains(a)
}

// nodeAddr is the address of the node the instance runs on, unmapped.
func (in *Instance) nodeAddr(t *Table) netip.Addr {
	if in.Local {
		return t.Node.Addr.Addr().Unmap()
	}
	return in.Node.Addr().Unmap()
}

// PlacedOn returns the node that the table places address a on (an
// instance IP or an instance's nsIP; see sourceNode).
func (t *Table) PlacedOn(a netip.Addr) (netip.Addr, bool) { return t.sourceNode(a) }

// sourceNode returns the node that the table places address a on when a
// is an instance IP or an instance's nsIP; service IPs and unknown
// addresses have none.
func (t *Table) sourceNode(a netip.Addr) (netip.Addr, bool) {
	if e, ok := t.addrs.get(a); ok {
		if e.kind != addrInstance {
			return netip.Addr{}, false
		}
		return t.Instances[e.idx].nodeAddr(t), true
	}
	return t.nsNode.get(a)
}

// IsServiceIP reports whether a is one of the table's service IPs (not an
// instance IP, not unknown).
func (t *Table) IsServiceIP(a netip.Addr) bool {
	e, ok := t.addrs.get(a)
	return ok && e.kind == addrService
}

// ChosenInstanceIP returns the instance IP (of svc's family) of instance
// number num of the service whose service IP is svc: the reverse key's
// source of a flow to svc that chose num.
func (t *Table) ChosenInstanceIP(svc netip.Addr, num uint32) (netip.Addr, bool) {
	e, ok := t.addrs.get(svc)
	if !ok || e.kind != addrService {
		return netip.Addr{}, false
	}
	ii := t.instanceByNumber(&t.Services[e.idx], num)
	if ii < 0 {
		return netip.Addr{}, false
	}
	ip := t.Instances[ii].IP4
	if svc.Is6() {
		ip = t.Instances[ii].IP6
	}
	return ip, ip.IsValid()
}

// JobOf returns the service ("job") whose service or instance IP a is, or
// "".
func (t *Table) JobOf(a netip.Addr) string {
	e, ok := t.addrs.get(a)
	switch {
	case !ok:
		return ""
	case e.kind == addrService:
		return t.Services[e.idx].Job
	}
	return t.Services[t.Instances[e.idx].Svc].Job
}

// MaxInner is the largest inner IP packet that fits the tunnel.
func (t *Table) MaxInner() int { return t.maxIP }

// Port returns the local port with id, or nil.
func (t *Table) Port(id PortID) *LocalPort {
	if int(id) < len(t.ports) {
		return t.ports[id]
	}
	return nil
}

// instanceByNumber returns the index of instance number n of service s, or -1.
func (t *Table) instanceByNumber(s *Service, n uint32) int32 {
	for _, i := range s.Instances {
		if t.Instances[i].Number == n {
			return i
		}
	}
	return -1
}

// TableHolder publishes the current Table to workers.
type TableHolder struct{ p atomic.Pointer[Table] }

// Load returns the current table (nil before the first Swap).
func (h *TableHolder) Load() *Table { return h.p.Load() }

// Swap installs t and returns the previous table.
func (h *TableHolder) Swap(t *Table) *Table { return h.p.Swap(t) }
