// Package perf is Oakwire's performance suite (SPEC §9, DESIGN.md "Numbers
// to beat, and how they were measured"): it builds two emulated nodes in
// network namespaces (internal/testbed), sets up a dataplane between a client
// container on node A and a server container on node B, runs bounded load
// tools inside the containers, and writes a report (Markdown, JSON, PNG).
//
// Dataplanes implement Dataplane; the suite knows four (Dataplanes):
// "routed" (plain IP routing, no overlay, no NAT: the limit), "kernel"
// (flannel-shaped VXLAN plus kube-proxy-shaped iptables DNAT: what
// Kubernetes users run), and Oakwire as an operator deploys it, the real
// daemons with their defaults (Oakwire): "oakwire" (kernel tier on, the
// default) and "oakwire-afxdp" (the AF_XDP worker pool alone).
//
// The method copies DESIGN.md: 64-byte UDP with sendmmsg/recvmmsg batches of
// 64 and a large receive buffer, warm-up packets and a pause before the
// clock, the flood sender and the sink pinned to different CPUs, the
// request/response client and server pinned to one CPU, Go load tools with
// GOMAXPROCS=1, dataplanes interleaved with their order rotated each round,
// medians and spread (min–max) over the rounds.
//
// The load tools (udpflood, udpsink, udpecho, rr) are internal/loadtool's
// Bench suite; cmd/netbench exposes them as subcommands, and the suite runs
// them (Config.Tool) inside the containers with `ip netns exec`.
//
// Safety (DESIGN.md "Testbed"): every address of the overlay exists only
// inside the bed's namespaces, nodes have no default route, every load loop
// is bounded in packets and seconds, and every bed is closed at the end,
// on failure and on Ctrl-C.
package perf
