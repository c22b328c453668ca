package api

import "net/netip"

// Clusters and the registry of node tunnel endpoints across clusters
// (docs/api.md, "Peers across clusters").

// Cluster registers or updates a cluster at root (POST /api/net/cluster),
// and is root's answer. Notifications go to
// http://{ClusterAddress}:{ClusterPort}/... (ClusterAddress may be a URL).
type Cluster struct {
	ClusterID      string `json:"cluster_id" wire:"required"`
	ClusterAddress string `json:"cluster_address" wire:"required"`
	ClusterPort    Int    `json:"cluster_port" wire:"required"` // Oakestra may send a string
}

// ClusterRef answers the deregistration of a cluster.
type ClusterRef struct {
	ClusterID string `json:"cluster_id"`
}

// Peer is a tunnel endpoint allowed to send traffic to a node: a node of
// its own cluster or of a cluster root links to it. ClusterID and NodeID
// identify it (a delta's Del names only them); PublicIP and PublicPort are
// reserved for a node behind a NAT, whose packets arrive from another
// address than the one it reports. Port 0 means DefaultTunnelPort.
type Peer struct {
	ClusterID  string     `json:"cluster_id,omitempty"`
	NodeID     string     `json:"node_id,omitempty"`
	IP         netip.Addr `json:"ip,omitzero"`
	Port       int        `json:"port,omitempty"`
	PublicIP   netip.Addr `json:"public_ip,omitzero"`
	PublicPort int        `json:"public_port,omitempty"`
}

// Endpoints is the body of PUT /api/net/cluster/{cluster_id}/nodes: the
// cluster's whole list (ClusterID unset in each).
type Endpoints struct {
	Nodes []Peer `json:"nodes"`
}

// EndpointChanged answers PUT /api/net/cluster/{cluster_id}/nodes/{node_id}.
type EndpointChanged struct {
	Changed   bool   `json:"changed"`
	ClusterID string `json:"cluster_id"`
	NodeID    string `json:"node_id"`
}

// EndpointsChanged answers PUT /api/net/cluster/{cluster_id}/nodes.
type EndpointsChanged struct {
	Changed   bool   `json:"changed"`
	ClusterID string `json:"cluster_id"`
	Nodes     int    `json:"nodes"`
}

// ClusterNode answers DELETE /api/net/cluster/{cluster_id}/nodes/{node_id}.
type ClusterNode struct {
	ClusterID string `json:"cluster_id"`
	NodeID    string `json:"node_id"`
}

// PeerView is root's answer to GET /api/net/cluster/{cluster_id}/peers:
// the endpoints of the clusters linked with ClusterID, and the position of
// this answer in ClusterID's sequence of views (Epoch, Generation), so a
// cluster never replaces a newer view with an older one.
type PeerView struct {
	ClusterID  string         `json:"cluster_id"`
	Epoch      string         `json:"epoch"`
	Generation uint64         `json:"generation"`
	Clusters   []ClusterPeers `json:"clusters"`
}

// ClusterPeers are the tunnel endpoints of one cluster's nodes, sorted by
// node id (ClusterID unset in each: it is the enclosing one), at version
// Version of that cluster's list.
type ClusterPeers struct {
	ClusterID string `json:"cluster_id"`
	Version   uint64 `json:"version"`
	Nodes     []Peer `json:"nodes"`
}

// PeersHint is root's hint to a cluster (POST /api/net/peers/update): fetch
// again the endpoints of Clusters, or of every linked cluster when it is
// empty; with Delta, apply it instead if it follows the version held.
type PeersHint struct {
	Clusters []string        `json:"clusters,omitempty"`
	Delta    *EndpointsDelta `json:"delta,omitempty"`
}

// EndpointsDelta is one change of a cluster's endpoints at root: the
// version it made, endpoints set and node ids deleted.
type EndpointsDelta struct {
	ClusterID string   `json:"cluster_id"`
	Epoch     string   `json:"epoch"`
	Version   uint64   `json:"version"`
	Set       []Peer   `json:"set,omitempty"`
	Del       []string `json:"del,omitempty"`
}

// PeersUpdated answers a peers hint: how many endpoints changed.
type PeersUpdated struct {
	Changed   int    `json:"changed"`
	ClusterID string `json:"cluster_id"`
}
