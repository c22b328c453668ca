/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Oakwire XDP steering (steer.c): its counters and its XSKMAP; the rest is
 * node.h, shared with the kernel tier.
 */
#ifndef OAKWIRE_STEER_H
#define OAKWIRE_STEER_H

#include "node.h"

/* Default number of XSKMAP slots (rx queues); the loader may resize. */
#define STEER_DEFAULT_QUEUES 64

/*
 * Why a frame got the verdict it got. One per-CPU counter per reason
 * (katran-style stats array); Go sums over CPUs.
 */
enum steer_reason {
	/* xdp_port: IPv4/IPv6 whose destination is not a service range. */
	STEER_PASSED_NOT_SERVICE = 0,
	/* Handed to bpf_redirect_map and the XSKMAP slot held a socket. */
	STEER_REDIRECTED = 1,
	/* XSKMAP slot empty (no socket for this rx queue): fallback XDP_PASS. */
	STEER_REDIRECT_FAILED = 2,
	/* Truncated Ethernet/VLAN/IP/UDP header or bad IHL: passed to the
	 * kernel, which drops or counts it by its own rules. */
	STEER_MALFORMED = 3,
	/* xdp_uplink: UDP to node IP:tunnel port from a sender that is not a
	 * peer (or a peer with the wrong source port): XDP_DROP. */
	STEER_NOT_PEER = 4,
	/* Not IPv4/IPv6 at all (ARP, LLDP, ...), or an IP packet the program
	 * does not look into (non-first fragment, IPv6 extension headers). */
	STEER_PASSED_OTHER = 5,
	/* xdp_uplink: IP but not UDP to node IP:tunnel port. */
	STEER_PASSED_NOT_TUNNEL = 6,
	/* xdp_port: the source is not the container's own nsIP (IPv4, IPv6,
	 * or an ARP sender address), or the port is unknown: XDP_DROP. IPv6
	 * link-local and unspecified sources pass only to link-local or
	 * multicast destinations (neighbour discovery, MLD). */
	STEER_SPOOFED = 7,
	/* xdp_port: UDP to a tunnel endpoint (a peer's or this node's
	 * address and tunnel port): containers never reach a tunnel port,
	 * so they cannot inject packets into the overlay: XDP_DROP. */
	STEER_TO_TUNNEL = 8,
	STEER_REASON_MAX = 9,
};


/* rx queue index -> AF_XDP socket. Slots without a socket make
 * bpf_redirect_map return its fallback (XDP_PASS). */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_DEFAULT_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

#endif /* OAKWIRE_STEER_H */
