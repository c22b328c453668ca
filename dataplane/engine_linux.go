//go:build linux

package dataplane

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
	"github.com/oakwire/oakwire/internal/ethtool"
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
	tm   *tierMgr
	// tmLive is tm as the workers see it: they run before startTier
	// has the manager ready, so they take it from here once it is.
	tmLive  atomic.Pointer[tierMgr]
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

type port struct {
	id     fastpath.PortID
	cfg    PortConfig
	worker int
	sock   *xsk.Socket // owned by workers[worker]; nil until opened (none with the kernel tier)
	objs   *bpfprog.Objects
	link   link.Link // xdp_port, or the kernel tier's tc_port
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
	if cfg.Uplink == "" || !cfg.NodeIP.IsValid() {
		return nil, fmt.Errorf("%w: uplink %q, node IP %v", ErrInvalidConfig, cfg.Uplink, cfg.NodeIP)
	}
	cfg.NodeIP = cfg.NodeIP.Unmap()
	if cfg.TunnelPort == 0 {
		cfg.TunnelPort = DefaultTunnelPort
	}
	if cfg.Ranges == (fastpath.Ranges{}) {
		cfg.Ranges = fastpath.DefaultRanges()
	}
	topo := xsk.DetectTopology()
	if cfg.Workers <= 0 {
		cfg.Workers = topo.SuggestWorkers()
	}
	if cfg.Workers > 64 {
		return nil, fmt.Errorf("%w: %d workers", ErrInvalidConfig, cfg.Workers)
	}
	if cfg.Frames == 0 {
		cfg.Frames = xsk.DefaultNumFrames
	}
	if cfg.RingSize == 0 {
		cfg.RingSize = xsk.DefaultRingSize
	}
	if cfg.Frames < 2*cfg.RingSize {
		return nil, fmt.Errorf("%w: %d frames for rings of %d (need twice the ring size)", ErrInvalidConfig, cfg.Frames, cfg.RingSize)
	}
	cfg.Flows = cfg.Flows.WithDefaults() // the kernel tier reads its idle times
	if cfg.Poller.Timeout <= 0 {
		// Every control call and Close wake a sleeping worker through
		// its eventfd; the timeout is only a safety net, so it is long.
		cfg.Poller.Timeout = time.Second
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 5 * time.Second
	}
	if cfg.SlowBatches <= 0 {
		cfg.SlowBatches = 16
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
	e.slow, err = newSlowPath(e)
	if err != nil {
		return e, err
	}
	for i := range cfg.Workers {
		cpu := -1
		if len(cfg.CPUs) > 0 {
			cpu = cfg.CPUs[i%len(cfg.CPUs)]
		}
		w, err := newWorker(e, i, cpu)
		if err != nil {
			return e, err
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
	e.upObjs, err = bpfprog.Load(bpfprog.Config{Queues: MaxUplinkQueues, ServiceRanges: []netip.Prefix{cfg.Ranges.Service4, cfg.Ranges.Service6}})
	if err != nil {
		return e, fmt.Errorf("load steering: %w", err)
	}
	var n4, n6 netip.Addr
	if cfg.NodeIP.Is4() {
		n4 = cfg.NodeIP
	} else {
		n6 = cfg.NodeIP
	}
	if err := e.upObjs.SetNode(n4, n6, cfg.TunnelPort); err != nil {
		return e, err
	}
	e.mu.Lock()
	e.scanNeighLocked()
	err = e.rebuildLocked()
	e.mu.Unlock()
	if err != nil {
		return e, err
	}
	if cfg.Offload {
		if err := e.startTier(); err != nil {
			return e, err
		}
		e.bg.Add(2)
		go func() { defer e.bg.Done(); e.sweepLoop() }()
		go func() { defer e.bg.Done(); e.tm.loop(e.stop) }()
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

// startTier sets the kernel tier up: the punt device with a queue and a
// socket per worker, the tier's programs (on the node maps of upObjs), the
// flows a previous daemon left pinned, and tc_uplink on the uplink last,
// once everything it punts to is in place.
func (e *Engine) startTier() (err error) {
	p0, p1, err := puntDevice(len(e.workers), puntMTU(e.mtu))
	if err != nil {
		return err
	}
	if e.tier, err = bpfprog.LoadTier(bpfprog.TierConfig{Share: e.upObjs, Flows: e.cfg.TierFlows,
		Queues: len(e.workers), PinPath: e.cfg.PinPath}); err != nil {
		return fmt.Errorf("kernel tier: %w", err)
	}
	if err := e.tier.SetConfig(p0.Attrs().Index, e.uplinkIdx); err != nil {
		return err
	}
	for i := range e.workers {
		s, err := e.openSocket(i, puntID+int32(i), p1.Attrs().Index, i)
		if err != nil {
			return fmt.Errorf("punt socket, queue %d: %w", i, err)
		}
		if err := e.tier.RegisterXSK(i, s.Fd()); err != nil {
			return err
		}
	}
	if e.puntXDP, err = e.tier.AttachPuntXDP(p1.Attrs().Index); err != nil {
		return err
	}
	if e.puntTC, err = e.tier.AttachPunt(p0.Attrs().Index); err != nil {
		return err
	}
	e.tm = newTierMgr(e, e.tier)
	if err := e.tm.adopt(); err != nil {
		e.log.Warn("dataplane: kernel tier: flows of the previous daemon", "err", err)
	}
	e.tmLive.Store(e.tm)
	if e.tierUp, err = e.tier.AttachUplink(e.uplinkIdx); err != nil {
		return err
	}
	return nil
}

// activeRxQueues is how many RX queues of the uplink an AF_XDP socket can
// bind to: the active ones (ethtool channels), not the allocated ones
// netlink reports (a plain veth on a 2-CPU machine allocates 2 and
// activates 1; binding to queue 1 fails). Drivers that report no channels
// have every allocated queue active.
func activeRxQueues(ul netlink.Link) (int, error) {
	n, ok, err := ethtool.ActiveRxQueues(ul.Attrs().Name)
	if err != nil {
		return 0, err
	}
	if !ok {
		n = ul.Attrs().NumRxQueues
	}
	return max(1, n), nil
}

// setUplinkQueues makes the uplink have a socket on each of its first n
// RX queues (at most MaxUplinkQueues; the rest pass to the kernel, counted
// as the uplink program's redirect_failed, and are logged). Queue q's
// socket goes to worker q % workers, so ingress spreads over the workers;
// queue 0 (worker 0) also transmits for all and is never removed. A queue
// leaves the XSKMAP before its socket closes. e.mu held, or New.
func (e *Engine) setUplinkQueues(n int) error {
	if n > MaxUplinkQueues {
		e.log.Warn("dataplane: the uplink has more active RX queues than get an AF_XDP socket; tunnel traffic on the others is lost: reduce them",
			"uplink", e.cfg.Uplink, "rx_queues", n, "sockets", MaxUplinkQueues,
			"fix", fmt.Sprintf("ethtool -L %s combined %d", e.cfg.Uplink, MaxUplinkQueues))
		n = MaxUplinkQueues
	}
	n = max(1, n)
	for q := len(e.uplinkSocks) - 1; q >= n; q-- {
		err := errors.Join(e.upObjs.UnregisterXSK(q), e.closeSocket(q%len(e.workers), e.uplinkSocks[q]))
		e.uplinkSocks = e.uplinkSocks[:q]
		if err != nil {
			return fmt.Errorf("uplink socket, queue %d: close: %w", q, err)
		}
	}
	for q := len(e.uplinkSocks); q < n; q++ {
		us, err := e.openSocket(q%len(e.workers), uplinkID+int32(q), e.uplinkIdx, q)
		if err != nil {
			return fmt.Errorf("uplink socket, queue %d: %w", q, err)
		}
		e.uplinkSocks = append(e.uplinkSocks, us)
		if err := e.upObjs.RegisterXSK(q, us.Fd()); err != nil {
			return fmt.Errorf("uplink xskmap, queue %d: %w", q, err)
		}
	}
	return nil
}

// queueLoop follows the uplink's active RX queue count (ethtool -L on a
// NIC, or on a veth): once a second, which is as fast as an operator
// changes channels. A change the sockets cannot follow is logged and
// retried on the next tick; queues that have no socket meanwhile pass to
// the kernel.
func (e *Engine) queueLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		ul, err := netlink.LinkByIndex(e.uplinkIdx)
		var n int
		if err == nil {
			n, err = activeRxQueues(ul)
		}
		e.mu.Lock()
		if err == nil && !e.closed && min(n, MaxUplinkQueues) != len(e.uplinkSocks) {
			old := len(e.uplinkSocks)
			err = e.setUplinkQueues(n)
			if err == nil && e.upLink != nil {
				// A native-mode veth runs no program on queues activated
				// after the program was set (bpfprog.RefreshUplink).
				err = e.upObjs.RefreshUplink(e.upLink)
			}
			if err == nil {
				e.log.Info("dataplane: uplink RX queues changed", "uplink", e.cfg.Uplink, "from", old, "to", len(e.uplinkSocks))
			}
		}
		e.mu.Unlock()
		if err != nil && err.Error() != lastErr {
			e.log.Warn("dataplane: uplink RX queues", "uplink", e.cfg.Uplink, "err", err)
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
	}
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

func (e *Engine) setOwner(id int32, wi int) {
	old := *e.owners.Load()
	own := append([]int16(nil), old...)
	own[id] = int16(wi)
	e.owners.Store(&own)
}

// AddPort attaches the data plane to a container port: an AF_XDP socket on
// queue 0 of the host-side veth (owned by the least loaded worker, fill
// ring primed), its XSKMAP entry, the port in the table, then xdp_port as a
// bpf_link. Other ports are not disturbed. It returns the port's id.
func (e *Engine) AddPort(pc PortConfig) (id fastpath.PortID, err error) {
	if pc.Ifindex <= 0 || (!pc.NS4.IsValid() && !pc.NS6.IsValid()) || pc.Job == "" {
		return 0, fmt.Errorf("%w: port ifindex %d, nsIPs %v %v, job %q", ErrInvalidConfig, pc.Ifindex, pc.NS4, pc.NS6, pc.Job)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, ErrClosed
	}
	load := make([]int, len(e.workers))
	for _, p := range e.ports {
		if p.cfg.Ifindex == pc.Ifindex {
			return 0, fmt.Errorf("%w: ifindex %d", ErrPortExists, pc.Ifindex)
		}
		load[p.worker]++
	}
	if pc.HostMAC == ([6]byte{}) {
		l, err := netlink.LinkByIndex(pc.Ifindex)
		if err != nil {
			return 0, fmt.Errorf("port ifindex %d: %w", pc.Ifindex, err)
		}
		copy(pc.HostMAC[:], l.Attrs().HardwareAddr)
	}
	for id = 0; id < fastpath.MaxPorts; id++ {
		if e.ports[id] == nil {
			break
		}
	}
	if id == fastpath.MaxPorts {
		return 0, fmt.Errorf("%w: more than %d ports", ErrInvalidConfig, fastpath.MaxPorts)
	}
	// The uplink's worker (0) gets ports last when there is a choice.
	wi := 0
	for i := range load {
		if load[i] < load[wi] || (load[i] == load[wi] && wi == 0 && i != 0) {
			wi = i
		}
	}
	p := &port{id: id, cfg: pc, worker: wi}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.teardownPortLocked(p))
		}
	}()
	if e.tier != nil {
		return id, e.addTierPortLocked(p)
	}
	if p.objs, err = bpfprog.Load(bpfprog.Config{Queues: 1, Share: e.upObjs}); err != nil {
		return 0, fmt.Errorf("port %d: load steering: %w", pc.Ifindex, err)
	}
	if p.sock, err = e.openSocket(wi, int32(id), pc.Ifindex, 0); err != nil {
		return 0, fmt.Errorf("port %d: socket: %w", pc.Ifindex, err)
	}
	e.ports[id] = p
	e.publishPortsLocked()
	e.setOwner(int32(id), wi)
	if err := p.objs.RegisterXSK(0, p.sock.Fd()); err != nil {
		return 0, fmt.Errorf("port %d: xskmap: %w", pc.Ifindex, err)
	}
	if err := p.objs.SetPort(pc.Ifindex, bpfprog.Port{IP4: pc.NS4, IP6: pc.NS6, HostMAC: pc.HostMAC}); err != nil {
		return 0, fmt.Errorf("port %d: %w", pc.Ifindex, err)
	}
	if err := e.rebuildLocked(); err != nil {
		return 0, err
	}
	if p.link, err = p.objs.AttachPort(pc.Ifindex, e.cfg.Mode); err != nil {
		return 0, err
	}
	e.nPorts.Store(int64(len(e.ports)))
	return id, nil
}

// addTierPortLocked attaches a port to the kernel tier: its addresses and
// MAC in the node maps, the port in the table, then tc_port on its host
// veth. No socket: its frames come punted, and the workers' frames to it
// leave through the punt device.
func (e *Engine) addTierPortLocked(p *port) error {
	pc := p.cfg
	if err := e.upObjs.SetPort(pc.Ifindex, bpfprog.Port{IP4: pc.NS4, IP6: pc.NS6, HostMAC: pc.HostMAC}); err != nil {
		return fmt.Errorf("port %d: %w", pc.Ifindex, err)
	}
	e.ports[p.id] = p
	e.publishPortsLocked()
	if err := e.rebuildLocked(); err != nil {
		return err
	}
	l, err := e.tier.AttachPort(pc.Ifindex)
	if err != nil {
		return err
	}
	p.link = l
	e.nPorts.Store(int64(len(e.ports)))
	return nil
}

// publishPortsLocked refreshes the PortID ↔ ifindex snapshots. e.mu held.
func (e *Engine) publishPortsLocked() {
	px := make([]int32, fastpath.MaxPorts)
	xp := make(map[int32]fastpath.PortID, len(e.ports))
	for id, p := range e.ports {
		px[id] = int32(p.cfg.Ifindex)
		xp[int32(p.cfg.Ifindex)] = id
	}
	e.portIfx.Store(&px)
	e.ifxPort.Store(&xp)
}

// RemovePort detaches port id: link first (no more steering), then the
// table entry, the socket and the programs.
func (e *Engine) RemovePort(id fastpath.PortID) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.ports[id]
	if p == nil {
		return fmt.Errorf("%w: %d", ErrNoPort, id)
	}
	return e.teardownPortLocked(p)
}

// PortByIfindex returns the id of the port on ifindex.
func (e *Engine) PortByIfindex(ifindex int) (fastpath.PortID, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, p := range e.ports {
		if p.cfg.Ifindex == ifindex {
			return id, true
		}
	}
	return 0, false
}

func (e *Engine) teardownPortLocked(p *port) error {
	var errs []error
	if p.link != nil {
		if e.tier != nil {
			errs = append(errs, p.link.Unpin()) // the port goes, not the daemon
		}
		errs = append(errs, p.link.Close())
		p.link = nil
	}
	if e.tier != nil {
		e.tm.withdrawIf(p.cfg.Ifindex)
		errs = append(errs, e.upObjs.DeletePort(p.cfg.Ifindex))
	}
	if e.ports[p.id] == p {
		delete(e.ports, p.id)
		e.publishPortsLocked()
		e.setOwner(int32(p.id), -1)
		errs = append(errs, e.rebuildLocked())
		if p.sock != nil {
			if err := e.closeSocket(p.worker, p.sock); err != nil && !errors.Is(err, ErrClosed) {
				errs = append(errs, err)
			}
		}
		p.sock = nil
	}
	if p.objs != nil {
		errs = append(errs, p.objs.DeletePort(p.cfg.Ifindex), p.objs.Close())
		p.objs = nil
	}
	e.nPorts.Store(int64(len(e.ports)))
	return errors.Join(errs...)
}

// SetServices replaces the control side's view: every service, every
// instance (local ones are matched to ports by Job and Number; their
// Local, Port and nsIP fields are filled in by the engine, and instances on
// this node without a port are left out), and the peer set (tunnel
// endpoints of the other nodes; source ports are not checked). A new
// snapshot is built and swapped atomically; the peers go to the steering
// program's peer map too. On error nothing changes.
func (e *Engine) SetServices(services []fastpath.ServiceSpec, instances []fastpath.InstanceSpec, peers []netip.AddrPort) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	oldS, oldI, oldP := e.services, e.instances, e.peers
	e.services = append([]fastpath.ServiceSpec(nil), services...)
	e.instances = append([]fastpath.InstanceSpec(nil), instances...)
	e.peers = append([]netip.AddrPort(nil), peers...)
	for i := range e.instances {
		if n := e.instances[i].Node; n.IsValid() && n.Port() == 0 {
			e.instances[i].Node = netip.AddrPortFrom(n.Addr(), DefaultTunnelPort)
		}
	}
	if err := e.rebuildLocked(); err != nil {
		e.services, e.instances, e.peers = oldS, oldI, oldP
		return err
	}
	bp := make([]bpfprog.Peer, 0, len(peers))
	for _, p := range peers {
		bp = append(bp, bpfprog.Peer{Addr: p.Addr().Unmap(), TunnelPort: cmp.Or(p.Port(), DefaultTunnelPort)})
	}
	if err := e.upObjs.ReplacePeers(bp); err != nil {
		return fmt.Errorf("peer map: %w", err)
	}
	e.nServices.Store(int64(len(services)))
	e.nInstances.Store(int64(len(instances)))
	e.nPeers.Store(int64(len(peers)))
	return nil
}

// Table returns the current snapshot (read-only).
func (e *Engine) Table() *fastpath.Table { return e.tables.Load() }

type jobNum struct {
	job string
	num uint32
}

// rebuildLocked builds a snapshot from the control state and swaps it in.
func (e *Engine) rebuildLocked() error {
	b := fastpath.Builder{
		Node: fastpath.NodeSpec{
			Addr:        netip.AddrPortFrom(e.cfg.NodeIP, e.cfg.TunnelPort),
			UplinkMAC:   e.uplinkMAC,
			UnderlayMTU: e.mtu,
			// A peer's kernel tier forwards CHECKSUM_PARTIAL packets as
			// they are (over veth they arrive so): recompute, at the cost
			// of one checksum per delivered packet.
			IngressCsum: fastpath.CsumRecompute,
		},
		Ranges:          e.cfg.Ranges,
		Services:        e.services,
		Peers:           e.peers,
		Prev:            e.tables.Load(),
		KernelNeighbors: e.cfg.Offload,
	}
	b.Instances = make([]fastpath.InstanceSpec, 0, len(e.instances)) // no reallocation: inst points into it
	local := make(map[jobNum]*port, len(e.ports))
	for _, p := range e.ports {
		local[jobNum{p.cfg.Job, p.cfg.Instance}] = p
	}
	inst := make(map[jobNum]*fastpath.InstanceSpec, len(e.instances))
	want := map[netip.Addr]bool{}
	for i := range e.instances {
		in := e.instances[i]
		k := jobNum{in.Job, in.Number}
		if p := local[k]; p != nil {
			in.Local, in.Port, in.NS4, in.NS6 = true, p.id, p.cfg.NS4, p.cfg.NS6
			in.Node = netip.AddrPortFrom(e.cfg.NodeIP, e.cfg.TunnelPort)
		} else {
			if !in.Node.IsValid() || in.Node.Addr().Unmap() == e.cfg.NodeIP {
				continue // here but not attached (yet), or nowhere
			}
			in.Local, in.Port = false, 0
			want[in.Node.Addr().Unmap()] = true
		}
		b.Instances = append(b.Instances, in)
		inst[k] = &b.Instances[len(b.Instances)-1]
	}
	ids := make([]int, 0, len(e.ports))
	for id := range e.ports {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	for _, id := range ids {
		p := e.ports[fastpath.PortID(id)]
		ps := fastpath.PortSpec{
			ID: p.id, NS4: p.cfg.NS4, NS6: p.cfg.NS6,
			ContainerMAC: p.cfg.ContainerMAC, HostMAC: p.cfg.HostMAC, Csum: p.cfg.Csum,
		}
		if in := inst[jobNum{p.cfg.Job, p.cfg.Instance}]; in != nil {
			ps.Inst4, ps.Inst6 = in.IP4, in.IP6
		}
		b.Ports = append(b.Ports, ps)
	}
	// A remote node's frames go to the MAC of the next hop towards it: the
	// node itself when it is on the uplink's link, else the route's gateway
	// (a router, a NAT). The table is keyed by node; neighbours by hop.
	hops := make(map[netip.Addr]bool, len(want))
	b.Neighbors = make(map[netip.Addr][6]byte, len(want))
	for a := range want {
		hop := e.nextHop(a)
		hops[hop] = true
		if m, ok := e.neigh[hop]; ok {
			b.Neighbors[a] = m
		}
	}
	t, err := b.Build()
	if err != nil {
		return fmt.Errorf("table: %w", err)
	}
	e.tables.Swap(t)
	e.wantNeigh = hops
	if e.slow != nil {
		e.slow.tableChanged() // held packets may be known now
	}
	if e.tm != nil {
		e.tm.changed() // withdraw the executed flows the change made wrong
	}
	return nil
}

// nextHop is the neighbour that frames to node dst go to on the uplink: the
// gateway of the kernel's route to dst, or dst itself when the route has
// none (on-link) or cannot be read.
func (e *Engine) nextHop(dst netip.Addr) netip.Addr {
	rs, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(rs) == 0 || rs[0].Gw == nil {
		return dst
	}
	if gw, ok := netip.AddrFromSlice(rs[0].Gw); ok {
		return gw.Unmap()
	}
	return dst
}

// learnNeigh records a next-hop MAC on the uplink and rebuilds the table if
// it was needed and changed.
func (e *Engine) learnNeigh(ip netip.Addr, mac net.HardwareAddr) {
	if len(mac) != 6 {
		return
	}
	ip = ip.Unmap()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	m := [6]byte(mac)
	if old, ok := e.neigh[ip]; ok && old == m {
		return
	}
	e.neigh[ip] = m
	if e.wantNeigh[ip] {
		_ = e.rebuildLocked() // only the MAC changed: cannot fail where the last build did not
	}
}

// scanNeighLocked reads the uplink's neighbour table.
func (e *Engine) scanNeighLocked() {
	ns, err := netlink.NeighList(e.uplinkIdx, netlink.FAMILY_ALL)
	if err != nil {
		return
	}
	for _, n := range ns {
		if usableNeigh(n.State) && len(n.HardwareAddr) == 6 {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				e.neigh[a.Unmap()] = [6]byte(n.HardwareAddr)
			}
		}
	}
}

func usableNeigh(state int) bool {
	return state&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0
}

// neighLoop follows the uplink's neighbour table: netlink updates, plus a
// rescan shortly after the slow path sent through the kernel and every
// second while a needed neighbour is missing.
func (e *Engine) neighLoop() {
	ch := make(chan netlink.NeighUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.NeighSubscribe(ch, done); err != nil {
		ch = nil
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var rescan <-chan time.Time
	for {
		select {
		case <-e.stop:
			return
		case u, ok := <-ch:
			if !ok {
				ch = nil
				continue
			}
			if u.Type == unix.RTM_NEWNEIGH && u.LinkIndex == e.uplinkIdx && usableNeigh(u.State) {
				if a, ok := netip.AddrFromSlice(u.IP); ok {
					e.learnNeigh(a, u.HardwareAddr)
				}
			}
		case <-e.slow.neighKick:
			rescan = time.After(20 * time.Millisecond)
		case <-rescan:
			rescan = nil
			e.rescanIfMissing()
		case <-tick.C:
			e.rescanIfMissing()
		}
	}
}

func (e *Engine) rescanIfMissing() {
	e.mu.Lock()
	defer e.mu.Unlock()
	missing := false
	for a := range e.wantNeigh {
		if _, ok := e.neigh[a]; !ok {
			missing = true
		}
	}
	if !missing || e.closed {
		return
	}
	e.scanNeighLocked()
	_ = e.rebuildLocked()
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

func (e *Engine) uplinkQueuesNow() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.uplinkSocks)
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
	if e.tm != nil {
		s.TierFlows = e.tm.flows()
		e.tm.counters(s.Counters)
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
