/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Oakwire node programs: what the XDP steering programs (steer.c) and the
 * kernel tier's TC programs (tier.c) share: constants, the node's maps
 * (service ranges, this node, peers, tunnel endpoints, container ports),
 * wire headers and the checks every frame from a container gets.
 *
 * Everything Go needs to know about (struct layouts, enum values) is defined
 * once in these headers and exported to Go by bpf2go -type; Go never repeats
 * a number. Both objects define the shared maps; Go loads one owner and
 * hands its maps to the other loads (MapReplacements), so the kernel holds
 * each once.
 *
 * Byte order contract (Go's loader follows it):
 *   - addresses and masks are stored in network byte order, exactly as they
 *     appear on the wire, so the programs compare them without swapping;
 *   - ports are stored in host byte order.
 */
#ifndef OAKWIRE_NODE_H
#define OAKWIRE_NODE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* ---- constants ----
 * Go does not repeat these: it reads the array lengths of the exported
 * structs and the MaxEntries of the map specs. */

/* Service prefixes per family in struct steer_services. */
#define STEER_MAX_SERVICE_PREFIXES 8
/* Default capacity of the peer map; the loader may resize. */
#define STEER_DEFAULT_PEERS 16384
/* Default capacity of the ports map (containers per node). */
#define STEER_DEFAULT_PORTS 4096

/* Address family tags used in struct steer_peer_key. */
enum steer_family {
	STEER_FAMILY_IPV4 = 4,
	STEER_FAMILY_IPV6 = 6,
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
	__u8 host_mac[6]; /* the host-side veth's MAC (source of frames to it) */
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

/* ---- packet headers (wire layout; no host headers needed) ---- */

#define STEER_ETH_P_IP 0x0800
#define STEER_ETH_P_IPV6 0x86DD
#define STEER_ETH_P_8021Q 0x8100
#define STEER_ETH_P_8021AD 0x88A8
#define STEER_ETH_P_ARP 0x0806
#define STEER_IPPROTO_TCP 6
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

/* ---- helpers ---- */

/*
 * Skips Ethernet and at most one 802.1Q/802.1ad tag. Returns the EtherType
 * (network order) and sets *l3, or returns 0 on a truncated frame.
 */
static __always_inline __be16 parse_l2(void *data, void *data_end, void **l3)
{
	struct steer_eth *eth = data;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return 0;
	proto = eth->proto;
	data = eth + 1;
	if (proto == bpf_htons(STEER_ETH_P_8021Q) ||
	    proto == bpf_htons(STEER_ETH_P_8021AD)) {
		struct steer_vlan *vlan = data;

		if ((void *)(vlan + 1) > data_end)
			return 0;
		proto = vlan->proto;
		data = vlan + 1;
	}
	*l3 = data;
	return proto;
}

static __always_inline int in_service4(__u32 daddr)
{
	__u32 zero = 0;
	struct steer_services *s = bpf_map_lookup_elem(&services, &zero);

	if (!s)
		return 0;
	for (__u32 i = 0; i < STEER_MAX_SERVICE_PREFIXES; i++) {
		if (i >= s->n4)
			break;
		if ((daddr & s->v4[i].mask) == s->v4[i].addr)
			return 1;
	}
	return 0;
}

static __always_inline int in_service6(const __u32 *daddr)
{
	__u32 zero = 0;
	struct steer_services *s = bpf_map_lookup_elem(&services, &zero);

	if (!s)
		return 0;
	for (__u32 i = 0; i < STEER_MAX_SERVICE_PREFIXES; i++) {
		struct steer_prefix6 *p;

		if (i >= s->n6)
			break;
		p = &s->v6[i];
		if ((daddr[0] & p->mask[0]) == p->addr[0] &&
		    (daddr[1] & p->mask[1]) == p->addr[1] &&
		    (daddr[2] & p->mask[2]) == p->addr[2] &&
		    (daddr[3] & p->mask[3]) == p->addr[3])
			return 1;
	}
	return 0;
}

/* Is (family, addr, port) a tunnel endpoint (this node's or a peer's)? */
static __always_inline int is_endpoint(enum steer_family family,
				       const __u32 *addr, __be16 port)
{
	struct steer_endpoint key = {};

	key.family = family;
	key.addr[0] = addr[0];
	if (family == STEER_FAMILY_IPV6) {
		key.addr[1] = addr[1];
		key.addr[2] = addr[2];
		key.addr[3] = addr[3];
	}
	key.port = bpf_ntohs(port);
	return bpf_map_lookup_elem(&endpoints, &key) != 0;
}

/* IPv6 link-local (fe80::/10) or unspecified (::) source. */
static __always_inline int local_scope_src6(const __u32 *a)
{
	if ((a[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000))
		return 1;
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

/* IPv6 link-local or multicast destination. */
static __always_inline int local_scope_dst6(const __u32 *a)
{
	return (a[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000) ||
	       (a[0] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000);
}

static __always_inline int same6(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* What port_check found out about a frame from a container. */
enum port_verdict {
	PORT_OTHER,     /* not IP (ARP that claims nothing wrong, LLDP, ...) */
	PORT_LOCAL,     /* IP to a destination outside the service ranges */
	PORT_SERVICE,   /* IP to a service or instance IP */
	PORT_MALFORMED, /* truncated or inconsistent IP header */
	PORT_SPOOFED,   /* a source that is not the container's own */
	PORT_TO_TUNNEL, /* UDP to a tunnel endpoint */
};

/*
 * The checks of SPEC §7.2 on every frame a container sends (proto and l3
 * from parse_l2; data_end bounds direct access): the source must be the
 * container's own nsIP (IPv6 link-local and unspecified only towards
 * link-local or multicast destinations; ARP only as itself or as a probe),
 * and UDP never goes to a tunnel endpoint. Then it says whether the
 * destination is in the service ranges.
 */
static __always_inline enum port_verdict port_check(const struct steer_port *port,
						    __be16 proto, void *l3,
						    void *data_end)
{
	if (proto == bpf_htons(STEER_ETH_P_IP)) {
		struct steer_ip4 *ip = l3;
		struct steer_udp *udp;

		if ((void *)(ip + 1) > data_end || (ip->vihl >> 4) != 4 ||
		    (ip->vihl & 0xF) < 5)
			return PORT_MALFORMED;
		if (!port->has_ip4 || ip->saddr != port->ip4)
			return PORT_SPOOFED;
		/* Every fragment carries the destination: fragments of a
		 * service flow are steered too (SPEC §7.3). */
		if (in_service4(ip->daddr))
			return PORT_SERVICE;
		udp = l3 + (ip->vihl & 0xF) * 4;
		if (ip->protocol == STEER_IPPROTO_UDP &&
		    !(ip->frag_off & bpf_htons(STEER_IP_OFFSET)) &&
		    (void *)(udp + 1) <= data_end &&
		    is_endpoint(STEER_FAMILY_IPV4, &ip->daddr, udp->dest))
			return PORT_TO_TUNNEL;
		return PORT_LOCAL;
	}
	if (proto == bpf_htons(STEER_ETH_P_IPV6)) {
		struct steer_ip6 *ip6 = l3;
		struct steer_udp *udp = (void *)(ip6 + 1);

		if ((void *)(ip6 + 1) > data_end ||
		    (bpf_ntohl(ip6->vtcfl) >> 28) != 6)
			return PORT_MALFORMED;
		if (local_scope_src6(ip6->saddr)) {
			if (!local_scope_dst6(ip6->daddr))
				return PORT_SPOOFED;
		} else if (!port->has_ip6 || !same6(ip6->saddr, port->ip6)) {
			return PORT_SPOOFED;
		}
		if (in_service6(ip6->daddr))
			return PORT_SERVICE;
		if (ip6->nexthdr == STEER_IPPROTO_UDP &&
		    (void *)(udp + 1) <= data_end &&
		    is_endpoint(STEER_FAMILY_IPV6, ip6->daddr, udp->dest))
			return PORT_TO_TUNNEL;
		return PORT_LOCAL;
	}
	if (proto == bpf_htons(STEER_ETH_P_ARP)) {
		struct steer_arp *arp = l3;
		__u32 spa;

		if ((void *)(arp + 1) > data_end)
			return PORT_MALFORMED;
		__builtin_memcpy(&spa, arp->spa, 4);
		/* A probe (sender 0.0.0.0) claims nothing. */
		if (arp->plen == 4 && spa != 0 &&
		    (!port->has_ip4 || spa != port->ip4))
			return PORT_SPOOFED;
	}
	return PORT_OTHER;
}

#endif /* OAKWIRE_NODE_H */
