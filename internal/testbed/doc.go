// Package testbed builds emulated Oakwire clusters out of network namespaces
// and veth pairs, for tests, the demo and the benchmarks (DESIGN.md
// "Testbed"). Linux only; it needs root.
//
// A Bed owns every namespace it makes. Names start with the bed's prefix,
// "ow" + 4 random hex digits, then "-" and the role, so beds run in parallel; interface names live
// inside the bed's own namespaces (node uplink "ul0", container "eth0",
// host-side veth "c<name>", bridge "br0" with ports "p<i>") and never touch
// the root namespace.
//
// Safety rules it keeps (DESIGN.md):
//   - nothing is created in the root namespace: namespaces are created on a
//     locked thread that is restored at once, and links are made through
//     netlink handles bound to the bed's namespaces;
//   - node uplinks get 198.18.0.i/24 and 2001:2::i/64 (benchmarking ranges)
//     and no default route; container default routes point at their node;
//     no namespace of a bed can reach the real network;
//   - Close (idempotent, also after a partial failure) kills the processes
//     started with Start by PID and deletes the bed's namespaces by exact
//     name, which removes their links, addresses and routes; NewT registers
//     it with t.Cleanup, CloseOnSignal runs it on Ctrl-C.
//
// Layout (Bridge underlay):
//
//	<prefix>-ul:           br0 ─ p1, p2, ...
//	<prefix>-<node>:       ul0 (198.18.0.i/24) ; c<ctr> ─┐ host-side veth
//	<prefix>-<node>-<ctr>:                        eth0 ──┘ (MTU 1450, default via gw)
package testbed
