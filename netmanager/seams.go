package netmanager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/netmanager/localapi"
)

// NodeInfo is what the data plane needs to know about the node. It is
// complete once the node is registered (or re-adopted from the state file).
type NodeInfo struct {
	NodeID     string
	Uplink     string
	NodeIP     netip.Addr
	TunnelPort int
	Subnets    ipam.SubnetPair
	// Gateway4/6 are the containers' gateway (.1, ::1); their MAC is the
	// host-side veth's own (Port.HostMAC).
	Gateway4, Gateway6 netip.Addr
	Workers            int
	WorkerCPUs         []int         // pinning (nil: none)
	WorkerYield        string        // os, go or none
	WorkerSpin         time.Duration // poll spin before sleeping
	XDPMode            string        // generic or native
	// Offload turns the kernel tier on; PinPath is where it pins its
	// links and flows ("" for nothing pinned).
	Offload bool
	PinPath string
	// FlowsFile is where the data plane keeps its flows between a graceful
	// stop and the next start (so flows keep their instances).
	FlowsFile string
	// FlowsPerPort bounds one container's flows in the flow table (0:
	// the data plane's default).
	FlowsPerPort int
	MTU          int
	// Miss, when set, takes the service-range addresses the data plane
	// does not know (destinations, and tunnel sources): the daemon's
	// service feed resolves them through the cluster and pushes the
	// result with SetServices. It never blocks.
	Miss func(netip.Addr)
}

// Port is one container attachment: a veth pair whose host side sits in
// the node namespace (where XDP and the AF_XDP socket attach) and whose
// container side is ContIf inside the container's namespace.
type Port struct {
	Job      string // dotted job name
	Instance int
	// HostIf/HostIndex: the host-side veth in the node namespace.
	HostIf    string
	HostIndex int
	HostMAC   net.HardwareAddr
	// ContIf/ContMAC: the container-side interface (in the container).
	ContIf  string
	ContMAC net.HardwareAddr
	NSIP4   netip.Addr
	NSIP6   netip.Addr
	MTU     int
}

// DataplaneStats is what /status and /metrics show of the data plane.
type DataplaneStats = localapi.DataplaneStats

// Dataplane is the packet path the daemon drives (the AF_XDP fast path in
// production: internal/nodeplane). Calls are serialised by the daemon:
// Start once the node is known, then AddPort/RemovePort as containers come
// and go (also for containers re-adopted at start), SetServices whenever
// the daemon's service view changes (it is a TableSink), Close on
// shutdown. Close must take the data plane down (XDP links, sockets) but
// never touch containers' interfaces or addresses.
type Dataplane interface {
	TableSink
	Start(ctx context.Context, node NodeInfo) error
	// AddPort attaches the data plane to a container port. An error makes
	// the deploy fail and roll back.
	AddPort(p Port) error
	// RemovePort detaches it; the veth is deleted right after.
	RemovePort(p Port) error
	// Stats may be called at any time, also before Start, concurrently
	// with the other methods.
	Stats() DataplaneStats
	// Flows lists the live flows (GET /flows); any time, like Stats.
	Flows() []Flow
	Close() error
}

// Flow is one live flow of the data plane (GET /flows, netmanager flows).
type Flow = localapi.Flow

// Endpoint is where the node receives tunnel traffic: its underlay
// address and tunnel port, and, behind a NAT, the public address and port
// peers send to (PublicPort 0: TunnelPort).
type Endpoint struct {
	NodeIP     netip.Addr
	TunnelPort int
	PublicIP   netip.Addr
	PublicPort int
}

// Registration is the cluster's answer to Register.
type Registration struct {
	Subnets ipam.SubnetPair
}

// Cluster is the daemon's view of its cluster service manager.
type Cluster interface {
	// ServiceSource is the cluster's node-facing service API (resolve,
	// watch, drop interest) the daemon's service feed reads, or nil.
	ServiceSource() ServiceSource
	// Register registers (idempotently, per node id) the node's tunnel
	// endpoint and returns its subnets. Registering again with another
	// endpoint updates it (the node's address changed).
	Register(ctx context.Context, ep Endpoint) (Registration, error)
	// ReportDeployed/ReportUndeployed tell the cluster where an instance
	// runs. A failing ReportDeployed fails the deploy (it rolls back).
	ReportDeployed(ctx context.Context, job string, instance int, nsIP4, nsIP6 netip.Addr) error
	ReportUndeployed(ctx context.Context, job string, instance int) error
	Close() error
}

// ClusterFactory makes the Cluster for address (host, host:port or URL)
// acting for nodeID.
type ClusterFactory func(address, nodeID string) (Cluster, error)

// NodeClientCluster is the production Cluster: the cluster service
// manager's node-facing API through control/nodeclient. Token empty means
// OAKWIRE_TOKEN.
func NodeClientCluster(token string) ClusterFactory {
	return func(address, nodeID string) (Cluster, error) {
		if address == "" {
			return nil, fmt.Errorf("cluster address: empty")
		}
		// Peer deltas: a node's peer set spans clusters and may hold
		// thousands of endpoints; each change sends only what changed.
		return &nodeClientCluster{c: nodeclient.New(address, nodeID, nodeclient.Options{Token: token, PeerDeltas: true})}, nil
	}
}

type nodeClientCluster struct{ c *nodeclient.Client }

// ServiceSource is the client's resolve, watch and interest calls.
func (n *nodeClientCluster) ServiceSource() ServiceSource {
	return NewServiceSource(n.c, 30*time.Second)
}

func (n *nodeClientCluster) Register(ctx context.Context, ep Endpoint) (Registration, error) {
	r, err := n.c.RegisterWith(ctx, api.RegisterRequest{NodeIP: ep.NodeIP, TunnelPort: ep.TunnelPort,
		PublicIP: ep.PublicIP, PublicPort: ep.PublicPort})
	if err != nil {
		return Registration{}, err
	}
	s4, err := subnetOf(r.Subnet, r.SubnetAddr, 26)
	if err != nil {
		return Registration{}, fmt.Errorf("register: subnet: %w", err)
	}
	s6, err := subnetOf(r.SubnetV6, r.SubnetAddrV6, 120)
	if err != nil {
		return Registration{}, fmt.Errorf("register: subnet_v6: %w", err)
	}
	return Registration{Subnets: ipam.SubnetPair{V4: s4, V6: s6}}, nil
}

// subnetOf takes the prefix form, else the network address with the
// node-subnet length.
func subnetOf(prefix netip.Prefix, addr netip.Addr, bits int) (netip.Prefix, error) {
	if prefix.IsValid() {
		return prefix, nil
	}
	if !addr.IsValid() {
		return netip.Prefix{}, errors.New("missing")
	}
	return netip.PrefixFrom(addr, bits), nil
}

func (n *nodeClientCluster) ReportDeployed(ctx context.Context, job string, instance int, nsIP4, nsIP6 netip.Addr) error {
	return n.c.ReportDeployed(ctx, job, instance, nsIP4, nsIP6)
}

func (n *nodeClientCluster) ReportUndeployed(ctx context.Context, job string, instance int) error {
	return n.c.ReportUndeployed(ctx, job, instance)
}

func (n *nodeClientCluster) Close() error { return nil }
