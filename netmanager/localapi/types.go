// Package localapi is the NetManager's local API on the wire (SPEC §7.1,
// docs/api.md "NetManager local API"): the JSON types of its requests and
// answers and a client for its unix socket. It imports only the standard
// library, so the programs that talk to a node's daemon (the CNI plugin
// cmd/oakwire-cni, the operator's `netmanager status|flows|drops|services`)
// stay small and never link the daemon. The daemon (package netmanager)
// encodes these same types.
package localapi

import "fmt"

// DeployRequest is POST /container/deploy: Oakestra's fields, and ours.
type DeployRequest struct {
	PID            int    `json:"pid"`
	ServiceName    string `json:"serviceName"`
	InstanceNumber int    `json:"instanceNumber"`
	PortMappings   string `json:"portMappings"`
	// Netns is the path of a network namespace (our extension), instead
	// of PID: a named one (/run/netns/NAME), /proc/PID/ns/net, or a
	// descriptor of the caller's (/proc/PID/fd/N) when the daemon cannot
	// see the caller's mounts (NetnsInode then says which namespace).
	Netns string `json:"netns,omitempty"`
	// NetnsInode, when set, is the inode of the namespace the caller
	// means: the daemon refuses a netns path that resolves to another.
	NetnsInode uint64 `json:"netnsInode,omitempty"`
	// ContainerID is the runtime's id of the container (CNI_CONTAINERID);
	// with IfName it names the attachment for /container/undeploy.
	ContainerID string `json:"containerId,omitempty"`
	// IfName is the interface name inside the container (CNI_IFNAME);
	// empty: the daemon's container-if.
	IfName string `json:"ifName,omitempty"`
	// Network is the CNI network the attachment belongs to (its name),
	// so a garbage collection of one network leaves others alone.
	Network string `json:"network,omitempty"`
	// Client asks for a client-only container: no ServiceName or
	// InstanceNumber; the daemon places it as a new instance of its
	// node's client service, so it can reach service IPs.
	Client bool `json:"client,omitempty"`
}

// DeployResponse answers POST /container/deploy. The first three fields
// are Oakestra's; the rest are ours, for CNI results.
type DeployResponse struct {
	ServiceName string `json:"serviceName"`
	NsAddress   string `json:"nsAddress"`
	NsAddressV6 string `json:"nsAddressv6"`

	InstanceNumber int    `json:"instanceNumber"`
	InstanceIP     string `json:"instanceIp,omitempty"`
	InstanceIPv6   string `json:"instanceIpv6,omitempty"`
	IfName         string `json:"ifName,omitempty"`
	MAC            string `json:"mac,omitempty"`
	HostIf         string `json:"hostIf,omitempty"`
	HostMAC        string `json:"hostMac,omitempty"`
	Gateway        string `json:"gateway,omitempty"`
	GatewayV6      string `json:"gatewayv6,omitempty"`
	MTU            int    `json:"mtu,omitempty"`
}

// UndeployRequest is POST /container/undeploy and /docker/undeploy: by
// ServiceName and InstanceNumber (Oakestra), or by ContainerID and IfName
// (ours; IfName empty matches any).
type UndeployRequest struct {
	ServiceName    string `json:"serviceName,omitempty"`
	InstanceNumber int    `json:"instanceNumber"`
	ContainerID    string `json:"containerId,omitempty"`
	IfName         string `json:"ifName,omitempty"`
}

// PortMapping is one host port forwarded to a container port.
type PortMapping struct {
	HostPort      uint16 `json:"host_port"`
	ContainerPort uint16 `json:"container_port"`
	Proto         string `json:"proto"` // tcp or udp
}

func (m PortMapping) String() string {
	return fmt.Sprintf("%d:%d/%s", m.HostPort, m.ContainerPort, m.Proto)
}

// StatusBase is the part of GET /status every reader shares.
type StatusBase struct {
	NodeID     string            `json:"node_id"`
	Registered bool              `json:"registered"`
	Confirmed  bool              `json:"cluster_confirmed"`
	Cluster    string            `json:"cluster"`
	LastError  string            `json:"last_error,omitempty"`
	Uplink     string            `json:"uplink"`
	NodeIP     string            `json:"node_ip"`
	TunnelPort int               `json:"tunnel_port"`
	Subnet     string            `json:"subnet"`
	SubnetV6   string            `json:"subnet_v6"`
	Gateway    string            `json:"gateway"`
	GatewayV6  string            `json:"gateway_v6"`
	GatewayDev string            `json:"gateway_dev"`
	Workers    int               `json:"workers"`
	XDPMode    string            `json:"xdp_mode"`
	MTU        int               `json:"mtu"`
	Uptime     string            `json:"uptime"`
	Deploying  []string          `json:"deploying,omitempty"` // job/instance of deploys waiting for the cluster
	Quarantine int               `json:"quarantined_ns_ips"`
	Dataplane  DataplaneStats    `json:"dataplane"`
	Counters   map[string]uint64 `json:"counters"`
}

// Status is GET /status as a client reads it.
type Status struct {
	StatusBase
	Containers []ContainerInfo `json:"containers"`
	Build      BuildInfo       `json:"build"`
}

// ContainerInfo is one attached container in GET /status.
type ContainerInfo struct {
	Job          string        `json:"service"`
	Instance     int           `json:"instance"`
	PID          int           `json:"pid,omitempty"`
	Netns        string        `json:"netns,omitempty"`
	ContainerID  string        `json:"container_id,omitempty"`
	Network      string        `json:"network,omitempty"`
	Client       bool          `json:"client,omitempty"`
	HostIf       string        `json:"host_if"`
	HostMAC      string        `json:"host_mac"`
	ContIf       string        `json:"container_if"`
	ContMAC      string        `json:"container_mac"`
	NSIP4        string        `json:"ns_ip"`
	NSIP6        string        `json:"ns_ip6"`
	MTU          int           `json:"mtu"`
	PortMappings []PortMapping `json:"port_mappings,omitempty"`
}

// BuildInfo is which build the daemon is (internal/version.Info).
type BuildInfo struct {
	Version   string            `json:"version"`
	Commit    string            `json:"commit"`
	Modified  bool              `json:"modified"`
	GoVersion string            `json:"go_version"`
	BPF       map[string]string `json:"bpf,omitempty"`
}

// DataplaneStats is what /status and /metrics show of the data plane.
type DataplaneStats struct {
	Mode    string `json:"mode"`
	Workers int    `json:"workers"`
	CPUs    []int  `json:"cpus,omitempty"` // worker pinning (empty: none)
	Yield   string `json:"yield,omitempty"`
	// UplinkRxQueues is how many uplink RX queues have an AF_XDP socket
	// (one per queue, up to dataplane.MaxUplinkQueues).
	UplinkRxQueues int               `json:"uplink_rx_queues,omitempty"`
	Sockets        int               `json:"sockets"`
	Tables         map[string]int    `json:"tables"`   // table name → entries
	Counters       map[string]uint64 `json:"counters"` // counter name (drop reasons, rx, tx) → value
}

// Flow is one live flow of the data plane (GET /flows, netmanager flows).
type Flow struct {
	Proto string `json:"proto"` // tcp, udp, icmp, or the protocol number
	// Src and Dst as the flow arrives: from a container, or out of the
	// tunnel (Ingress).
	Src     string `json:"src"`
	Dst     string `json:"dst"`
	Ingress bool   `json:"ingress,omitempty"`
	// Service is the service IP the client addressed and Job its service
	// (service flows; a reply's restored source on ingress).
	Service string `json:"service,omitempty"`
	Job     string `json:"job,omitempty"`
	// Instance is the instance number the flow's policy chose, and
	// InstanceIP its instance IP (of the flow's family) as the node's
	// service table holds it.
	Instance   *uint32 `json:"instance,omitempty"`
	InstanceIP string  `json:"instance_ip,omitempty"`
	// Tier is "kernel" when the kernel tier executes the flow, else
	// "workers"; Pending: handed to the kernel, gate not open yet.
	Tier    string `json:"tier"`
	Pending bool   `json:"pending,omitempty"`
	// Packets and Bytes the kernel tier executed (the workers do not
	// count per flow).
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	IdleMS  int64  `json:"idle_ms"`
	Closing bool   `json:"closing,omitempty"` // TCP FIN or RST seen
}

// Services is GET /services: the service table the node holds (the
// entries of the services it is interested in, from its cluster).
type Services struct {
	// Epoch and Version are the node's position in its cluster's change
	// stream (the watch); Version 0 before the first answer.
	Epoch    string        `json:"epoch,omitempty"`
	Version  uint64        `json:"version"`
	Peers    int           `json:"peers"`
	Services []ServiceInfo `json:"services"`
}

// ServiceInfo is one service entry the node holds.
type ServiceInfo struct {
	Job string `json:"job"`
	// Version is the cluster's change-stream version that last changed
	// the entry (0: it came from a resolve, not the watch).
	Version uint64 `json:"version"`
	// Source is how the entry arrived: watch, resync or resolve.
	Source string `json:"source"`
	// Local says an instance of it runs on this node (it never expires).
	Local bool `json:"local,omitempty"`
	// IdleMS is the time since its last use (resolve or traffic).
	IdleMS     int64          `json:"idle_ms"`
	ServiceIPs []ServiceIP    `json:"service_ips"`
	Instances  []InstanceInfo `json:"instances"`
}

// ServiceIP is one policy's service IP pair.
type ServiceIP struct {
	Policy string `json:"policy"`
	V4     string `json:"ip,omitempty"`
	V6     string `json:"ip6,omitempty"`
}

// InstanceInfo is one instance of a service entry.
type InstanceInfo struct {
	Number int    `json:"instance"`
	IP     string `json:"ip,omitempty"`
	IPv6   string `json:"ip6,omitempty"`
	NSIP   string `json:"ns_ip,omitempty"`
	NSIPv6 string `json:"ns_ip6,omitempty"`
	// Node is the tunnel endpoint (host:port) it runs at; empty: not
	// placed.
	Node    string `json:"node,omitempty"`
	Cluster string `json:"cluster,omitempty"`
}

// Error is an error answer of the API: {"error", "code"}.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Code    string `json:"code"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("netmanager: %d %s: %s", e.Status, e.Code, e.Message)
}
