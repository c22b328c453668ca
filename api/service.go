package api

import "net/netip"

// The service table: what root keeps of each service, and clusters and
// nodes receive. Field names follow Oakestra's root service manager, so
// Oakestra components read them.

// ServiceIP is one balancing-policy address pair of a service; IpType is
// the policy's name (package policy).
type ServiceIP struct {
	IpType    string     `json:"IpType"`
	Address   netip.Addr `json:"Address"`
	AddressV6 netip.Addr `json:"Address_v6"`
}

// Instance is one instance of a service and where it currently runs.
// NamespaceIP, HostIP and friends are unset ("" and 0 on the wire) while
// the instance runs on no node.
type Instance struct {
	InstanceNumber int        `json:"instance_number"`
	InstanceIP     netip.Addr `json:"instance_ip"`
	InstanceIPv6   netip.Addr `json:"instance_ip_v6"`
	ClusterID      string     `json:"cluster_id"`
	NamespaceIP    netip.Addr `json:"namespace_ip"`
	NamespaceIPv6  netip.Addr `json:"namespace_ip_v6"`
	HostIP         netip.Addr `json:"host_ip"`
	HostPort       int        `json:"host_port"`
}

// ServiceEntry is the table entry of one service: its service IPs and all
// its instances, ordered by instance number.
type ServiceEntry struct {
	ID string `json:"_id"`
	// SystemJobID is ID again, under the name Oakestra's cluster service
	// manager stores and sends back in net_deploy_status (its job_id).
	SystemJobID   string      `json:"system_job_id,omitempty"`
	JobName       string      `json:"job_name"`
	ServiceIPList []ServiceIP `json:"service_ip_list"`
	InstanceList  []Instance  `json:"instance_list"`
}

// DeployService is the body of root's POST /api/net/service/deploy
// (Oakestra's).
type DeployService struct {
	// ID is Oakestra's _id; older system managers send system_job_id.
	ID          string                `json:"_id"`
	SystemJobID string                `json:"system_job_id"`
	Descriptor  *DeploymentDescriptor `json:"deployment_descriptor" wire:"required"`
}

// DeploymentDescriptor describes the service to deploy: its job name's
// four parts (ServiceName and ServiceNS are accepted for
// MicroserviceName and MicroserviceNamespace), and service IPs asked for
// by the RR and Closest policies. Oakestra sends more fields; they are
// ignored.
type DeploymentDescriptor struct {
	AppName               string     `json:"app_name"`
	AppNS                 string     `json:"app_ns"`
	MicroserviceName      string     `json:"microservice_name"`
	MicroserviceNamespace string     `json:"microservice_namespace"`
	ServiceName           string     `json:"service_name"`
	ServiceNS             string     `json:"service_ns"`
	RRIP                  netip.Addr `json:"RR_ip"`
	RRIPv6                netip.Addr `json:"RR_ip_v6"`
	ClosestIP             netip.Addr `json:"closest_ip"`
	ClosestIPv6           netip.Addr `json:"closest_ip_v6"`
}

// ServiceIPs answers a service deploy.
type ServiceIPs struct {
	JobName       string      `json:"job_name"`
	ServiceIPList []ServiceIP `json:"service_ip_list"`
}

// ServiceRef answers the deletion of a service.
type ServiceRef struct {
	ID      string `json:"_id"`
	JobName string `json:"job_name"`
}

// DeployInstance is the body of POST /api/net/instance/deploy.
type DeployInstance struct {
	// ID is Oakestra's _id; older system managers send system_job_id.
	ID             string `json:"_id"`
	SystemJobID    string `json:"system_job_id"`
	InstanceNumber int    `json:"instance_number" wire:"required"`
	ClusterID      string `json:"cluster_id" wire:"required"`
}

// InstanceAnswer answers an instance deploy: the instance and its job.
type InstanceAnswer struct {
	JobName string `json:"job_name"`
	Instance
}

// InstancesRemoved answers DELETE /api/net/{_id}/{instance_number}.
type InstancesRemoved struct {
	ID      string `json:"_id"`
	JobName string `json:"job_name"`
	Removed []int  `json:"removed"`
}

// DeployStatus is the body of POST /api/net/service/net_deploy_status
// (Oakestra's) and of net_undeploy_status (Oakwire's: only InstanceNumber,
// HostIP and HostPort count).
type DeployStatus struct {
	JobID     string           `json:"job_id" wire:"required"`
	Instances []InstanceStatus `json:"instances"`
}

// InstanceStatus is where one instance runs (or ran).
type InstanceStatus struct {
	InstanceNumber int        `json:"instance_number" wire:"required"`
	NamespaceIP    netip.Addr `json:"namespace_ip,omitzero"`
	NamespaceIPv6  netip.Addr `json:"namespace_ip_v6,omitzero"`
	HostIP         netip.Addr `json:"host_ip" wire:"required"`
	HostPort       Int        `json:"host_port" wire:"required"` // Oakestra sends a string
}

// StatusAnswer answers a deploy or undeploy status: how many instances
// changed.
type StatusAnswer struct {
	JobID   string `json:"job_id"`
	JobName string `json:"job_name"`
	Updated int    `json:"updated"`
}

// ClusterInterest answers DELETE /api/net/interest/{job_name}.
type ClusterInterest struct {
	ClusterID string `json:"cluster_id"`
	JobName   string `json:"job_name"`
}

// Subnets is a worker node's subnet pair: root's answer to GET
// /api/net/subnet, the network addresses as Oakestra sends them and the
// prefixes.
type Subnets struct {
	NodeID       string       `json:"node_id"`
	SubnetAddr   netip.Addr   `json:"subnet_addr"`
	SubnetAddrV6 netip.Addr   `json:"subnet_addr_v6"`
	Subnet       netip.Prefix `json:"subnet"`
	SubnetV6     netip.Prefix `json:"subnet_v6"`
}

// NodeRef answers the removal of a node or of its subnets.
type NodeRef struct {
	NodeID string `json:"node_id"`
}

// AvailableIP answers GET /api/pubnet/service/netinfo/available-ip.
type AvailableIP struct {
	IP netip.Addr `json:"ip"`
}

// JobRef answers the cluster's deployment and job-update endpoints.
type JobRef struct {
	JobName string `json:"job_name"`
}

// Types of a job update (root → cluster).
const (
	TypeDeployment   = "DEPLOYMENT"
	TypeUndeployment = "UNDEPLOYMENT"
)

// JobUpdate is root's change notification to a cluster (POST
// /api/net/job/update, Oakestra's): the cluster fetches the service again.
type JobUpdate struct {
	JobName        string `json:"job_name" wire:"required"`
	InstanceNumber int    `json:"instance_number"`
	Type           string `json:"type"`
}

// Deployment asks the cluster to fetch and cache a service (POST
// /api/net/deployment).
type Deployment struct {
	JobName string `json:"job_name" wire:"required"`
}

// NetInfo answers Oakestra's user-facing GET
// /api/pubnet/service/netinfo/{service_name} and .../ip/{service_ip}: the
// service's name in parts, its service IPs and its instances' addresses
// (where they run is not shown).
type NetInfo struct {
	SystemJobID   string            `json:"system_job_id"`
	ServiceJobID  string            `json:"service_job_id"`
	AppName       string            `json:"app_name"`
	AppNS         string            `json:"app_ns"`
	ServiceName   string            `json:"service_name"`
	ServiceNS     string            `json:"service_ns"`
	ServiceIPList []ServiceIP       `json:"service_ip_list"`
	InstanceList  []NetInfoInstance `json:"instance_list"`
}

// NetInfoInstance is one instance in a NetInfo.
type NetInfoInstance struct {
	ClusterID      string     `json:"cluster_id"`
	InstanceNumber int        `json:"instance_number"`
	InstanceIP     netip.Addr `json:"instance_ip"`
	InstanceIPv6   netip.Addr `json:"instance_ip_v6"`
}

// AvailableServiceIPs answers Oakestra's GET
// /api/pubnet/service/netinfo/available-ip/{x}?v=4|6: the next free service
// IPs, IpType "IPv4" (Address set, Address_v6 null) or "IPv6" (the other
// way round).
type AvailableServiceIPs struct {
	AvailableServiceIPs []AvailableServiceIP `json:"available_service_ips"`
}

// AvailableServiceIP is one address of an AvailableServiceIPs.
type AvailableServiceIP struct {
	Address   *netip.Addr `json:"Address"`
	AddressV6 *netip.Addr `json:"Address_v6"`
	IpType    string      `json:"IpType"`
}
