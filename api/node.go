package api

import "net/netip"

// The cluster's node-facing API (/api/node/): Oakwire's replacement of
// Oakestra's MQTT topics.

// Location is a node's reported position (degrees).
type Location struct {
	Lat  float64 `json:"lat" wire:"required"`
	Long float64 `json:"long" wire:"required"`
}

// RegisterRequest registers (or re-registers) a node with its cluster.
// TunnelPort 0 means DefaultTunnelPort. PublicIP and PublicPort are set
// for a node behind a NAT (Oakestra's NodePublicAddress/NodePublicPort):
// peers send its tunnel traffic there and accept it from there; PublicPort
// 0 means TunnelPort.
type RegisterRequest struct {
	NodeID     string     `json:"node_id" wire:"required"`
	NodeIP     netip.Addr `json:"node_ip"`
	TunnelPort int        `json:"tunnel_port"`
	PublicIP   netip.Addr `json:"public_ip,omitzero"`
	PublicPort int        `json:"public_port,omitempty"`
	Location   *Location  `json:"location,omitempty"`
}

// RegisterResponse carries the node's subnets (network address as Oakestra
// sends it, and the prefix), its peers and the current watch position.
type RegisterResponse struct {
	NodeID       string       `json:"node_id"`
	SubnetAddr   netip.Addr   `json:"subnet_addr"`
	SubnetAddrV6 netip.Addr   `json:"subnet_addr_v6"`
	Subnet       netip.Prefix `json:"subnet"`
	SubnetV6     netip.Prefix `json:"subnet_v6"`
	Peers        []Peer       `json:"peers"`
	Epoch        string       `json:"epoch"`
	Version      uint64       `json:"version"`
}

// InstanceReport tells the cluster that an instance started (namespace IPs
// set) or stopped on the reporting node.
type InstanceReport struct {
	NodeID         string     `json:"node_id" wire:"required"`
	JobName        string     `json:"job_name" wire:"required"`
	InstanceNumber int        `json:"instance_number" wire:"required"`
	NamespaceIP    netip.Addr `json:"namespace_ip,omitzero"`
	NamespaceIPv6  netip.Addr `json:"namespace_ip_v6,omitzero"`
}

// InstanceRef answers an instance report.
type InstanceRef struct {
	InstanceNumber int    `json:"instance_number"`
	JobName        string `json:"job_name"`
}

// NodeInterest answers DELETE /api/node/interest/{job_name}.
type NodeInterest struct {
	JobName string `json:"job_name"`
	NodeID  string `json:"node_id"`
}

// PeersResponse is the node's current peer set.
type PeersResponse struct {
	Peers   []Peer `json:"peers"`
	Epoch   string `json:"epoch"`
	Version uint64 `json:"version"`
}

// PeerDelta is one change of a node's peer set: Set holds peers added or
// changed, Del peers gone (only ClusterID and NodeID set).
type PeerDelta struct {
	Set []Peer `json:"set,omitempty"`
	Del []Peer `json:"del,omitempty"`
}

// Change types in a watch answer.
const (
	ChangeService = "service" // Service holds the new entry
	ChangeRemoved = "removed" // the service JobName no longer exists
	ChangePeers   = "peers"   // the peer set changed: Change.PeerDelta, else WatchResponse.Peers
)

// Change is one entry of a node's change stream. A peers change carries
// PeerDelta when the watch asked for deltas (peers=delta) and the cluster
// has one; without it, the peer set is WatchResponse.Peers.
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
