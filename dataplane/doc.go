// Package dataplane is Oakwire's AF_XDP data plane engine: it ties the
// steering programs (bpfprog), the per-packet logic (fastpath) and the
// AF_XDP sockets (fastpath/xsk) into a running node data path (SPEC §7.3,
// DESIGN.md "The data path"), with its kernel tier (docs/design.md "The
// kernel tier"). It knows nothing of the NetManager daemon: the daemon
// owns the cluster client and the service feed and hands the engine
// snapshots (SetServices); internal/nodeplane adapts the engine to the
// daemon's netmanager.Dataplane.
//
// # API
//
//	e, err := dataplane.New(dataplane.Config{Uplink: "eth0", NodeIP: ip, Resolver: r})
//	id, err := e.AddPort(dataplane.PortConfig{Ifindex, HostMAC, ContainerMAC, NS4, NS6, Job, Instance})
//	err = e.SetServices(services, instances, peers) // whole view, swapped atomically
//	err = e.RemovePort(id)
//	st := e.Stats()
//	err = e.Close()
//
// The engine runs in the network namespace of its process (the node's):
// the NetManager daemon runs there, and the tests re-exec the test binary
// inside an emulated node (`ip netns exec`), which also makes the SIGKILL
// test a real process death.
//
// The control side owns the service view: SetServices takes every service,
// every instance (wherever it runs) and the peer set. Instances are matched
// to local ports by (Job, Number); the engine fills in Local, Port and the
// nsIPs of those, and takes the port's own instance IPs (the egress source
// rewrite) from them, so a port attached before the control side knows its
// instance drops its service traffic as no-family until it does. Each call
// builds a fresh fastpath.Table (policy state carried over through
// Builder.Prev) and swaps it atomically; the peers also go into the steering
// program's peer map. Unknown service IPs go to the Resolver hook: called
// from the slow-path goroutine, one call at a time per address, cached
// negatively for Config.NegativeTTL; it answers by calling SetServices.
//
// # Workers and placement
//
// Config.Workers goroutines (default xsk.DetectTopology().SuggestWorkers():
// half the CPUs, 1 on the 2-vCPU test machine), each locked to its OS
// thread and optionally pinned (Config.CPUs, sched_setaffinity of the
// thread; Stats reports both). A worker owns its sockets outright; the
// uplink socket belongs to worker 0 and container ports go to the least
// loaded worker (worker 0 last). A round: reclaim completions, drain the
// cross-worker rings, receive up to 64 descriptors per socket and run them
// through Processor.Egress/Ingress with one table load per batch, act on
// the verdicts, then one Transmit (so at most one sendto) per socket with
// queued frames, one Enqueue and at most one eventfd wake per peer worker,
// refill the fill rings to their depth, publish the counters. Control
// calls (open/close a socket, read socket statistics) run on the worker's
// own thread between rounds, through a channel plus Poller.Notify. A call
// that times out (5 s: only a wedged worker is that slow) has not run and
// never will: the queued closure claims the call before it runs, a caller
// giving up cancels it first, and a call already running is waited for.
// So a timed-out socket open leaves no socket behind; a timed-out close is
// queued again in the background until the worker runs it, and goes by
// the socket, not its id, so it never closes a newer socket with that id.
//
// # Panics and bad verdicts
//
// A packet never kills the daemon. Each socket's batch runs behind a
// recover (one open-coded defer per batch, not per packet): a panic in the
// processor or while acting on its verdicts drops the rest of that batch,
// gives its frames back to the socket's free stack (every action frees or
// queues its frame as its last step, so the worker knows which frames it
// still holds) and counts "panics" and "panic_dropped"; the worker goes on
// with the next socket. A last-resort recover around the whole round
// catches the rest (cross-worker rings, flush), where frames may leak, and
// control calls turn a panic into an error. Each panic is logged through
// Config.Logger at most once a second per worker, with the stack the first
// time. Before slicing a frame or writing a TX descriptor, the worker
// checks the verdict's Off/Len against the frame (and Port against
// MaxPorts): a processor bug there is a "bad_verdict" drop, no panic.
//
// Polling is xsk.Poller's hybrid: spin with sched_yield for 200 µs after
// the last work, then poll(2) on the worker's socket fds and eventfd, with
// a 1 s timeout (every control call and Close wake the worker, so the
// timeout is only a safety net). A Pending hook re-checks the cross-worker
// rings and the control channel before sleeping, so no wake-up is lost.
// The per-round system calls (sendto kicks, sched_yield, eventfd writes)
// are RawSyscalls: through Syscall, every round shows sysmon a P in a
// system call, and sysmon then wakes every 20 µs on the worker's CPU and
// hands Ps around — bpftrace counted that churn as most of the context
// switches on the workers' CPU during request/response. Only the blocking
// poll(2) goes through Syscall, so a sleeping worker gives its P back.
// Gosched (xsk.YieldGo) was the default until request/response was
// measured hop by hop: on a locked thread every Gosched is a futex
// hand-off of ~27 µs that each hop of a request waits out; sched_yield
// brought the two-node request/response p50 from 100–290 µs to 43–56 µs
// with no loss of flood rate beyond the noise (docs/design.md).
// Measured idle (TestKillAndIdle): 0.6–0.8 % of one core for the whole engine
// process over 5 s. Under light load a sched_yield spin burns its 200 µs
// where Gosched slept most of it: the price of the latency.
//
// # One UMEM per socket; copies, not shared UMEM
//
// Every socket has its own UMEM (Config.Frames frames, default 4096 × 2 KB)
// and fill ring kept RingSize deep. A packet that leaves through another
// socket is copied into a frame of that socket's UMEM; a reply that leaves
// through the socket it came in on (ICMP too-big back to the sender) is
// transmitted from its own frame. The alternative, XDP_SHARED_UMEM across a
// worker's sockets (xsk.NewSharedSocket), saves that copy but breaks the
// port lifecycle: frames sitting in a removed socket's fill ring are not
// given back by the kernel, so every RemovePort would leak up to a fill
// ring of frames from the worker's shared pool, and the uplink's UMEM would
// have to be sized for every port at once. The copy is cheap where the time
// goes: a CPU profile of node A's engine under BenchmarkUDPFlood put the
// copy (copyTo) at 0.7 % of the engine's CPU, sendto (the kernel's
// copy-mode transmit, flush) at 33 %, and the scheduler hand-offs of
// Gosched-spinning on a locked thread at about half (the reason the
// default yield is now sched_yield).
//
// Across workers, packets are copied into a slot of a per-pair buffer and
// an xsk.SPSC carries descriptors {Addr: slot, Len, Options: destination
// socket id}; the buffer has twice the ring's slots, so a slot is never
// rewritten while the consumer copies out of it (see xring). The source
// frame goes back to its socket at once, so no return ring is needed.
//
// # Verdicts
//
//   - ActTxPort / ActTxUplink: transmit on that socket, via its owning
//     worker (same socket: no copy; same worker: copy to its UMEM; other
//     worker: cross ring).
//   - ActPass: the frame was steered by XDP but is not for the fast path;
//     it cannot be handed back to the kernel from userspace, so it is
//     dropped and counted (pass_dropped). The steering programs only
//     redirect service-range and tunnel traffic, so this is rare.
//   - ActDrop: counted by reason in fastpath's per-worker counters.
//   - ActSlowPath: copied into a preallocated batch for the slow-path
//     goroutine; batches are recycled through a bounded free list, so a
//     worker never blocks: no free batch means drop and count (slow_full).
//     ReasonNoNeighbor: the encapsulated datagram's UDP payload is sent
//     through a kernel UDP socket bound to the node IP (the kernel resolves
//     the next hop) and the neighbour watcher rescans. ReasonUnknownService:
//     the Resolver hook, as above.
//
// # Neighbours and the uplink
//
// The uplink MAC and MTU come from netlink at New. A remote node's frames go
// to its next hop: the gateway of the kernel's route to the node (a router
// or NAT between nodes), or the node itself when it is on-link. Next-hop
// MACs come from the uplink's neighbour table: read at start, followed through a
// netlink neighbour subscription, rescanned 20 ms after
// each slow-path send and every second while a needed node is missing. A
// learnt MAC rebuilds the table, after which that node's packets take the
// fast path (Builder.Neighbors).
//
// # Steering programs and lifecycle
//
// One bpfprog.Objects for the uplink (xdp_uplink; SetNode with the node IP
// and tunnel port; peers from SetServices) and one per container port
// (xdp_port, own XSKMAP, maps shared with the uplink's). AddPort: load,
// open the socket on queue 0 of the host-side veth on the chosen worker
// (fill ring primed first), register it in the XSKMAP, rebuild the table
// with the port, then attach xdp_port as a bpf_link (Config.Mode, default
// generic: DESIGN.md measured it at least as fast as native on veth).
// RemovePort reverses it link first; other ports are untouched. Links die
// with the process, so a SIGKILLed engine leaves no program attached
// (TestKillAndIdle). A background goroutine sweeps idle flows (a sixteenth
// of the flow table every 250 ms).
//
// The uplink gets a socket per RX queue (up to MaxUplinkQueues; RSS spreads
// tunnel datagrams over the queues by flow and xdp_uplink redirects to the
// queue's slot of the XSKMAP), queue q on worker q % workers; queue 0's
// socket, on worker 0, also transmits for every worker. Container ports
// have one queue each. TestUplinkQueues sends 64 flows over a 4-queue
// uplink (native XDP on a multi-queue veth) and checks that every datagram
// arrives and several queues carried them; with queue 0 alone, two thirds
// were lost.
//
// Limits today: the next hop is looked up per rebuild, not followed
// through route updates; no held-packet queue for unknown
// services (dropped and counted, which SPEC §7.3 allows).
package dataplane
