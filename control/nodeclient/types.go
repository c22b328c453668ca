package nodeclient

// Wire types of the control plane's JSON API. Field names of the service
// entry follow Oakestra's root service manager so Oakestra components can
// read them; the node-facing messages are Oakwire's own.

// ServiceIP is one balancing-policy address pair of a service.
type ServiceIP struct {
	IpType    string `json:"IpType"`
	Address   string `json:"Address"`
	AddressV6 string `json:"Address_v6"`
}

// Instance is one instance of a service and where it currently runs.
// NamespaceIP, HostIP and friends are empty while the instance is not
// running on any node.
type Instance struct {
	InstanceNumber int    `json:"instance_number"`
	InstanceIP     string `json:"instance_ip"`
	InstanceIPv6   string `json:"instance_ip_v6"`
	ClusterID      string `json:"cluster_id"`
	NamespaceIP    string `json:"namespace_ip"`
	NamespaceIPv6  string `json:"namespace_ip_v6"`
	HostIP         string `json:"host_ip"`
	HostPort       int    `json:"host_port"`
}

// ServiceEntry is the table entry of one service: its service IPs and all
// its instances, ordered by instance number.
type ServiceEntry struct {
	ID            string      `json:"_id"`
	JobName       string      `json:"job_name"`
	ServiceIPList []ServiceIP `json:"service_ip_list"`
	InstanceList  []Instance  `json:"instance_list"`
}

// Location is a node's reported position (degrees).
type Location struct {
	Lat  float64 `json:"lat"`
	Long float64 `json:"long"`
}

// Peer is a tunnel endpoint allowed to send traffic to a node: a node of
// the node's own cluster or of a cluster root links to it (docs/api.md,
// "Peers"). ClusterID and NodeID identify it (a peer-set delta names them);
// PublicIP and PublicPort are reserved for a node behind a NAT, whose
// packets arrive from another address than the one it reports (empty and 0
// until that is built).
type Peer struct {
	ClusterID  string `json:"cluster_id,omitempty"`
	NodeID     string `json:"node_id,omitempty"`
	IP         string `json:"ip,omitempty"`
	Port       int    `json:"port,omitempty"`
	PublicIP   string `json:"public_ip,omitempty"`
	PublicPort int    `json:"public_port,omitempty"`
}

// PeerDelta is one change of a node's peer set: Set holds peers added or
// changed, Del peers gone (only ClusterID and NodeID set).
type PeerDelta struct {
	Set []Peer `json:"set,omitempty"`
	Del []Peer `json:"del,omitempty"`
}

// RegisterRequest registers (or re-registers) a node with its cluster.
type RegisterRequest struct {
	NodeID     string    `json:"node_id"`
	NodeIP     string    `json:"node_ip"`
	TunnelPort int       `json:"tunnel_port"`
	Location   *Location `json:"location,omitempty"`
}

// RegisterResponse carries the node's subnets (network address as Oakestra
// sends it, and the prefix), its peers and the current watch position.
type RegisterResponse struct {
	NodeID       string `json:"node_id"`
	SubnetAddr   string `json:"subnet_addr"`
	SubnetAddrV6 string `json:"subnet_addr_v6"`
	Subnet       string `json:"subnet"`
	SubnetV6     string `json:"subnet_v6"`
	Peers        []Peer `json:"peers"`
	Epoch        string `json:"epoch"`
	Version      uint64 `json:"version"`
}

// InstanceReport tells the cluster that an instance started (namespace IPs
// set) or stopped on the reporting node.
type InstanceReport struct {
	NodeID         string `json:"node_id"`
	JobName        string `json:"job_name"`
	InstanceNumber int    `json:"instance_number"`
	NamespaceIP    string `json:"namespace_ip,omitempty"`
	NamespaceIPv6  string `json:"namespace_ip_v6,omitempty"`
}

// PeersResponse is the node's current peer set.
type PeersResponse struct {
	Peers   []Peer `json:"peers"`
	Epoch   string `json:"epoch"`
	Version uint64 `json:"version"`
}

// Change types in a watch answer.
const (
	ChangeService = "service" // Service holds the new entry
	ChangeRemoved = "removed" // the service JobName no longer exists
	ChangePeers   = "peers"   // the peer set changed: Change.PeerDelta, else WatchResponse.Peers
)

// Change is one entry of a node's change stream. A peers change carries
// PeerDelta when the watch asked for deltas (Options.PeerDeltas) and the
// cluster has one; without it, the peer set is WatchResponse.Peers.
type Change struct {
	Version   uint64        `json:"version"`
	Type      string        `json:"type"`
	JobName   string        `json:"job_name,omitempty"`
	Service   *ServiceEntry `json:"service,omitempty"`
	PeerDelta *PeerDelta    `json:"peer_delta,omitempty"`
}

// WatchResponse answers a watch. Changes are in version order; Version is
// the position to pass as since next time. When Resync is set, Changes is
// empty and Services holds the full current entry of every service the node
// is interested in: the node must replace its tables with it. Peers is set
// on a resync and whenever a peers change is among Changes (the current set)
// except when every such change carries a PeerDelta (a watch that asked for
// deltas): then Peers is absent and the deltas apply in order.
type WatchResponse struct {
	Epoch    string         `json:"epoch"`
	Version  uint64         `json:"version"`
	Resync   bool           `json:"resync"`
	Changes  []Change       `json:"changes"`
	Services []ServiceEntry `json:"services,omitempty"`
	Peers    []Peer         `json:"peers,omitempty"`
}

// ErrorBody is every error answer of the control plane.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}
