// Package netmanager is the node side of Oakwire's NetManager (SPEC §7):
// the local HTTP API on a unix socket (Oakestra's paths), node setup
// (gateway, forwarding, masquerade, platform routes), container attach
// (veth pairs, namespace IPs from ipam.NodeSubnet, port mappings as nftables
// DNAT), the state file that lets a restarted daemon re-adopt its
// containers, and `netmanager teardown`.
//
// The packet path and the cluster are behind two interfaces, Dataplane and
// Cluster, so the AF_XDP fast path and the cluster client plug in without
// this package knowing them.
//
// The API's wire types live in netmanager/localapi (standard library
// only), with a client of the socket that the CNI plugin (cmd/oakwire-cni)
// and the operator's subcommands (`netmanager status|flows|drops|services`)
// use. Containers a runtime attaches without naming a service become
// instances of the node's client service at root (clientsvc.go); the data
// plane's flows are sampled into per-service counters (flowmetrics.go).
//
// Gateway design: the node subnet's gateway (.1/26 and ::1/120) lives on a
// dummy link "ow0" in the node namespace. Containers get their nsIPs as
// /32 and /128 on a point-to-point veth, a default route "via gateway
// onlink", and a permanent neighbour entry mapping the gateway to the
// host-side veth's MAC; the host side has a /32 and /128 route to the
// container and a permanent neighbour entry for its MAC. So no ARP or NDP
// is needed on container ports at all (no proxy_arp, no proxy_ndp), and the
// data plane sees every packet a container sends to the gateway arrive on
// that container's own host-side veth. MACs are derived from the IPv4
// nsIP (container 0a:58:<ip>, host 0e:58:<ip>), so re-adopting or
// re-deploying reproduces them.
//
// Everything acts on the network namespace the daemon runs in (the node);
// Linux only (the _default.go files return ErrNotSupported).
package netmanager
