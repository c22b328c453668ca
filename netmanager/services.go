package netmanager

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/policy"
)

// The node's knowledge of services (SPEC §7.3 item 6, DESIGN "The control
// plane"): ServiceView holds the service entries this node is interested
// in and the peer set, and pushes a full new spec set to a TableSink on
// every change; Resolver (resolver.go) resolves fast-path misses; the watch
// loop and interest expiry (watch.go) keep the view current and small.

// TableSink receives the data plane's service tables. Every change of the
// view produces a complete new set (never a delta); the sink builds and
// swaps its snapshot. Calls are serialised and each call carries a state at
// least as new as the previous one. The sink may call Touch, TouchAddr and
// Lookup, but nothing that changes the view (that would push from inside a
// push and deadlock).
type TableSink interface {
	SetServices(svcs []fastpath.ServiceSpec, insts []fastpath.InstanceSpec, peers []netip.AddrPort) error
}

// ServiceSource is what the view needs of the cluster service manager.
// NewServiceSource adapts a *nodeclient.Client; tests use fakes.
type ServiceSource interface {
	// ResolveIP returns the entry of the service owning addr (service or
	// instance IP) and registers the node's interest in it. An unknown
	// address is an error wrapping api.ErrNotFound.
	ResolveIP(ctx context.Context, addr netip.Addr) (api.ServiceEntry, error)
	// Watch long-polls for changes after version since of epoch.
	Watch(ctx context.Context, epoch string, since uint64) (api.WatchResponse, error)
	// DropInterest stops changes of job being pushed to the node.
	DropInterest(ctx context.Context, job string) error
}

// NewServiceSource adapts c. wait is the watch's long-poll duration (the
// server caps it); 0 means 30 s.
func NewServiceSource(c *nodeclient.Client, wait time.Duration) ServiceSource {
	if wait <= 0 {
		wait = 30 * time.Second
	}
	return &clientSource{c: c, wait: wait}
}

type clientSource struct {
	c    *nodeclient.Client
	wait time.Duration
}

func (s *clientSource) ResolveIP(ctx context.Context, addr netip.Addr) (api.ServiceEntry, error) {
	return s.c.ResolveByIP(ctx, addr)
}

func (s *clientSource) Watch(ctx context.Context, epoch string, since uint64) (api.WatchResponse, error) {
	return s.c.Watch(ctx, epoch, since, s.wait)
}

func (s *clientSource) DropInterest(ctx context.Context, job string) error {
	return s.c.DropInterest(ctx, job)
}

// ServiceOptions tune the view, the resolver and the watch. Zero values
// take the defaults.
type ServiceOptions struct {
	// NegativeTTL is how long an address the cluster did not know (or
	// just resolved) is not asked about again (default 5 s).
	NegativeTTL time.Duration
	// IdleTimeout is how long a service without local instances stays in
	// the view after its last use (default 10 min).
	IdleTimeout time.Duration
	// QueueLen bounds the resolver's queue of misses (default 256).
	QueueLen int
	// ResolveTimeout bounds one resolve call (default 5 s).
	ResolveTimeout time.Duration
	// MaxNegative bounds the negative cache (default 65536 addresses).
	MaxNegative int
	// Now is the clock (default time.Now); tests inject one.
	Now    func() time.Time
	Logger *slog.Logger

	// after is the timer of backoffs (default time.After); tests inject one.
	after func(time.Duration) <-chan time.Time
}

func (o *ServiceOptions) defaults() {
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = 5 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Minute
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 256
	}
	if o.ResolveTimeout <= 0 {
		o.ResolveTimeout = 5 * time.Second
	}
	if o.MaxNegative <= 0 {
		o.MaxNegative = 1 << 16
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.after == nil {
		o.after = time.After
	}
}

// ServiceStats are the counters of the view, the resolver and the watch,
// for /status and /metrics.
type ServiceStats struct {
	Services  int `json:"services"`  // entries in the view
	Instances int `json:"instances"` // running instances pushed
	Peers     int `json:"peers"`
	Local     int `json:"local_jobs"` // jobs with an instance on this node

	Misses          uint64 `json:"misses"`           // Resolver.Miss calls
	MissesDropped   uint64 `json:"misses_dropped"`   // queue full
	MissesDeduped   uint64 `json:"misses_deduped"`   // lookup of that address already in flight
	NegativeHits    uint64 `json:"negative_hits"`    // address asked about too recently
	Resolves        uint64 `json:"resolves"`         // entries the cluster resolved and the view merged
	ResolveNotFound uint64 `json:"resolve_notfound"` // addresses the cluster does not know
	ResolveErrors   uint64 `json:"resolve_errors"`   // failed resolve calls (retried after a backoff)
	ResolveKnown    uint64 `json:"resolve_known"`    // misses on addresses the view already knew
	WatchErrors     uint64 `json:"watch_errors"`
	WatchChanges    uint64 `json:"watch_changes"` // changes applied
	Resyncs         uint64 `json:"resyncs"`
	Expiries        uint64 `json:"expiries"` // idle services dropped
	DropErrors      uint64 `json:"drop_interest_errors"`
	Pushes          uint64 `json:"pushes"`           // spec sets handed to the sink
	SinkErrors      uint64 `json:"sink_errors"`      // spec sets the sink refused
	IgnoredIPTypes  uint64 `json:"ignored_ip_types"` // service IPs of unknown policies received
	// BadAddresses is a gauge: unparsable or duplicate addresses skipped
	// in the last spec set pushed.
	BadAddresses uint64 `json:"bad_addresses"`
}

type serviceCounters struct {
	misses, missesDropped, missesDeduped, negativeHits       counter
	resolves, resolveNotFound, resolveErrors, resolveKnown   counter
	watchErrors, watchChanges, resyncs, expiries, dropErrors counter
	pushes, sinkErrors, ignoredIPTypes                       counter
}

// ServiceView is the node's knowledge of services: the entries of the
// services it is interested in, by job name, and its peer set. It is safe
// for concurrent use.
type ServiceView struct {
	sink TableSink
	opt  ServiceOptions
	ctr  serviceCounters

	// interestMu orders the cluster calls that add interest (resolves)
	// against those that drop it (expiry). Taken before mu.
	interestMu sync.Mutex
	// pushMu serialises pushes so the sink sees states in order; it is
	// taken before mu, never while holding mu.
	pushMu sync.Mutex
	// mu guards every field below.
	mu       sync.Mutex
	entries  map[string]api.ServiceEntry
	lastUsed map[string]time.Time
	local    map[string]bool
	// peers is the peer set by peerKey; peerList its sorted copy for the
	// next push (nil: to be rebuilt).
	peers    map[string]api.Peer
	peerList []api.Peer
	byAddr   map[netip.Addr]string // every service and instance IP of entries → job
	// seq counts watch applications; changed[job] is the seq of the last
	// watch change (or removal) of job, so a resolve answer older than it
	// is not merged over it.
	seq     uint64
	changed map[string]uint64
	// pendingDrops are expired jobs whose DropInterest failed (retried).
	pendingDrops map[string]struct{}
	lastInsts    int // instances in the last push
	lastBad      int // bad addresses in the last push
	// origin says where each entry came from and at which change-stream
	// version (GET /services); posEpoch/posVersion is the watch's
	// position.
	origin     map[string]entryOrigin
	posEpoch   string
	posVersion uint64
}

// entryOrigin is how an entry of the view arrived.
type entryOrigin struct {
	version uint64 // the change-stream version (0 for a resolve)
	source  string // watch, resync or resolve
}

// NewServiceView returns an empty view pushing to sink.
func NewServiceView(sink TableSink, o ServiceOptions) *ServiceView {
	o.defaults()
	return &ServiceView{
		sink: sink, opt: o,
		entries:      map[string]api.ServiceEntry{},
		lastUsed:     map[string]time.Time{},
		local:        map[string]bool{},
		peers:        map[string]api.Peer{},
		byAddr:       map[netip.Addr]string{},
		changed:      map[string]uint64{},
		pendingDrops: map[string]struct{}{},
		origin:       map[string]entryOrigin{},
	}
}

// Lookup returns the job owning addr (any service or instance IP of an
// entry in the view, running or not).
func (v *ServiceView) Lookup(addr netip.Addr) (job string, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	job, ok = v.byAddr[addr.Unmap()]
	return job, ok
}

// Entry returns the entry of job.
func (v *ServiceView) Entry(job string) (api.ServiceEntry, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.entries[job]
	return e, ok
}

// Jobs returns the jobs in the view, sorted.
func (v *ServiceView) Jobs() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	jobs := make([]string, 0, len(v.entries))
	for j := range v.entries {
		jobs = append(jobs, j)
	}
	slices.Sort(jobs)
	return jobs
}

// Touch marks job as used now (restarting its idle clock). The data plane
// may call it for services in active use; it never blocks on I/O.
func (v *ServiceView) Touch(job string) {
	now := v.opt.Now()
	v.mu.Lock()
	if _, ok := v.entries[job]; ok {
		v.lastUsed[job] = now
	}
	v.mu.Unlock()
}

// TouchAddr marks the service owning addr (any of its service or instance
// IPs) as used now. The data plane may call it for destinations it sees
// traffic to, so services in steady use do not expire (their table entries
// would otherwise go after IdleTimeout and come back on the next miss).
func (v *ServiceView) TouchAddr(addr netip.Addr) {
	now := v.opt.Now()
	v.mu.Lock()
	if job, ok := v.byAddr[addr.Unmap()]; ok {
		v.lastUsed[job] = now
	}
	v.mu.Unlock()
}

// SetLocal says whether job has an instance on this node. Such services
// never expire; when the last local instance goes, the idle clock starts.
func (v *ServiceView) SetLocal(job string, local bool) {
	now := v.opt.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if local {
		v.local[job] = true
		return
	}
	if v.local[job] {
		delete(v.local, job)
		if _, ok := v.entries[job]; ok {
			v.lastUsed[job] = now
		}
	}
}

// SetLocalJobs replaces the set of jobs with an instance on this node.
func (v *ServiceView) SetLocalJobs(jobs []string) {
	now := v.opt.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	next := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		next[j] = true
	}
	for j := range v.local {
		if _, ok := v.entries[j]; ok && !next[j] {
			v.lastUsed[j] = now
		}
	}
	v.local = next
}

// Apply merges one entry (replacing the job's previous one) and pushes.
func (v *ServiceView) Apply(e api.ServiceEntry) error {
	v.mu.Lock()
	v.upsertLocked(e, v.opt.Now())
	v.mu.Unlock()
	return v.Push()
}

// Remove deletes job from the view and pushes.
func (v *ServiceView) Remove(job string) error {
	v.mu.Lock()
	v.deleteLocked(job)
	v.mu.Unlock()
	return v.Push()
}

// SetPeers replaces the peer set and pushes.
func (v *ServiceView) SetPeers(peers []api.Peer) error {
	v.mu.Lock()
	v.setPeersLocked(peers)
	v.mu.Unlock()
	return v.Push()
}

// peerKey identifies a peer in the set: its cluster and node id, as the
// cluster's deltas name it; a peer without a node id by its endpoint.
func peerKey(p api.Peer) string {
	if p.NodeID != "" {
		return p.ClusterID + "/" + p.NodeID
	}
	return "@" + p.IP.String() + ":" + strconv.Itoa(p.Port)
}

func (v *ServiceView) setPeersLocked(peers []api.Peer) {
	v.peers = make(map[string]api.Peer, len(peers))
	for _, p := range peers {
		v.peers[peerKey(p)] = p
	}
	v.peerList = nil
}

// applyPeerDeltaLocked applies one peers change: Del first, then Set (a
// delta never names a peer in both).
func (v *ServiceView) applyPeerDeltaLocked(d *api.PeerDelta) {
	for _, p := range d.Del {
		delete(v.peers, peerKey(p))
	}
	for _, p := range d.Set {
		v.peers[peerKey(p)] = p
	}
	v.peerList = nil
}

// peerListLocked is the peer set sorted by key.
func (v *ServiceView) peerListLocked() []api.Peer {
	if v.peerList == nil {
		keys := slices.Sorted(maps.Keys(v.peers))
		v.peerList = make([]api.Peer, len(keys))
		for i, k := range keys {
			v.peerList[i] = v.peers[k]
		}
	}
	return v.peerList
}

// Replace replaces every entry and the peer set (a resync) and pushes.
// Jobs that stay keep their last-use time.
func (v *ServiceView) Replace(entries []api.ServiceEntry, peers []api.Peer) error {
	v.mu.Lock()
	v.replaceLocked(entries, peers, 0)
	v.mu.Unlock()
	return v.Push()
}

func (v *ServiceView) replaceLocked(entries []api.ServiceEntry, peers []api.Peer, version uint64) {
	now := v.opt.Now()
	v.seq++
	keep := make(map[string]bool, len(entries))
	for _, e := range entries {
		keep[e.JobName] = true
	}
	for j := range v.entries {
		if !keep[j] {
			v.deleteLocked(j)
			v.changed[j] = v.seq
		}
	}
	for _, e := range entries {
		v.upsertLocked(e, now)
		v.changed[e.JobName] = v.seq
		v.origin[e.JobName] = entryOrigin{version, "resync"}
	}
	v.setPeersLocked(peers)
	v.pruneChangedLocked()
}

// ApplyWatch applies one watch answer: a resync replaces everything;
// otherwise the changes in order (service: replace the entry; removed:
// delete it; peers: apply its delta, or without one replace the peer set
// with resp.Peers). It pushes once.
func (v *ServiceView) ApplyWatch(resp api.WatchResponse) error {
	v.mu.Lock()
	if resp.Resync {
		v.replaceLocked(resp.Services, resp.Peers, resp.Version)
		v.ctr.resyncs.Inc()
	} else {
		v.applyChangesLocked(resp)
	}
	v.mu.Unlock()
	return v.Push()
}

func (v *ServiceView) applyChangesLocked(resp api.WatchResponse) {
	now := v.opt.Now()
	v.seq++
	for _, ch := range resp.Changes {
		switch ch.Type {
		case api.ChangeService:
			if ch.Service == nil {
				continue
			}
			if ch.Service.JobName == "" {
				ch.Service.JobName = ch.JobName
			}
			v.upsertLocked(*ch.Service, now)
			v.changed[ch.Service.JobName] = v.seq
			v.origin[ch.Service.JobName] = entryOrigin{ch.Version, "watch"}
		case api.ChangeRemoved:
			v.deleteLocked(ch.JobName)
			v.changed[ch.JobName] = v.seq
		case api.ChangePeers:
			if ch.PeerDelta != nil {
				v.applyPeerDeltaLocked(ch.PeerDelta)
			} else {
				v.setPeersLocked(resp.Peers)
			}
		default:
			continue
		}
		v.ctr.watchChanges.Inc()
	}
	v.pruneChangedLocked()
}

// pruneChangedLocked bounds the tombstones of removed jobs: losing one only
// weakens the guard against a stale resolve answer.
func (v *ServiceView) pruneChangedLocked() {
	if len(v.changed) <= 2*len(v.entries)+1024 {
		return
	}
	for j := range v.changed {
		if _, ok := v.entries[j]; !ok {
			delete(v.changed, j)
		}
	}
}

// mergeResolved merges a resolve answer obtained after watch position
// startSeq, unless a watch change of the same job arrived meanwhile (the
// watch's entry is newer). The job counts as used either way.
func (v *ServiceView) mergeResolved(e api.ServiceEntry, startSeq uint64) error {
	now := v.opt.Now()
	v.mu.Lock()
	if v.changed[e.JobName] > startSeq {
		if _, ok := v.entries[e.JobName]; ok {
			v.lastUsed[e.JobName] = now
		}
		v.mu.Unlock()
		return nil
	}
	v.upsertLocked(e, now)
	v.lastUsed[e.JobName] = now
	v.origin[e.JobName] = entryOrigin{0, "resolve"}
	v.mu.Unlock()
	return v.Push()
}

func (v *ServiceView) watchSeq() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.seq
}

// upsertLocked stores e; a new job's idle clock starts at now. v.mu held.
func (v *ServiceView) upsertLocked(e api.ServiceEntry, now time.Time) {
	if e.JobName == "" {
		return
	}
	if old, ok := v.entries[e.JobName]; ok {
		v.unindexLocked(old)
	} else {
		v.lastUsed[e.JobName] = now
	}
	delete(v.pendingDrops, e.JobName)
	for _, sip := range e.ServiceIPList {
		if _, ok := policy.Parse(sip.IpType); !ok {
			v.ctr.ignoredIPTypes.Inc()
		}
	}
	v.entries[e.JobName] = e
	v.indexLocked(e)
}

func (v *ServiceView) deleteLocked(job string) {
	if old, ok := v.entries[job]; ok {
		v.unindexLocked(old)
		delete(v.entries, job)
	}
	delete(v.lastUsed, job)
	delete(v.origin, job)
}

func entryAddrs(e api.ServiceEntry, f func(netip.Addr)) {
	for _, s := range e.ServiceIPList {
		for _, a := range []netip.Addr{s.Address, s.AddressV6} {
			if a.IsValid() {
				f(a.Unmap())
			}
		}
	}
	for _, in := range e.InstanceList {
		for _, a := range []netip.Addr{in.InstanceIP, in.InstanceIPv6} {
			if a.IsValid() {
				f(a.Unmap())
			}
		}
	}
}

func (v *ServiceView) indexLocked(e api.ServiceEntry) {
	entryAddrs(e, func(a netip.Addr) {
		if _, taken := v.byAddr[a]; !taken {
			v.byAddr[a] = e.JobName
		}
	})
}

func (v *ServiceView) unindexLocked(e api.ServiceEntry) {
	entryAddrs(e, func(a netip.Addr) {
		if v.byAddr[a] == e.JobName {
			delete(v.byAddr, a)
		}
	})
}

// Push hands the current full spec set to the sink. Callers normally need
// not: every change pushes.
func (v *ServiceView) Push() error {
	v.pushMu.Lock()
	defer v.pushMu.Unlock()
	v.mu.Lock()
	entries := make([]api.ServiceEntry, 0, len(v.entries))
	for _, e := range v.entries {
		entries = append(entries, e)
	}
	peers := v.peerListLocked()
	v.mu.Unlock()

	set, cs := ConvertEntries(entries)
	ps, bad := ConvertPeers(peers)
	v.mu.Lock()
	v.lastInsts, v.lastBad = len(set.Instances), cs.BadAddresses+bad
	v.mu.Unlock()
	v.ctr.pushes.Inc()
	if err := v.sink.SetServices(set.Services, set.Instances, ps); err != nil {
		v.ctr.sinkErrors.Inc()
		v.opt.Logger.Warn("service tables refused by the data plane", "err", err)
		return err
	}
	return nil
}

// Stats returns the counters and sizes.
func (v *ServiceView) Stats() ServiceStats {
	v.mu.Lock()
	s := ServiceStats{Services: len(v.entries), Instances: v.lastInsts, Peers: len(v.peers), Local: len(v.local),
		BadAddresses: uint64(v.lastBad)}
	v.mu.Unlock()
	c := &v.ctr
	s.Misses, s.MissesDropped, s.MissesDeduped, s.NegativeHits = c.misses.Value(), c.missesDropped.Value(), c.missesDeduped.Value(), c.negativeHits.Value()
	s.Resolves, s.ResolveNotFound, s.ResolveErrors, s.ResolveKnown = c.resolves.Value(), c.resolveNotFound.Value(), c.resolveErrors.Value(), c.resolveKnown.Value()
	s.WatchErrors, s.WatchChanges, s.Resyncs = c.watchErrors.Value(), c.watchChanges.Value(), c.resyncs.Value()
	s.Expiries, s.DropErrors = c.expiries.Value(), c.dropErrors.Value()
	s.Pushes, s.SinkErrors = c.pushes.Value(), c.sinkErrors.Value()
	s.IgnoredIPTypes = c.ignoredIPTypes.Value()
	return s
}

// Counters returns the monotonic counters of Stats by metric-style name.
func (s ServiceStats) Counters() map[string]uint64 {
	return map[string]uint64{
		"misses": s.Misses, "misses_dropped": s.MissesDropped, "misses_deduped": s.MissesDeduped,
		"negative_hits": s.NegativeHits, "resolves": s.Resolves, "resolve_notfound": s.ResolveNotFound,
		"resolve_errors": s.ResolveErrors, "resolve_known": s.ResolveKnown, "watch_errors": s.WatchErrors,
		"watch_changes": s.WatchChanges, "resyncs": s.Resyncs, "expiries": s.Expiries,
		"drop_interest_errors": s.DropErrors, "pushes": s.Pushes, "sink_errors": s.SinkErrors,
		"ignored_ip_types": s.IgnoredIPTypes,
	}
}
