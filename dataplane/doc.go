// Package dataplane is Oakwire's node data path (SPEC §7.3, §7.5): it
// ties the steering programs and the kernel tier (bpfprog), the
// per-packet logic (fastpath) and the AF_XDP sockets (fastpath/xsk) into a
// running engine. It knows nothing of the NetManager daemon: the daemon
// owns the cluster client and the service feed and hands the engine
// snapshots (SetServices); internal/nodeplane adapts the engine to the
// daemon's netmanager.Dataplane. Measurements and the reasons behind the
// choices below are in docs/design.md.
//
// # API
//
//	e, err := dataplane.New(dataplane.Config{Uplink: "eth0", NodeIP: ip, Offload: true, PinPath: dir, Resolver: r})
//	id, err := e.AddPort(dataplane.PortConfig{Ifindex, HostMAC, ContainerMAC, NS4, NS6, Job, Instance})
//	err = e.SetServices(services, instances, peers) // whole view, swapped atomically
//	flows := e.Flows()                              // live flows, both tiers
//	err = e.RemovePort(id)
//	st := e.Stats()
//	err = e.Close()      // the kernel tier's pinned flows stay (Teardown removes them)
//
// The engine runs in the network namespace of its process (the node's).
//
// # Two tiers
//
// The AF_XDP worker pool decides every flow: first packets, the policy
// pick, anti-spoofing, resolution misses, ICMP errors, fragments, anything
// unusual. With Config.Offload (the daemon's default), the kernel tier
// then executes the decided flows in TC programs (bpfprog.Tier): tc_port
// on every container port's host veth and tc_uplink on the uplink (tcx
// ingress links) look a packet's flow up in tier_flows, rewrite it with
// the checksum helpers, encapsulate or decapsulate it with
// bpf_skb_adjust_room (GSO super-packets stay whole) and redirect it
// (bpf_redirect_neigh to the uplink, bpf_redirect_peer into a container).
// What the tier does not know it punts: tc redirects it to the punt
// device's owpunt0, whose peer owpunt1 runs xdp_punt (native XDP), which
// hands it to the workers' punt sockets, metadata in the Ethernet
// destination (02:flags:ifindex). The workers answer through the same
// sockets with the output interface in the Ethernet source; tc_punt on
// owpunt0 sends it there. Without Offload, xdp_port and xdp_uplink
// (generic XDP by default) steer service-range and tunnel traffic to a
// socket per port and per uplink queue, and the workers transmit there.
//
// A worker that forwards a packet of a flow the tier can execute writes
// the flow's slot (tier_slots, memory-mapped) at the end of its round and
// publishes its key, closed. Packets that meet a closed slot are punted
// and counted in it; once the worker has sent every packet the kernel
// punted before, it opens the gate (compare-and-swap), so no packet of the
// flow overtakes another. A flow the tier cannot execute (fragments, a
// rewrite that would not fit, ICMP errors) stays with the workers.
//
// The tier manager's sweeper (every 250 ms) expires flows idle longer than
// the worker pool's idle times (TCP 10 min, after RST 1 s, after FIN 10 s;
// UDP 60 s), keeps the worker pool's flow of a busy one alive, bounds the
// slots charged to one container port (an eighth of the tier, at least
// 64; a tunnel flow is charged to the port it delivers into: beyond it a
// port's flows stay with the workers), and on every new
// table asks the processor what it would do now with each flow (simulate):
// a flow whose answer changed (its instance left, a peer went) is
// withdrawn and its next packet decided again.
//
// # Restarts
//
// With Offload and a PinPath, the tier's maps and tcx links are pinned
// under bpffs and outlive the process: a stopped or killed daemon leaves
// its decided flows running. A new engine on the same PinPath adopts them:
// slots whose choice it can recover from the table (the slot records the
// instance) go back into the worker pool's flow table; the rest get 30 s
// to be seen again. Teardown (netmanager teardown) removes the pins, the
// punt device and the saved flows. Without Offload, Close saves the worker
// pool's flows (SaveFlows, flows.json in the state directory) and the next
// engine loads them, so a graceful restart keeps every flow's choice.
//
// # Control side and misses
//
// SetServices takes every service, every instance (wherever it runs) and
// the peer set. Instances are matched to local ports by (Job, Number).
// Each call builds a fresh fastpath.Table (policy state carried over) and
// swaps it atomically; the peers also go into the steering programs' peer
// maps. A packet to a service IP the table does not know, or from a tunnel
// source it cannot place, goes to the slow path: the Resolver hook is
// called (one call at a time per address, cached negatively for
// Config.NegativeTTL) and the packet is held (up to 8 per address, 256 in
// all, 3 s) until a new table knows it, then processed and sent.
//
// # Workers
//
// Config.Workers goroutines (default: half the CPUs), each locked to its
// OS thread and optionally pinned (Config.CPUs). A worker owns its
// sockets outright: the uplink queues' sockets, container ports (least
// loaded worker, worker 0 last) and, with the tier, its punt socket. A
// round: reclaim completions, drain the cross-worker rings, receive up to
// 64 descriptors per socket, run them through Processor.Egress/Ingress
// with one table load per batch, act on the verdicts, one Transmit per
// socket, one wake per peer worker, refill the fill rings, publish the
// counters, then the round's kernel-tier decisions. Control calls (open
// or close a socket, read its statistics) run on the worker's own thread
// between rounds; a call that times out has not run and never will.
//
// Idle workers spin for a while after the last packet (adaptively: twice
// the recent gap between packets, at most Config.Poller.Spin; not at all
// when packets come further apart than that), then sleep in poll(2). The
// per-round system calls are RawSyscalls; only the blocking poll goes
// through the Go scheduler.
//
// # Panics and bad verdicts
//
// A packet never kills the daemon. Each socket's batch runs behind a
// recover: a panic drops the rest of that batch, gives its frames back and
// counts "panics" and "panic_dropped"; a last-resort recover covers the
// rest of the round. Each panic is logged at most once a second per
// worker, with the stack the first time. A verdict's Off/Len/Port is
// checked against the frame before use: a processor bug there is a
// "bad_verdict" drop.
//
// # Sockets and frames
//
// Every socket has its own UMEM (Config.Frames frames) and a fill ring
// kept full. A packet leaving through another socket is copied into that
// socket's UMEM (same worker) or into a cross-worker SPSC ring's slot
// (another worker); shared UMEM would leak a removed port's fill-ring
// frames.
//
// # Verdicts
//
//   - ActTxPort / ActTxUplink: transmit on that socket (with the tier:
//     through the punt socket, to that interface).
//   - ActPass: steered but not for us; dropped and counted (pass_dropped).
//   - ActDrop: counted by reason in fastpath's per-worker counters.
//   - ActSlowPath: copied to the slow-path goroutine through a bounded pool
//     of batches (none free: dropped, slow_full). ReasonNoNeighbor: the
//     datagram goes out through a kernel UDP socket on the node IP (the
//     kernel resolves the next hop); ReasonUnknownService and
//     ReasonUnknownSource: resolved and held, above.
//
// # Neighbours and the uplink
//
// A remote node's frames go to its next hop (the gateway of the kernel's
// route to it, or the node when on-link), whose MAC comes from the
// uplink's neighbour table (read at start, followed through netlink,
// rescanned after each slow-path send). The tier's redirect_neigh
// resolves next hops itself. The uplink gets a socket per active RX queue
// (ethtool channels, followed once a second).
//
// Limits: the next hop is looked up per table rebuild, not followed
// through route updates.
package dataplane
