// Package fastpath is Oakwire's per-packet data plane logic: parsing,
// anti-spoofing, service-IP resolution through balancing policies, the
// shared flow table, address translation with checksum maintenance, and
// IP-in-UDP encapsulation (SPEC §7.3). It is plain Go with no privileges
// and no I/O, so every rule is tested with golden frames; the AF_XDP
// plumbing (package fastpath/xsk and the workers) moves frames in and
// verdicts out.
//
// # Boundary
//
// A worker owns one WorkerCtx and calls, once per received batch (≤ 64):
//
//	ctx.Now = coarseMonotonicNanos()          // once per batch
//	proc.Egress(ctx, port, frames, verdicts)   // frames from a container port
//	proc.Ingress(ctx, frames, verdicts)        // frames from the uplink
//
// then acts on each Verdict: ActTxPort (transmit Buf[Off:Off+Len] on the
// container port Verdict.Port), ActTxUplink, ActPass (not ours: the
// kernel's), ActDrop (Reason says why) or ActSlowPath (hand to the daemon;
// Reason says what it needs, see ActSlowPath). The table snapshot is loaded
// once per batch; a worker never blocks and never allocates.
//
// # Byte-slice contracts
//
//   - Frame.Buf is borrowed for the duration of the Egress/Ingress call.
//     The processor rewrites it in place and may write up to 62 bytes in
//     front of Frame.Off (outer Ethernet + IPv6 + UDP, or an ICMP error's
//     headers); it writes nothing outside Buf. RX frames have 256 bytes of
//     headroom; with less, encapsulation drops (ReasonNoHeadroom).
//   - The verdict's bytes are Buf[Off:Off+Len] and stay valid until the
//     worker hands the frame to a ring (TX or fill) — the processor keeps no
//     reference to any frame after the call returns.
//   - Parsed holds offsets and values, never slices. Table, FlowTable and
//     WorkerCtx never retain packet bytes.
//   - A Table is immutable after Build; it may be read by any number of
//     workers while the control plane builds the next one.
//
// # Translation
//
// Egress (from a container port): destinations outside the service ranges
// pass; the source must be the port's nsIP (else ReasonSpoofed). A service
// IP selects a policy; the flow (protocol, client nsIP, sport, service IP,
// dport — ICMP echo uses its identifier as both ports) keeps its instance
// identity (service + instance number) in the FlowTable, so after a table
// swap it follows the instance wherever it migrates, and is chosen again
// only when the instance is gone. An instance IP needs no flow. The source
// becomes the sender's own instance IP and the destination the instance's
// nsIP; local destinations go straight to the instance's port, remote ones
// are encapsulated (outer IPv4 with DF and TTL 64 and UDP checksum 0, or
// outer IPv6 with a computed UDP checksum; UDP source port and IPv6 flow
// label from the flow hash) toward the instance's node.
//
// Ingress (from the uplink): only UDP to our node IP and tunnel port is
// ours (else pass); the sender's address must be a peer (else
// ReasonNonPeer); the inner packet must parse and be addressed to a local
// nsIP. A reply on a flow this node opened is found by its reverse key
// (protocol, server instance IP, server port, client nsIP, client port):
// the server's node already rewrote the reply's source to the server's
// instance IP, which is stable across migration. Its source becomes the
// service IP the client addressed again. The reverse key cannot tell a
// reply to the service IP from a reply to that instance IP addressed
// directly from the same client port (a reused ephemeral port), so the most
// recent use owns it: a packet to an instance IP releases the reverse key
// of any flow that picked that instance from the same 5-tuple (its replies
// pass unchanged), and the flow's next packet takes it back (FlowTable).
//
// ICMP errors quoting a translated packet are translated too: on egress the
// quote is rewritten as the mirror image of the outer addresses; on
// ingress the quote's destination and the error's source become the
// service IP. A client's error to a service IP quotes a reply it got from
// that service IP: the quote reversed is the flow's forward key, and the
// error goes to the flow's instance (its nsIP, from the client's instance
// IP) like the flow's packets; without a live flow it is ReasonICMPNoFlow.
// The ICMP checksum is recomputed in full (errors are small and rare).
// First fragments create or find the flow and record the choice in a
// per-worker fragment cache; later fragments use it (egress: unknown →
// ReasonFragUnknown; ingress: unknown → delivered unchanged).
//
// A packet that would not fit the underlay MTU once encapsulated turns into
// ICMP fragmentation-needed / packet-too-big sent back to the container
// (IPv4 without DF: dropped as ReasonTooBig; we never fragment). IPv6
// packet-too-big never advertises less than 1280 (RFC 8200 §5); on an
// underlay too small for that, IPv6 packets of at most 1280 bytes that do
// not fit are dropped as ReasonTooBig.
//
// # Checksums
//
// IPv4 header checksums and checksums of translated replies are updated
// incrementally (RFC 1624). Packets from containers may carry
// CHECKSUM_PARTIAL values (TX offload on the veth), which an incremental
// update corrupts, so by default egress TCP/UDP checksums are recomputed in
// full (PortSpec.Csum = CsumRecompute); CsumIncremental is for ports whose
// offload the NetManager turned off. An IPv4 UDP checksum of 0 stays 0.
//
// # Link layer
//
// One 802.1Q/802.1ad tag is tolerated and skipped; two tags are
// ReasonVLANStacked. Frames we emit are always untagged Ethernet II with a
// fresh header (container port: dst = container MAC, src = host-side MAC;
// uplink: dst = neighbour MAC, src = uplink MAC). The inner TTL / hop limit
// is not decremented: the overlay counts as one link.
//
// # Drop reasons
//
// Parsing (egress frames, tunnel datagrams, and inner packets — any inner
// parse failure counts as ReasonBadInner): ReasonTruncatedEth,
// ReasonVLANStacked, ReasonTruncatedIPv4, ReasonBadIPv4 (version, IHL or
// total length), ReasonTruncatedIPv6, ReasonBadIPv6 (version),
// ReasonBadIPv6Ext (hop-by-hop not first, more than 8 extension headers),
// ReasonTruncatedTCP, ReasonBadTCP (data offset), ReasonTruncatedUDP,
// ReasonBadUDPLength, ReasonTruncatedICMP, ReasonTinyFragment (a first
// fragment too short for its transport header, RFC 1858).
//
// Egress: ReasonSpoofed (source is not the port's nsIP), ReasonUnknownPort,
// ReasonUnknownService (slow path: the daemon resolves it through the
// cluster and caches misses negatively — the packet path never waits),
// ReasonNoInstance, ReasonNoFamily (no address of the packet's family),
// ReasonUnsupportedProto (no ports to balance on, or a fragmented ICMP
// error to a service IP), ReasonICMPNoFlow (an ICMP error to a service IP
// about no live flow of the sender), ReasonBadEmbedded (its quote does not
// parse), ReasonFragUnknown, ReasonFlowTableFull,
// ReasonNoHeadroom, ReasonTooBig, ReasonNoNeighbor (slow path: the daemon
// sends the encapsulated datagram through a kernel UDP socket),
// ReasonNodeFamily (peer node of the other IP family than ours).
//
// Ingress: ReasonOuterFragment, ReasonNonPeer, ReasonBadInner,
// ReasonNotLocal. Traffic that is not for the tunnel (other protocols,
// ports or addresses, non-IP) is ActPass, counted as EvIngressPass.
//
// # Counters
//
// Every drop has a DropReason (its String is the metric label) and a
// per-worker counter; Events count what went right. Workers increment plain
// arrays and publish them with atomic stores once per batch; Stats sums
// them from any goroutine.
//
// # Policies
//
// Balancing policies are package policy's: a service IP's entry in the
// table names its policy.ID, each Service keeps a typed policy.State per
// policy (Prepare runs in Build, the counters carry over from
// Builder.Prev), and resolve calls ID.Pick for a new flow.
package fastpath
