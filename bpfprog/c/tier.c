// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Oakwire kernel tier: TC (tcx) programs that execute the flows the AF_XDP
 * workers decided, keeping GSO super-packets whole (SPEC §7.5; tier.h).
 *
 * tc_port    tcx ingress of a container's host-side veth: port_check on
 *            every frame (as xdp_port); service-range TCP/UDP of a decided
 *            flow is rewritten and either encapsulated to the peer node
 *            (bpf_redirect_neigh to the uplink) or delivered to a local
 *            port (bpf_redirect_peer); anything else to a service range is
 *            punted to the workers; the rest passes to the kernel.
 * tc_uplink  tcx ingress of the uplink: UDP to this node's tunnel endpoint
 *            from a non-peer is dropped; a decided flow is decapsulated,
 *            its source restored where it is a reply, and delivered
 *            (bpf_redirect_peer); other tunnel traffic is punted.
 * tc_punt    tcx ingress of punt0: frames the workers transmit on punt1's
 *            AF_XDP sockets, whose Ethernet source names where they go
 *            (TIER_META): the uplink (bpf_redirect_neigh resolves the next
 *            hop) or a port (bpf_redirect_peer).
 * xdp_punt   native XDP on punt1: punted frames into the AF_XDP socket of
 *            their queue (one per worker).
 *
 * Punting is bpf_redirect to punt0's egress with the arrival interface in
 * the Ethernet destination (TIER_META). The flow hash is recomputed from
 * the packet first, so a flow always takes the same punt queue, hence the
 * same worker, in order (a socket's own hash can change on retransmit).
 */
#include "tier.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* BTF anchors for bpf2go -type (see steer.c). */
const volatile enum tier_reason tier_reason_max = TIER_REASON_MAX;
const volatile enum tier_flags tier_flags_anchor = TIER_F_SNAT;
const volatile enum tier_kind tier_kind_anchor = TIER_KIND_SERVICE;

#define ETH_LEN 14
/* Headers pulled into the linear area before parsing: Ethernet, outer
 * IPv6 + UDP, inner IPv6 + TCP ports. */
#define PULL_LEN (ETH_LEN + 40 + 8 + 40 + 20)
#define TCP_FIN 0x01
#define TCP_RST 0x04

static __always_inline void tcount(enum tier_reason reason)
{
	__u32 r = reason;
	__u64 *c = bpf_map_lookup_elem(&tier_stats, &r);

	if (c)
		*c += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline int tpass(enum tier_reason reason)
{
	tcount(reason);
	return TC_ACT_OK;
}

static __always_inline int tshot(enum tier_reason reason)
{
	tcount(reason);
	return TC_ACT_SHOT;
}

static __always_inline struct tier_cfg *cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&tier_config, &zero);
}

/* Makes the first PULL_LEN bytes (or the whole packet) linear. */
static __always_inline void pull(struct __sk_buff *skb)
{
	__u32 n = skb->len < PULL_LEN ? skb->len : PULL_LEN;

	if ((void *)(long)skb->data + n > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, n);
}

/*
 * Hands the packet to the workers through punt0, with the interface it
 * arrived on and flags in its Ethernet destination.
 */
static __always_inline int punt(struct __sk_buff *skb, __u32 from, __u8 flags,
				enum tier_reason reason)
{
	struct tier_cfg *c = cfg();
	__u8 meta[6] = {TIER_META, flags, from >> 24, from >> 16, from >> 8, from};

	if (!c || !c->punt_ifindex)
		return tshot(TIER_PUNT_FAILED);
	if (bpf_skb_store_bytes(skb, 0, meta, sizeof(meta), 0))
		return tshot(TIER_ERROR);
	bpf_set_hash_invalid(skb);
	bpf_get_hash_recalc(skb);
	tcount(reason);
	return bpf_redirect(c->punt_ifindex, 0);
}

/*
 * Fills k's family, protocol, addresses and ports from the IP packet at l3
 * (EtherType proto) and sets *l4 to its transport header. Only what the
 * tier executes parses: IPv4 without options and unfragmented, IPv6
 * without extension headers, TCP or UDP.
 */
static __always_inline int tuple(struct tier_key *k, __be16 proto, void *l3,
				 void *data_end, void **l4)
{
	__be16 *ports;

	if (proto == bpf_htons(STEER_ETH_P_IP)) {
		struct steer_ip4 *ip = l3;

		if ((void *)(ip + 1) > data_end || ip->vihl != 0x45 ||
		    (ip->frag_off & bpf_htons(STEER_IP_MF | STEER_IP_OFFSET)))
			return -1;
		k->family = 4;
		k->proto = ip->protocol;
		k->saddr[0] = ip->saddr;
		k->daddr[0] = ip->daddr;
		ports = (void *)(ip + 1);
	} else if (proto == bpf_htons(STEER_ETH_P_IPV6)) {
		struct steer_ip6 *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		k->family = 6;
		k->proto = ip6->nexthdr;
		__builtin_memcpy(k->saddr, ip6->saddr, 16);
		__builtin_memcpy(k->daddr, ip6->daddr, 16);
		ports = (void *)(ip6 + 1);
	} else {
		return -1;
	}
	if (k->proto != STEER_IPPROTO_TCP && k->proto != STEER_IPPROTO_UDP)
		return -1;
	if ((void *)(ports + 2) > data_end)
		return -1;
	k->sport = ports[0];
	k->dport = ports[1];
	*l4 = ports;
	return 0;
}

/*
 * Finds the flow's slot and passes its gate: the slot when the kernel
 * executes the flow, else NULL with *reason set (no flow, or pending; a
 * pending packet was counted and must be punted with TIER_PUNT_COUNTED).
 * A GSO packet counts as the segments the punt device will cut it into
 * (every one reaches the worker marked counted).
 */
static __always_inline struct tier_slot *gate(struct tier_key *k, __u32 segs,
					       enum tier_reason *reason)
{
	struct tier_slot *s;
	__u32 *si;
	__u64 g;

	si = bpf_map_lookup_elem(&tier_flows, k);
	if (!si) {
		*reason = TIER_PUNT_MISS;
		return 0;
	}
	s = bpf_map_lookup_elem(&tier_slots, si);
	if (!s) {
		*reason = TIER_PUNT_MISS;
		return 0;
	}
	g = *(volatile __u64 *)&s->gate;
	if (!(g & TIER_GATE_ACTIVE)) {
		/* Counted in the same atomic step that reads the gate: a
		 * worker's compare-and-swap to active fails if this packet
		 * got in first, and the worker then waits for it. */
		g = __sync_fetch_and_add(&s->gate, segs);
		if (!(g & TIER_GATE_ACTIVE)) {
			*reason = TIER_PUNT_PENDING;
			return 0;
		}
	}
	return s;
}

/* Counts an executed packet in its slot. */
static __always_inline void account(struct tier_slot *s, struct __sk_buff *skb,
				    __u8 proto, void *l4, void *data_end)
{
	__sync_fetch_and_add(&s->packets, 1);
	__sync_fetch_and_add(&s->bytes, skb->len);
	s->last_ns = bpf_ktime_get_ns();
	if (proto == STEER_IPPROTO_TCP && l4 + 14 <= data_end) {
		__u8 f = ((__u8 *)l4)[13] & (TCP_FIN | TCP_RST);

		if (f && !(s->tcp_flags & f))
			__sync_fetch_and_or(&s->tcp_flags, f);
	}
}

/*
 * Rewrites the addresses of the IP packet at offset l3 as the slot says, with the L3 and L4 checksums. BPF_F_PSEUDO_HDR keeps a
 * CHECKSUM_PARTIAL packet right (its field holds the pseudo-header sum);
 * BPF_F_MARK_MANGLED_0 leaves an IPv4 UDP checksum of 0 alone.
 */
static __always_inline int rewrite(struct __sk_buff *skb, const struct tier_key *k,
				   const struct tier_slot *s, __u32 l3)
{
	__u32 csum = k->proto == STEER_IPPROTO_TCP ? 16 : 6;
	__u64 l4f = BPF_F_PSEUDO_HDR;

	if (k->proto == STEER_IPPROTO_UDP)
		l4f |= BPF_F_MARK_MANGLED_0;
	if (k->family == 4) {
		csum += l3 + sizeof(struct steer_ip4);
		if (s->flags & TIER_F_SNAT) {
			__u32 old = k->saddr[0], new = s->new_saddr[0];

			if (bpf_l4_csum_replace(skb, csum, old, new, l4f | 4) ||
			    bpf_l3_csum_replace(skb, l3 + 10, old, new, 4) ||
			    bpf_skb_store_bytes(skb, l3 + 12, &new, 4, 0))
				return -1;
		}
		if (s->flags & TIER_F_DNAT) {
			__u32 old = k->daddr[0], new = s->new_daddr[0];

			if (bpf_l4_csum_replace(skb, csum, old, new, l4f | 4) ||
			    bpf_l3_csum_replace(skb, l3 + 10, old, new, 4) ||
			    bpf_skb_store_bytes(skb, l3 + 16, &new, 4, 0))
				return -1;
		}
		return 0;
	}
	csum += l3 + sizeof(struct steer_ip6);
	if (s->flags & TIER_F_SNAT) {
		__s64 d = bpf_csum_diff((__be32 *)k->saddr, 16, (__be32 *)s->new_saddr, 16, 0);

		if (bpf_l4_csum_replace(skb, csum, 0, d, l4f) ||
		    bpf_skb_store_bytes(skb, l3 + 8, (void *)s->new_saddr, 16, 0))
			return -1;
	}
	if (s->flags & TIER_F_DNAT) {
		__s64 d = bpf_csum_diff((__be32 *)k->daddr, 16, (__be32 *)s->new_daddr, 16, 0);

		if (bpf_l4_csum_replace(skb, csum, 0, d, l4f) ||
		    bpf_skb_store_bytes(skb, l3 + 24, (void *)s->new_daddr, 16, 0))
			return -1;
	}
	return 0;
}

static __always_inline __u16 fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/*
 * Prepends the slot's outer IPv4 and UDP headers and sends the packet to
 * the peer node. bpf_skb_adjust_room with the encap flags marks a GSO
 * super-packet as UDP-tunnel GSO, so it stays whole until a device that
 * cannot take it segments it, replicating the outer headers; FIXED_GSO
 * keeps the segment size, which the container's MTU already leaves room
 * for. The outer header's lengths and checksum are filled in here; the
 * rest (addresses, DF, TTL, UDP ports, checksum 0) is the slot's template.
 * Returns 0, 1 when the kernel refused the room (nothing changed), or -1.
 */
static __always_inline int encap(struct __sk_buff *skb, const struct tier_slot *s,
				 __u8 family)
{
	struct steer_ip4 ip;
	struct steer_udp udp;
	__u32 inner = skb->len - ETH_LEN;
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
		      BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	__be16 etype = bpf_htons(STEER_ETH_P_IP);

	if (bpf_skb_adjust_room(skb, TIER_OUTER_MAX, BPF_ADJ_ROOM_MAC, flags))
		return 1; /* refused; the packet is untouched */
	__builtin_memcpy(&ip, s->outer, sizeof(ip));
	__builtin_memcpy(&udp, s->outer + sizeof(ip), sizeof(udp));
	ip.tot_len = bpf_htons(inner + TIER_OUTER_MAX);
	ip.check = ~fold(s->outer_sum + bpf_htons(inner + TIER_OUTER_MAX));
	udp.len = bpf_htons(inner + sizeof(udp));
	if (bpf_skb_store_bytes(skb, ETH_LEN, &ip, sizeof(ip), 0) ||
	    bpf_skb_store_bytes(skb, ETH_LEN + sizeof(ip), &udp, sizeof(udp), 0))
		return -1;
	if (family == 6 && bpf_skb_store_bytes(skb, 12, &etype, 2, 0))
		return -1;
	return 0;
}

/* Writes the slot's MACs (and the EtherType of family) for delivery. */
static __always_inline int macs(struct __sk_buff *skb, const struct tier_slot *s,
				__u8 family)
{
	struct steer_eth eth;

	__builtin_memcpy(eth.dst, s->dmac, 6);
	__builtin_memcpy(eth.src, s->smac, 6);
	eth.proto = bpf_htons(family == 4 ? STEER_ETH_P_IP : STEER_ETH_P_IPV6);
	return bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0);
}

/*
 * Does the slot's work on a packet whose IP header follows the Ethernet
 * header (the tunnel ingress has already decapsulated). Encapsulation
 * comes first: the kernel may refuse it (a GSO packet of a kind that
 * cannot take a tunnel header), and then the untouched packet goes to the
 * workers.
 */
static __always_inline int execute(struct __sk_buff *skb, const struct tier_key *k,
				   const struct tier_slot *s, enum tier_reason fast)
{
	if (s->flags & TIER_F_ENCAP) {
		int r = encap(skb, s, k->family);

		if (r > 0)
			return punt(skb, k->ifindex, 0, TIER_PUNT_OTHER);
		if (r < 0)
			return tshot(TIER_ERROR);
		if (rewrite(skb, k, s, ETH_LEN + TIER_OUTER_MAX))
			return tshot(TIER_ERROR);
		tcount(fast);
		return bpf_redirect_neigh(s->out_ifindex, 0, 0, 0);
	}
	if (rewrite(skb, k, s, ETH_LEN) || macs(skb, s, k->family))
		return tshot(TIER_ERROR);
	tcount(fast);
	return bpf_redirect_peer(s->out_ifindex, 0);
}

/*
 * Whether the packet (inner length len) fits the tunnel; a GSO
 * super-packet fits when each of its segments does: gso payload bytes
 * behind the IP and transport headers (hdrs bytes, options included).
 */
static __always_inline int fits(const struct tier_slot *s, __u32 len, __u32 gso,
				__u32 hdrs)
{
	if (!(s->flags & TIER_F_ENCAP))
		return 1;
	if (len + TIER_OUTER_MAX > 0xffff)
		return 0;
	if (gso)
		return gso + hdrs <= s->max_len;
	return len <= s->max_len;
}

/* How many frames the punt device makes of a packet whose payload starts
 * at byte before: one, or a GSO packet's segments. */
static __always_inline __u32 segments(struct __sk_buff *skb, __u32 before)
{
	__u32 gso = skb->gso_size;

	if (!gso || skb->len <= before)
		return 1;
	return (skb->len - before + gso - 1) / gso;
}

/* The IP and transport headers' length of a tuple()'d packet, or 0 when
 * the TCP header is cut short. */
static __always_inline __u32 hdrs_len(const struct tier_key *k, void *l4, void *data_end)
{
	__u32 ip = k->family == 4 ? sizeof(struct steer_ip4) : sizeof(struct steer_ip6);

	if (k->proto != STEER_IPPROTO_TCP)
		return ip + sizeof(struct steer_udp);
	if (l4 + 13 > data_end)
		return 0;
	return ip + (((__u8 *)l4)[12] >> 4) * 4;
}

SEC("tc")
int tc_port(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct steer_port *port = bpf_map_lookup_elem(&ports, &ifindex);
	struct tier_key k = {};
	enum tier_reason why;
	struct tier_slot *s;
	void *data, *data_end, *l3 = 0, *l4 = 0;
	__be16 proto;
	__u32 hdrs;

	if (!port)
		return tshot(TIER_SPOOFED); /* not a container we attached */
	pull(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	proto = parse_l2(data, data_end, &l3);
	if (!proto)
		return tpass(TIER_MALFORMED);
	switch (port_check(port, proto, l3, data_end)) {
	case PORT_SERVICE:
		break;
	case PORT_SPOOFED:
		return tshot(TIER_SPOOFED);
	case PORT_TO_TUNNEL:
		return tshot(TIER_TO_TUNNEL);
	case PORT_MALFORMED:
		return tpass(TIER_MALFORMED);
	default:
		return tpass(TIER_PASSED);
	}
	/* To a service range: the tier's or the workers'. Tagged frames,
	 * ICMP, fragments and IP options go to the workers. */
	if (l3 != data + ETH_LEN || tuple(&k, proto, l3, data_end, &l4))
		return punt(skb, ifindex, 0, TIER_PUNT_OTHER);
	k.ifindex = ifindex;
	hdrs = hdrs_len(&k, l4, data_end);
	s = gate(&k, segments(skb, ETH_LEN + hdrs), &why);
	if (!s)
		return punt(skb, ifindex, why == TIER_PUNT_PENDING ? TIER_PUNT_COUNTED : 0, why);
	if (!hdrs || !fits(s, skb->len - ETH_LEN, skb->gso_size, hdrs))
		return punt(skb, ifindex, 0, TIER_PUNT_SIZE);
	account(s, skb, k.proto, l4, data_end);
	return execute(skb, &k, s, TIER_FAST_PORT);
}

/* Tunnel datagram from (family, addr, sport): a peer's? (as xdp_uplink) */
static __always_inline int from_peer(enum steer_family family, const __u32 *addr,
				     __u16 sport)
{
	struct steer_peer_key key = {};
	struct steer_peer *peer;

	key.family = family;
	key.addr[0] = addr[0];
	if (family == STEER_FAMILY_IPV6) {
		key.addr[1] = addr[1];
		key.addr[2] = addr[2];
		key.addr[3] = addr[3];
	}
	peer = bpf_map_lookup_elem(&peers, &key);
	return peer && (peer->port == 0 || peer->port == sport);
}

SEC("tc")
int tc_uplink(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, zero = 0, olen, src[4] = {};
	struct steer_node *node = bpf_map_lookup_elem(&node_cfg, &zero);
	struct tier_key k = {};
	enum steer_family fam;
	enum tier_reason why;
	struct steer_udp *udp;
	struct tier_slot *s;
	void *data, *data_end, *l3 = 0, *l4 = 0;
	__be16 proto, inner;

	if (!node || !node->tunnel_port)
		return tpass(TIER_PASSED);
	pull(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	proto = parse_l2(data, data_end, &l3);
	if (!proto)
		return tpass(TIER_MALFORMED);
	if (proto == bpf_htons(STEER_ETH_P_IP)) {
		struct steer_ip4 *ip = l3;

		if ((void *)(ip + 1) > data_end || (ip->vihl >> 4) != 4)
			return tpass(TIER_MALFORMED);
		if (ip->protocol != STEER_IPPROTO_UDP || !node->has_ip4 ||
		    ip->daddr != node->ip4)
			return tpass(TIER_PASSED);
		/* Fragments: the kernel's (as xdp_uplink); options: punted. */
		if (ip->frag_off & bpf_htons(STEER_IP_MF | STEER_IP_OFFSET))
			return tpass(TIER_PASSED);
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > data_end)
			return tpass(TIER_MALFORMED);
		if (udp->dest != bpf_htons(node->tunnel_port))
			return tpass(TIER_PASSED);
		fam = STEER_FAMILY_IPV4;
		src[0] = ip->saddr;
		if (ip->vihl != 0x45) {
			if (!from_peer(fam, src, bpf_ntohs(udp->source)))
				return tshot(TIER_NOT_PEER);
			return punt(skb, ifindex, 0, TIER_PUNT_OTHER);
		}
		olen = sizeof(*ip) + sizeof(*udp);
	} else if (proto == bpf_htons(STEER_ETH_P_IPV6)) {
		struct steer_ip6 *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end || (bpf_ntohl(ip6->vtcfl) >> 28) != 6)
			return tpass(TIER_MALFORMED);
		if (ip6->nexthdr != STEER_IPPROTO_UDP || !node->has_ip6 ||
		    !same6(ip6->daddr, node->ip6))
			return tpass(TIER_PASSED);
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end)
			return tpass(TIER_MALFORMED);
		if (udp->dest != bpf_htons(node->tunnel_port))
			return tpass(TIER_PASSED);
		fam = STEER_FAMILY_IPV6;
		__builtin_memcpy(src, ip6->saddr, 16);
		olen = sizeof(*ip6) + sizeof(*udp);
	} else {
		return tpass(TIER_PASSED);
	}
	if (!from_peer(fam, src, bpf_ntohs(udp->source)))
		return tshot(TIER_NOT_PEER);
	if (l3 != data + ETH_LEN)
		return punt(skb, ifindex, 0, TIER_PUNT_OTHER);
	/* The inner packet: its version nibble says its family. */
	l3 = (void *)(udp + 1);
	if (l3 + 1 > data_end)
		return punt(skb, ifindex, 0, TIER_PUNT_OTHER);
	inner = (*(__u8 *)l3 >> 4) == 4 ? bpf_htons(STEER_ETH_P_IP) : bpf_htons(STEER_ETH_P_IPV6);
	if (tuple(&k, inner, l3, data_end, &l4))
		return punt(skb, ifindex, 0, TIER_PUNT_OTHER);
	k.ifindex = ifindex;
	s = gate(&k, segments(skb, ETH_LEN + olen + hdrs_len(&k, l4, data_end)), &why);
	if (!s)
		return punt(skb, ifindex, why == TIER_PUNT_PENDING ? TIER_PUNT_COUNTED : 0, why);
	if (s->peer_family != fam || s->peer[0] != src[0] ||
	    (fam == STEER_FAMILY_IPV6 && !same6(s->peer, src)))
		return punt(skb, ifindex, 0, TIER_PUNT_PEER);
	account(s, skb, k.proto, l4, data_end);
	if (bpf_skb_adjust_room(skb, -(__s32)olen, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO |
					(k.family == 4 ? BPF_F_ADJ_ROOM_DECAP_L3_IPV4
						       : BPF_F_ADJ_ROOM_DECAP_L3_IPV6)))
		return tshot(TIER_ERROR);
	return execute(skb, &k, s, TIER_FAST_UPLINK);
}

SEC("tc")
int tc_punt(struct __sk_buff *skb)
{
	struct tier_cfg *c = cfg();
	struct steer_port *port;
	struct steer_eth *eth;
	void *data, *data_end;
	__u32 to;

	pull(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if (!c || (void *)(eth + 1) > data_end || eth->src[0] != TIER_META)
		return tshot(TIER_OUT_BAD);
	to = (__u32)eth->src[2] << 24 | (__u32)eth->src[3] << 16 |
	     (__u32)eth->src[4] << 8 | eth->src[5];
	if (to == c->uplink_ifindex) {
		tcount(TIER_OUT_UPLINK);
		return bpf_redirect_neigh(to, 0, 0, 0);
	}
	port = bpf_map_lookup_elem(&ports, &to);
	if (!port)
		return tshot(TIER_OUT_BAD);
	if (bpf_skb_store_bytes(skb, 6, port->host_mac, 6, 0))
		return tshot(TIER_ERROR);
	tcount(TIER_OUT_PORT);
	return bpf_redirect_peer(to, 0);
}

SEC("xdp")
int xdp_punt(struct xdp_md *ctx)
{
	long ret = bpf_redirect_map(&tier_xsks, ctx->rx_queue_index, XDP_DROP);

	tcount(ret == XDP_REDIRECT ? TIER_XSK_REDIRECTED : TIER_XSK_FAILED);
	return (int)ret;
}
