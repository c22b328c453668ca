/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Oakwire kernel tier (tier.c; SPEC §7.5, docs/design.md "The kernel
 * tier"): flows the AF_XDP workers decided, executed by TC programs.
 *
 * A flow is a struct tier_key (the interface it arrives on and its
 * 5-tuple as it arrives). tier_flows maps it to a slot of tier_slots, a
 * BPF_F_MMAPABLE array the daemon maps into its memory: it writes a slot's
 * action there, then publishes the key. The programs count each executed
 * packet in the slot (packets, bytes, last time, TCP FIN/RST), which the
 * daemon reads without a system call to expire idle flows.
 *
 * The gate word orders the hand-over from the workers to the kernel
 * without reordering a flow's packets: a new slot is pending; a packet
 * that finds it pending adds one to the gate and is punted to the workers
 * marked "counted". The worker that owns the flow (punted packets of one
 * flow reach one worker, in order) counts those it has sent, and once it
 * has sent as many as the gate says, it sets TIER_GATE_ACTIVE with a
 * compare-and-swap on the gate; from then on the programs execute the
 * flow. A packet that raced the swap saw its add fail the compare, so the
 * worker waits for it. The daemon relies on x86's store order between the
 * slot's fields and the hash map update that publishes them (the update is
 * a system call; the programs read the slot after finding the key).
 */
#ifndef OAKWIRE_TIER_H
#define OAKWIRE_TIER_H

#include <linux/pkt_cls.h>
#include "node.h"

/* linux-libc-dev of the build machine may predate 6.3. */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

/* Default capacity of tier_flows and tier_slots; the loader may resize. */
#define TIER_DEFAULT_FLOWS 65536
/* Default number of punt queues (XSKMAP slots); the loader may resize. */
#define TIER_DEFAULT_QUEUES 64
/* Room for the outer headers a slot encapsulates with (IPv4 + UDP). */
#define TIER_OUTER_MAX 28

/* Gate word: the kernel executes the flow once TIER_GATE_ACTIVE is set;
 * before that the low 32 bits count the packets punted while pending. */
#define TIER_GATE_ACTIVE (1ULL << 63)

/* First byte of the Ethernet destination (punt) or source (worker
 * transmit) that carries tier metadata: 02:<flags>:<ifindex, 4 bytes>. */
#define TIER_META 0x02
/* Punt flag: the packet was counted in its slot's gate. */
#define TIER_PUNT_COUNTED 0x01

/* What a slot does to its packets (struct tier_slot.flags). */
enum tier_flags {
	TIER_F_SNAT = 1,    /* source := new_saddr */
	TIER_F_DNAT = 2,    /* destination := new_daddr */
	TIER_F_ENCAP = 4,   /* prepend outer IPv4+UDP, bpf_redirect_neigh(out_ifindex) */
	TIER_F_DELIVER = 8, /* MACs := dmac/smac, bpf_redirect_peer(out_ifindex) */
	TIER_F_DECAP = 16,  /* strip outer_len bytes (tunnel ingress) first */
};

/* What a slot is for the daemon (struct tier_slot.kind). */
enum tier_kind {
	TIER_KIND_SERVICE = 1,  /* from a port to a service IP: a policy flow */
	TIER_KIND_INSTANCE = 2, /* from a port to an instance IP */
	TIER_KIND_INGRESS = 3,  /* from a peer through the tunnel */
};

/* Why a packet got the verdict it got: per-CPU counters. */
enum tier_reason {
	/* Not the tier's business: passed to the kernel. */
	TIER_PASSED = 0,
	/* Executed in the kernel: from a port, from the uplink. */
	TIER_FAST_PORT = 1,
	TIER_FAST_UPLINK = 2,
	/* Punted to the workers: no flow, flow pending, not TCP/UDP or a
	 * fragment or options, too big for the tunnel (the worker answers
	 * with an ICMP error), from another peer than the flow's. */
	TIER_PUNT_MISS = 3,
	TIER_PUNT_PENDING = 4,
	TIER_PUNT_OTHER = 5,
	TIER_PUNT_SIZE = 6,
	TIER_PUNT_PEER = 7,
	/* Would have been punted but there is no punt device: dropped. */
	TIER_PUNT_FAILED = 8,
	/* Dropped: forged source, container to a tunnel port, tunnel
	 * datagram from a non-peer, a helper failed mid-way. */
	TIER_SPOOFED = 9,
	TIER_TO_TUNNEL = 10,
	TIER_NOT_PEER = 11,
	TIER_ERROR = 12,
	/* Truncated or inconsistent headers: passed to the kernel. */
	TIER_MALFORMED = 13,
	/* A worker's frame leaving through the punt device: to the uplink,
	 * to a port, to nowhere (dropped). */
	TIER_OUT_UPLINK = 14,
	TIER_OUT_PORT = 15,
	TIER_OUT_BAD = 16,
	/* xdp_punt: into the punt queue's socket, or no socket (dropped). */
	TIER_XSK_REDIRECTED = 17,
	TIER_XSK_FAILED = 18,
	TIER_REASON_MAX = 19,
};

/* Key of tier_flows. Unused bytes must be zero. */
struct tier_key {
	__u32 ifindex;  /* where it arrives: a port's host veth, or the uplink */
	__u8 family;    /* 4 or 6 (the inner packet's) */
	__u8 proto;     /* IPPROTO_TCP or IPPROTO_UDP */
	__u16 sport;    /* network order, as on the wire */
	__u16 dport;
	__u16 pad;
	__u32 saddr[4]; /* network order; IPv4 in [0] */
	__u32 daddr[4];
};

/* Value of tier_slots (mmapped by the daemon). */
struct tier_slot {
	__u64 gate;      /* see TIER_GATE_ACTIVE */
	__u64 packets;   /* executed in the kernel */
	__u64 bytes;
	__u64 last_ns;   /* bpf_ktime_get_ns() of the last one */
	__u32 flags;     /* enum tier_flags */
	__u32 out_ifindex;
	__u32 tcp_flags; /* TCP FIN (1) and RST (4) seen */
	__u32 max_len;   /* encap: largest inner packet (or segment) that fits */
	__u32 new_saddr[4];
	__u32 new_daddr[4];
	__u32 peer[4];   /* decap: the outer source it must come from */
	__u8 outer[TIER_OUTER_MAX]; /* encap: outer IPv4+UDP, lengths and checksum 0 */
	__u8 dmac[6];    /* deliver: the container's MAC */
	__u8 smac[6];    /* deliver: its host veth's MAC */
	__u32 outer_len; /* encap: bytes of outer (28); decap: bytes to strip */
	__u32 outer_sum; /* encap: one's complement sum of outer's IPv4 header */
	__u32 peer_family; /* decap: 4 or 6 */
	__u32 kind;      /* enum tier_kind (the daemon's bookkeeping) */
	__u32 inst;      /* the instance number a service flow chose */
	__u32 gen;       /* the daemon's: bumped each time the slot is reused */
};

struct tier_cfg {
	__u32 punt_ifindex;   /* punt0: punted packets leave through it */
	__u32 uplink_ifindex; /* the node's uplink */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TIER_DEFAULT_FLOWS);
	__type(key, struct tier_key);
	__type(value, __u32);
} tier_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TIER_DEFAULT_FLOWS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct tier_slot);
} tier_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tier_cfg);
} tier_config SEC(".maps");

/* punt queue index -> the owning worker's AF_XDP socket. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, TIER_DEFAULT_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} tier_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TIER_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tier_stats SEC(".maps");

#endif /* OAKWIRE_TIER_H */
