// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Oakwire XDP steering programs (SPEC §7.2, §7.3; DESIGN "The data path").
 *
 * xdp_port   attached to the host-side veth of a container: IPv4/IPv6
 *            frames whose destination lies in a service range go to the
 *            AF_XDP socket of the rx queue; everything else passes to the
 *            kernel (ARP, ND, traffic to other containers, the Internet).
 * xdp_uplink attached to the node's uplink: UDP to this node's IP and
 *            tunnel port from a known peer goes to the AF_XDP socket of
 *            the rx queue; the same from a stranger is dropped; everything
 *            else passes.
 * xdp_pass   returns XDP_PASS; for the peer end of a veth that frames are
 *            XDP_REDIRECTed into (veth only delivers redirected frames when
 *            its peer runs an XDP program).
 *
 * Redirects use bpf_redirect_map(xskmap, rx_queue_index, XDP_PASS): the low
 * bits of flags are the action returned when the slot holds no socket
 * (kernel __bpf_xdp_redirect_map), so a queue without a socket degrades to
 * the kernel path instead of dropping (steer_no_socket_action).
 */
#include "steer.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * BTF anchor: clang emits BTF only for types that some emitted symbol uses,
 * and bpf2go -type can only export types present in BTF. enum steer_reason
 * is otherwise used only through inlined helpers. Costs one 4-byte .rodata.
 */
const volatile enum steer_reason steer_reason_max = STEER_REASON_MAX;

/*
 * Action when the XSKMAP slot of the rx queue holds no socket: the low bits
 * of bpf_redirect_map's flags (kernel __bpf_xdp_redirect_map). XDP_PASS lets
 * the kernel handle traffic while no socket is registered. Also exports
 * enum xdp_action to Go. Constant after load (.rodata).
 */
const volatile enum xdp_action steer_no_socket_action = XDP_PASS;

static __always_inline void count(enum steer_reason reason)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &reason);

	if (c)
		*c += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline int pass(enum steer_reason reason)
{
	count(reason);
	return XDP_PASS;
}

static __always_inline int redirect(struct xdp_md *ctx)
{
	long ret = bpf_redirect_map(&xsks, ctx->rx_queue_index,
				    steer_no_socket_action);

	/* XDP_REDIRECT means the slot held a socket; anything else is the
	 * fallback. The socket may still drop the frame later (rx ring or
	 * fill ring empty/full), which the socket's statistics count. */
	count(ret == XDP_REDIRECT ? STEER_REDIRECTED : STEER_REDIRECT_FAILED);
	return (int)ret;
}

static __always_inline int drop(enum steer_reason reason)
{
	count(reason);
	return XDP_DROP;
}

/*
 * xdp_port checks every frame a container sends (SPEC §7.2 isolation,
 * port_check): its source must be the container's own nsIP, and it never
 * reaches a tunnel port. Then service-range destinations go to the AF_XDP
 * socket and the rest passes to the kernel.
 */
SEC("xdp")
int xdp_port(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *l3 = 0;
	__be16 proto = parse_l2(data, data_end, &l3);
	__u32 ifindex = ctx->ingress_ifindex;
	struct steer_port *port;

	if (!proto)
		return pass(STEER_MALFORMED);
	port = bpf_map_lookup_elem(&ports, &ifindex);
	if (!port)
		return drop(STEER_SPOOFED); /* not a container we attached */
	switch (port_check(port, proto, l3, data_end)) {
	case PORT_SERVICE:
		return redirect(ctx);
	case PORT_LOCAL:
		return pass(STEER_PASSED_NOT_SERVICE);
	case PORT_MALFORMED:
		return pass(STEER_MALFORMED);
	case PORT_SPOOFED:
		return drop(STEER_SPOOFED);
	case PORT_TO_TUNNEL:
		return drop(STEER_TO_TUNNEL);
	default:
		/* ARP, LLDP, anything else: the kernel's business. */
		return pass(STEER_PASSED_OTHER);
	}
}

/* Tunnel datagram from addr:sport (family f): redirect if from a peer. */
static __always_inline int from_peer(struct xdp_md *ctx,
				     struct steer_peer_key *key, __u16 sport)
{
	struct steer_peer *peer = bpf_map_lookup_elem(&peers, key);

	if (!peer || (peer->port != 0 && peer->port != sport)) {
		count(STEER_NOT_PEER);
		return XDP_DROP;
	}
	return redirect(ctx);
}

SEC("xdp")
int xdp_uplink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *l3 = 0;
	__be16 proto = parse_l2(data, data_end, &l3);
	struct steer_peer_key key = {};
	struct steer_node *node;
	struct steer_udp *udp;
	__u32 zero = 0;

	if (!proto)
		return pass(STEER_MALFORMED);
	if (proto != bpf_htons(STEER_ETH_P_IP) &&
	    proto != bpf_htons(STEER_ETH_P_IPV6))
		return pass(STEER_PASSED_OTHER);

	node = bpf_map_lookup_elem(&node_cfg, &zero);
	if (!node)
		return pass(STEER_PASSED_NOT_TUNNEL);

	if (proto == bpf_htons(STEER_ETH_P_IP)) {
		struct steer_ip4 *ip = l3;
		__u32 ihl;

		if ((void *)(ip + 1) > data_end || (ip->vihl >> 4) != 4)
			return pass(STEER_MALFORMED);
		ihl = (ip->vihl & 0xF) * 4;
		if (ihl < sizeof(*ip))
			return pass(STEER_MALFORMED);
		if (ip->protocol != STEER_IPPROTO_UDP || !node->has_ip4 ||
		    ip->daddr != node->ip4)
			return pass(STEER_PASSED_NOT_TUNNEL);
		/* Tunnel packets are sent with DF (SPEC §7.3); a fragment
		 * cannot be decapsulated alone, so the kernel reassembles. */
		if (ip->frag_off & bpf_htons(STEER_IP_MF | STEER_IP_OFFSET))
			return pass(STEER_PASSED_OTHER);
		udp = l3 + ihl;
		if ((void *)(udp + 1) > data_end)
			return pass(STEER_MALFORMED);
		if (node->tunnel_port == 0 ||
		    udp->dest != bpf_htons(node->tunnel_port))
			return pass(STEER_PASSED_NOT_TUNNEL);
		key.family = STEER_FAMILY_IPV4;
		key.addr[0] = ip->saddr;
		return from_peer(ctx, &key, bpf_ntohs(udp->source));
	}

	/* IPv6. Extension headers are not walked: a tunnel peer sends UDP
	 * directly after the fixed header; anything else is the kernel's. */
	struct steer_ip6 *ip6 = l3;

	if ((void *)(ip6 + 1) > data_end || (bpf_ntohl(ip6->vtcfl) >> 28) != 6)
		return pass(STEER_MALFORMED);
	if (ip6->nexthdr != STEER_IPPROTO_UDP || !node->has_ip6 ||
	    ip6->daddr[0] != node->ip6[0] || ip6->daddr[1] != node->ip6[1] ||
	    ip6->daddr[2] != node->ip6[2] || ip6->daddr[3] != node->ip6[3])
		return pass(STEER_PASSED_NOT_TUNNEL);
	udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > data_end)
		return pass(STEER_MALFORMED);
	if (node->tunnel_port == 0 || udp->dest != bpf_htons(node->tunnel_port))
		return pass(STEER_PASSED_NOT_TUNNEL);
	key.family = STEER_FAMILY_IPV6;
	key.addr[0] = ip6->saddr[0];
	key.addr[1] = ip6->saddr[1];
	key.addr[2] = ip6->saddr[2];
	key.addr[3] = ip6->saddr[3];
	return from_peer(ctx, &key, bpf_ntohs(udp->source));
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
