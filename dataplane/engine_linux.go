//go:build linux

package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
)

// uplinkID is the socket id of the uplink (its queue 0, which also
// transmits) in owner tables and cross-worker descriptors; container ports
// use their PortID. Queue q of the uplink is socket uplinkID+q; only queue
// 0 is ever a destination.
const uplinkID = int32(fastpath.MaxPorts)

// puntID is the socket id of worker 0's punt queue (kernel tier); worker
// i's is puntID+i.
const puntID = uplinkID + MaxUplinkQueues

// MaxUplinkQueues bounds the uplink's RX queues that get a socket (each has
// its own UMEM of Config.Frames frames); tunnel datagrams that RSS puts on
// queues beyond it pass to the kernel and are lost (counted as the uplink
// program's redirect_failed; New logs it).
const MaxUplinkQueues = 16

// Engine is one node's AF_XDP data plane: the steering programs (uplink and
// one per container port, sharing maps), the per-packet processor with its
// table snapshot and flow table, a pool of workers, the slow path and the
// neighbour watcher. Its methods are safe for concurrent use; control calls
// (AddPort, RemovePort, SetServices, Close) are serialised internally.
type Engine struct {
	cfg  Config
	topo string

	tables fastpath.TableHolder
	flows  *fastpath.FlowTable
	proc   *fastpath.Processor

	workers []*worker
	// owners maps a socket id (PortID, or uplinkID) to the index of the
	// worker that owns the socket, -1 for none. Copy-on-write; workers load
	// it once per batch.
	owners atomic.Pointer[[]int16]

	slow *slowPath

	log *slog.Logger
	// panicStack is set once a recovered panic was logged with its stack.
	panicStack atomic.Bool
	// procHook is a test seam (see procHook); nil in production.
	procHook atomic.Pointer[procHook]
	// ctlTimeout bounds how long a control call waits for its worker, in
	// nanoseconds (defaultCtlTimeout; tests shorten it).
	ctlTimeout atomic.Int64

	// mu guards the control state below and serialises table rebuilds.
	mu        sync.Mutex
	closed    bool
	uplinkIdx int
	uplinkMAC [6]byte
	// uplinkSocks holds the uplink's sockets by RX queue: one per active
	// queue, up to MaxUplinkQueues. queueLoop follows channel changes.
	uplinkSocks []*xsk.Socket
	mtu         int
	upObjs      *bpfprog.Objects
	upLink      link.Link
	ports       map[fastpath.PortID]*port
	services    []fastpath.ServiceSpec
	instances   []fastpath.InstanceSpec
	peers       []netip.AddrPort
	neigh       map[netip.Addr][6]byte
	wantNeigh   map[netip.Addr]bool

	// Kernel tier (Config.Offload): the loaded tier, its manager, the
	// links of the uplink and the punt device.
	tier *bpfprog.Tier
	// tm is set once startTier has the manager ready; the workers run
	// before that, so everyone loads it (nil: no kernel tier yet).
	tm      atomic.Pointer[tierMgr]
	tierUp  link.Link
	puntTC  link.Link
	puntXDP link.Link
	// portIfx maps a PortID to its host veth's ifindex, ifxPort back
	// (copy-on-write; workers and the sweeper read them without e.mu).
	portIfx atomic.Pointer[[]int32]
	ifxPort atomic.Pointer[map[int32]fastpath.PortID]

	nPorts, nServices, nInstances, nPeers, nSockets atomic.Int64

	stop chan struct{}
	bg   sync.WaitGroup
}

// defaultCtlTimeout bounds a control call's wait for its worker. A round
// takes microseconds, so only a wedged worker makes a call wait this long.
const defaultCtlTimeout = 5 * time.Second

// errCtlTimeout says a control call gave up waiting for its worker; the
// call did not run and never will (onWorker).
var errCtlTimeout = errors.New("control call timed out")

// New loads the steering programs, starts the workers, opens the uplink
// socket and attaches xdp_uplink. The table starts with no services,
// instances, ports or peers; push them with SetServices and AddPort.
func New(cfg Config) (e *Engine, err error) {
	topo := xsk.DetectTopology()
	if err := cfg.fill(topo); err != nil {
		return nil, err
	}
	ul, err := netlink.LinkByName(cfg.Uplink)
	if err != nil {
		return nil, fmt.Errorf("uplink %s: %w", cfg.Uplink, err)
	}
	e = &Engine{
		cfg:       cfg,
		topo:      topo.String(),
		flows:     fastpath.NewFlowTable(cfg.Flows),
		uplinkIdx: ul.Attrs().Index,
		mtu:       cfg.UnderlayMTU,
		ports:     map[fastpath.PortID]*port{},
		neigh:     map[netip.Addr][6]byte{},
		wantNeigh: map[netip.Addr]bool{},
		stop:      make(chan struct{}),
		log:       cfg.Logger,
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.ctlTimeout.Store(int64(defaultCtlTimeout))
	copy(e.uplinkMAC[:], ul.Attrs().HardwareAddr)
	if e.mtu == 0 {
		e.mtu = ul.Attrs().MTU
	}
	// A socket per active RX queue: RSS spreads tunnel datagrams over
	// them by flow, and the steering program redirects to the socket of
	// the queue the packet came in on (XSKMAP index rx_queue_index).
	queues, err := activeRxQueues(ul)
	if err != nil {
		return nil, fmt.Errorf("uplink %s: %w", cfg.Uplink, err)
	}
	e.proc = fastpath.NewProcessor(&e.tables, e.flows)
	own := make([]int16, fastpath.MaxPorts+1)
	for i := range own {
		own[i] = -1
	}
	e.owners.Store(&own)
	defer func() {
		if err != nil {
			err = errors.Join(err, e.Close())
			e = nil
		}
	}()
	if e.slow, err = newSlowPath(e); err != nil {
		return e, err
	}
	if err := e.startWorkers(); err != nil {
		return e, err
	}
	if err := e.loadSteering(); err != nil {
		return e, err
	}
	if cfg.Offload {
		if err := e.startTier(); err != nil {
			return e, err
		}
		e.bg.Add(2)
		go func() { defer e.bg.Done(); e.sweepLoop() }()
		go func() { defer e.bg.Done(); e.tm.Load().loop(e.stop) }()
		return e, nil
	}
	if err := e.setUplinkQueues(queues); err != nil {
		return e, err
	}
	e.setOwner(uplinkID, 0)
	if e.upLink, err = e.upObjs.AttachUplink(e.uplinkIdx, cfg.Mode); err != nil {
		return e, err
	}
	e.bg.Add(3)
	go func() { defer e.bg.Done(); e.sweepLoop() }()
	go func() { defer e.bg.Done(); e.neighLoop() }()
	go func() { defer e.bg.Done(); e.queueLoop() }()
	return e, nil
}

// fill checks c and fills in its defaults.
func (c *Config) fill(topo xsk.Topology) error {
	if c.Uplink == "" || !c.NodeIP.IsValid() {
		return fmt.Errorf("%w: uplink %q, node IP %v", ErrInvalidConfig, c.Uplink, c.NodeIP)
	}
	c.NodeIP = c.NodeIP.Unmap()
	if c.TunnelPort == 0 {
		c.TunnelPort = DefaultTunnelPort
	}
	if c.Ranges == (fastpath.Ranges{}) {
		c.Ranges = fastpath.DefaultRanges()
	}
	if c.Workers <= 0 {
		c.Workers = topo.SuggestWorkers()
	}
	if c.Workers > 64 {
		return fmt.Errorf("%w: %d workers", ErrInvalidConfig, c.Workers)
	}
	if c.Frames == 0 {
		c.Frames = xsk.DefaultNumFrames
	}
	if c.RingSize == 0 {
		c.RingSize = xsk.DefaultRingSize
	}
	if c.Frames < 2*c.RingSize {
		return fmt.Errorf("%w: %d frames for rings of %d (need twice the ring size)", ErrInvalidConfig, c.Frames, c.RingSize)
	}
	c.Flows = c.Flows.WithDefaults() // the kernel tier reads its idle times
	if c.Poller.Timeout <= 0 {
		// Every control call and Close wake a sleeping worker through
		// its eventfd; the timeout is only a safety net, so it is long.
		c.Poller.Timeout = time.Second
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = 5 * time.Second
	}
	if c.SlowBatches <= 0 {
		c.SlowBatches = 16
	}
	return nil
}

// startWorkers starts cfg.Workers workers, connected to each other.
func (e *Engine) startWorkers() error {
	for i := range e.cfg.Workers {
		cpu := -1
		if len(e.cfg.CPUs) > 0 {
			cpu = e.cfg.CPUs[i%len(e.cfg.CPUs)]
		}
		w, err := newWorker(e, i, cpu)
		if err != nil {
			return err
		}
		e.workers = append(e.workers, w)
	}
	for _, w := range e.workers {
		w.connect(e.workers)
	}
	for _, w := range e.workers {
		e.bg.Add(1)
		go func() { defer e.bg.Done(); w.run() }()
	}
	return nil
}

// loadSteering loads the steering programs' objects (shared by the
// uplink and, without the kernel tier, the ports) with the node's
// address, and builds the first table.
func (e *Engine) loadSteering() (err error) {
	cfg := &e.cfg
	e.upObjs, err = bpfprog.Load(bpfprog.Config{Queues: MaxUplinkQueues, ServiceRanges: []netip.Prefix{cfg.Ranges.Service4, cfg.Ranges.Service6}})
	if err != nil {
		return fmt.Errorf("load steering: %w", err)
	}
	var n4, n6 netip.Addr
	if cfg.NodeIP.Is4() {
		n4 = cfg.NodeIP
	} else {
		n6 = cfg.NodeIP
	}
	if err := e.upObjs.SetNode(n4, n6, cfg.TunnelPort); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.scanNeighLocked()
	return e.rebuildLocked()
}

// openSocket creates socket id on (ifindex, queue) on worker wi, fills its
// fill ring (before it may enter the XSKMAP) and returns it. Creating,
// registering with the worker and counting happen in one control call, so
// a call that fails or times out has opened nothing (onWorker).
func (e *Engine) openSocket(wi int, id int32, ifindex, queue int) (*xsk.Socket, error) {
	var s *xsk.Socket
	err := e.onWorker(wi, func(w *worker) error {
		xs, err := xsk.NewSocket(xsk.Config{
			Ifindex: ifindex, Queue: queue, NumFrames: e.cfg.Frames, Mode: xsk.BindCopy,
			FillSize: e.cfg.RingSize, CompletionSize: e.cfg.RingSize, RxSize: e.cfg.RingSize, TxSize: e.cfg.RingSize,
		})
		if err != nil {
			return err
		}
		w.addSocket(id, xs)
		s = xs
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// closeSocket closes s on worker wi. If the worker does not take the call
// in time, the close is not dropped: it is queued again in the background
// until the worker runs it (or exits, which closes every socket it has),
// so a slow worker never keeps a removed port's socket, UMEM and queue
// binding for good. The timeout is still returned to the caller.
func (e *Engine) closeSocket(wi int, s *xsk.Socket) error {
	f := func(w *worker) error { return w.removeSocket(s) }
	err := e.onWorker(wi, f)
	if errors.Is(err, errCtlTimeout) {
		go func() {
			for errors.Is(e.onWorker(wi, f), errCtlTimeout) {
				// each try waits up to ctlTimeout: no busy loop
			}
		}()
	}
	return err
}

// Control call states (onWorker).
const (
	ctlQueued int32 = iota
	ctlRunning
	ctlCancelled
)

// onWorker runs f on worker wi's thread between two rounds and waits for
// it. f runs at most once, and a call that returns errCtlTimeout has not
// run f and never will: the queued closure claims the call before running
// f, and a caller that times out first cancels it, so a late worker skips
// it. (Before, a timed-out openSocket still ran later and left a socket
// nobody registered, counted or closed.) Once f has started, onWorker
// waits for it to end, however long: f is a short control operation, and
// its result must not be lost. A panic in f comes back as an error.
func (e *Engine) onWorker(wi int, f func(w *worker) error) error {
	w := e.workers[wi]
	var state atomic.Int32
	done := make(chan error, 1)
	call := func() {
		if !state.CompareAndSwap(ctlQueued, ctlRunning) {
			return // the caller gave up
		}
		done <- w.runCtl(f)
	}
	// exited: the worker ran f before it stopped, or never will.
	exited := func() error {
		select {
		case err := <-done:
			return err
		default:
			return ErrClosed
		}
	}
	t := time.NewTimer(time.Duration(e.ctlTimeout.Load()))
	defer t.Stop()
	select {
	case w.ctl <- call:
	case <-w.exited:
		return ErrClosed
	case <-t.C:
		return fmt.Errorf("worker %d: %w", wi, errCtlTimeout)
	}
	_ = w.poller.Notify()
	select {
	case err := <-done:
		return err
	case <-w.exited:
		return exited()
	case <-t.C:
		if state.CompareAndSwap(ctlQueued, ctlCancelled) {
			return fmt.Errorf("worker %d: %w", wi, errCtlTimeout)
		}
	}
	select { // f is running: wait for it
	case err := <-done:
		return err
	case <-w.exited:
		return exited()
	}
}

// sweepLoop expires idle flows: a slice of the table four times a second.
func (e *Engine) sweepLoop() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	budget := max(1024, e.flows.Capacity()/16)
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			e.flows.Sweep(fastpath.Monotonic(), budget)
		}
	}
}

// Stats sums the workers' counters and reads the sockets' and the steering
// programs' kernel counters.
func (e *Engine) Stats() Stats {
	s := Stats{
		Mode: e.cfg.Mode.String(), Workers: len(e.workers), CPUs: append([]int(nil), e.cfg.CPUs...), Yield: e.cfg.Poller.Yield.String(),
		UplinkRxQueues: e.uplinkQueuesNow(),
		Topology:       e.topo, Sockets: int(e.nSockets.Load()), Ports: int(e.nPorts.Load()),
		Services: int(e.nServices.Load()), Instances: int(e.nInstances.Load()), Peers: int(e.nPeers.Load()),
		Flows: e.flows.Len(), Counters: map[string]uint64{}, Offload: e.cfg.Offload,
	}
	if m := e.tm.Load(); m != nil {
		s.TierFlows = m.flows()
		m.counters(s.Counters)
	}
	var c [numCounters]uint64
	for _, w := range e.workers {
		w.wctx.Stats(&s.Fast)
		for i := range c {
			c[i] += w.pub[i].Load()
		}
	}
	for i, n := range counterNames {
		s.Counters[n] = c[i]
	}
	for k, v := range e.slow.counters() {
		s.Counters[k] = v
	}
	fc := e.flows.Counters()
	s.Counters["flows_evicted_quota"] = fc.EvictedQuota
	s.Counters["flows_evicted_table_full"] = fc.EvictedFull
	s.Counters["flows_expired_unanswered"] = fc.ExpiredUnanswered
	for wi := range e.workers {
		_ = e.onWorker(wi, func(w *worker) error {
			for _, ws := range w.socks {
				st, err := ws.s.Stats()
				if err != nil {
					continue
				}
				s.Counters["xsk_rx_ring_full"] += st.RxRingFull
				s.Counters["xsk_rx_fill_ring_empty"] += st.RxFillRingEmptyDescs
				s.Counters["xsk_rx_dropped"] += st.RxDropped
				s.Counters["xsk_rx_invalid"] += st.RxInvalidDescs
				s.Counters["xsk_tx_invalid"] += st.TxInvalidDescs
				s.Counters["xsk_kicks"] += st.Kicks
				s.Counters["xsk_kick_errors"] += st.KickEAGAIN + st.KickENOBUFS + st.KickEBUSY + st.KickOther
			}
			ps := w.poller.Stats()
			s.Counters["poll_sleeps"] += ps.Sleeps
			s.Counters["poll_wakeups"] += ps.Wakeups
			return nil
		})
	}
	e.mu.Lock()
	objs := e.upObjs
	if objs != nil && !e.closed {
		if m, err := objs.Counters(); err == nil {
			for k, v := range m {
				s.Counters["bpf_uplink_"+k] = v
			}
		}
		for _, p := range e.ports {
			if p.objs == nil {
				continue // kernel tier: tc_port counts in the tier's counters
			}
			if m, err := p.objs.Counters(); err == nil {
				for k, v := range m {
					s.Counters["bpf_port_"+k] += v
				}
			}
		}
	}
	e.mu.Unlock()
	return s
}

// Close detaches every program (links first, so the kernel stops steering),
// stops the workers (which close their sockets) and the background
// goroutines, and releases the programs. Idempotent.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	var errs []error
	for _, p := range e.ports {
		if p.link != nil {
			errs = append(errs, p.link.Close())
			p.link = nil
		}
	}
	if e.upLink != nil {
		errs = append(errs, e.upLink.Close())
		e.upLink = nil
	}
	// The kernel tier's links stay attached where they are pinned: the
	// flows it executes go on without the daemon. Closing the handles
	// detaches only what is not pinned.
	for _, l := range []*link.Link{&e.tierUp, &e.puntTC, &e.puntXDP} {
		if *l != nil {
			errs = append(errs, (*l).Close())
			*l = nil
		}
	}
	e.mu.Unlock()
	close(e.stop)
	for _, w := range e.workers {
		close(w.quit)
		_ = w.poller.Notify()
	}
	e.bg.Wait()
	if e.slow != nil {
		errs = append(errs, e.slow.close())
	}
	e.mu.Lock()
	for _, p := range e.ports {
		if p.objs != nil {
			errs = append(errs, p.objs.Close())
		}
	}
	e.ports = map[fastpath.PortID]*port{}
	if e.tier != nil {
		errs = append(errs, e.tier.Close())
	}
	if e.upObjs != nil {
		errs = append(errs, e.upObjs.Close())
	}
	e.mu.Unlock()
	for _, w := range e.workers {
		errs = append(errs, w.poller.Close())
	}
	return errors.Join(errs...)
}
