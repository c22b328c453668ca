/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Oakwire XDP steering: maps, shared types, constants and packet headers.
 *
 * Everything Go needs to know about (struct layouts, enum values) is defined
 * here once and exported to Go by bpf2go -type; Go never repeats a number.
 *
 * Byte order contract (Go's loader follows it):
 *   - addresses and masks are stored in network byte order, exactly as they
 *     appear on the wire, so the program compares them without swapping;
 *   - ports are stored in host byte order.
 */
#ifndef OAKWIRE_STEER_H
#define OAKWIRE_STEER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* ---- constants ----
 * Go does not repeat these: it reads the array lengths of the exported
 * structs and the MaxEntries of the map specs. */

/* Service prefixes per family in struct steer_services. */
#define STEER_MAX_SERVICE_PREFIXES 8
/* Default number of XSKMAP slots (rx queues); the loader may resize. */
#define STEER_DEFAULT_QUEUES 64
/* Default capacity of the peer map; the loader may resize. */
#define STEER_DEFAULT_PEERS 16384

/* Address family tags used in struct steer_peer_key. */
enum steer_family {
	STEER_FAMILY_IPV4 = 4,
	STEER_FAMILY_IPV6 = 6,
};

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

/* ---- shared structs ---- */

/* An IPv4 prefix: addr & mask == addr, both network byte order. */
struct steer_prefix4 {
	__u32 addr;
	__u32 mask;
};

/* An IPv6 prefix as four network-order 32-bit words each. */
struct steer_prefix6 {
	__u32 addr[4];
	__u32 mask[4];
};

/* Single entry of map steer_svc: destinations steered by xdp_port. */
struct steer_services {
	__u32 n4; /* valid entries in v4, <= STEER_MAX_SERVICE_PREFIXES */
	__u32 n6; /* valid entries in v6, <= STEER_MAX_SERVICE_PREFIXES */
	struct steer_prefix4 v4[STEER_MAX_SERVICE_PREFIXES];
	struct steer_prefix6 v6[STEER_MAX_SERVICE_PREFIXES];
};

/* Single entry of map steer_node: this node's tunnel endpoint. */
struct steer_node {
	__u32 ip4;         /* network order; valid if has_ip4 */
	__u32 ip6[4];      /* network order; valid if has_ip6 */
	__u16 tunnel_port; /* host order; 0 = tunnel steering off */
	__u8 has_ip4;
	__u8 has_ip6;
};

/* Key of map steer_peers. Unused address bytes must be zero. */
struct steer_peer_key {
	enum steer_family family; /* 4 bytes */
	__u32 addr[4]; /* network order; IPv4 in addr[0] */
};

/* Value of map steer_peers. */
struct steer_peer {
	__u16 port; /* host order; 0 = any source port */
	__u16 pad;
};

/* Value of map steer_ports, keyed by the host-side veth's ifindex: the
 * container's own addresses, the only sources it may send from. */
struct steer_port {
	__u32 ip4;    /* network order; valid if has_ip4 */
	__u32 ip6[4]; /* network order; valid if has_ip6 */
	__u8 has_ip4;
	__u8 has_ip6;
	__u16 pad;
};

/* Key of map steer_endpoints: a tunnel endpoint (node address and the UDP
 * port it receives tunnel traffic on). Unused bytes must be zero. */
struct steer_endpoint {
	enum steer_family family; /* 4 bytes */
	__u32 addr[4];            /* network order; IPv4 in addr[0] */
	__u16 port;               /* host order */
	__u16 pad;
};

/* ---- maps ---- */

/* rx queue index -> AF_XDP socket. Slots without a socket make
 * bpf_redirect_map return its fallback (XDP_PASS). */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_DEFAULT_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_services);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_node);
} node_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_DEFAULT_PEERS);
	__type(key, struct steer_peer_key);
	__type(value, struct steer_peer);
} peers SEC(".maps");

/* Default capacity of the ports map (containers per node). */
#define STEER_DEFAULT_PORTS 4096

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_DEFAULT_PORTS);
	__type(key, __u32);
	__type(value, struct steer_port);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_DEFAULT_PEERS);
	__type(key, struct steer_endpoint);
	__type(value, __u8);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* ---- packet headers (wire layout; no host headers needed) ---- */

#define STEER_ETH_P_IP 0x0800
#define STEER_ETH_P_IPV6 0x86DD
#define STEER_ETH_P_8021Q 0x8100
#define STEER_ETH_P_8021AD 0x88A8
#define STEER_ETH_P_ARP 0x0806
#define STEER_IPPROTO_UDP 17
#define STEER_IP_MF 0x2000
#define STEER_IP_OFFSET 0x1FFF

struct steer_eth {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
} __attribute__((packed));

struct steer_vlan {
	__be16 tci;
	__be16 proto;
} __attribute__((packed));

struct steer_ip4 {
	__u8 vihl; /* version << 4 | ihl */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

struct steer_ip6 {
	__be32 vtcfl; /* version, traffic class, flow label */
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u32 saddr[4];
	__u32 daddr[4];
};

/* ARP for IPv4 over Ethernet (RFC 826). */
struct steer_arp {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

struct steer_udp {
	__be16 source;
	__be16 dest;
	__be16 len;
	__sum16 check;
};

#endif /* OAKWIRE_STEER_H */
