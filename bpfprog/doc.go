// Package bpfprog holds Oakwire's XDP steering programs and their Go loader.
//
// Two programs decide, per frame, whether the AF_XDP data plane (package
// fastpath) or the kernel gets it (SPEC §7.2, §7.3; DESIGN "The data path"):
//
//   - xdp_port, on the host-side veth of every container: IPv4/IPv6 whose
//     destination lies in a service range goes to the AF_XDP socket of the rx
//     queue; everything else (ARP, ND, other destinations) passes.
//   - xdp_uplink, on the node's uplink: UDP to this node's IP and tunnel port
//     from a peer goes to the AF_XDP socket of the rx queue; the same from a
//     non-peer is dropped; everything else passes.
//
// A third, xdp_pass, only returns XDP_PASS. veth delivers frames that another
// interface XDP_REDIRECTs into it (devmap) only when its peer runs an XDP
// program; AttachPass puts this one on the peer for that case. Redirecting
// into AF_XDP sockets (XSKMAP) does not need it (measured, DESIGN.md).
//
// The C source is c/steer.c (entry points) and c/steer.h (maps, shared types,
// constants). Shared enums and structs are exported to Go by bpf2go -type;
// counter names are read from the program's BTF, so Go never repeats a C
// number. The bpf2go output (steer_bpfel.go, steer_bpfel.o) is committed;
// see gen.go.
//
// Programs are attached as bpf_links (link.AttachXDP): when the process that
// holds the link dies, the kernel detaches the program, so a crashed daemon
// leaves no steering behind (SPEC §7.2).
//
// Each loaded Objects has its own XSKMAP keyed by rx queue index. veth ports
// all have queue 0, so every container port needs its own Objects; pass
// Config.Share to make those share the service, node and peer maps (and the
// peer bookkeeping) of one owner instead of holding copies.
package bpfprog
