package netmanager

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"sync"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Services bundles the view, its resolver, the watch loop and interest
// expiry for one cluster. Wiring: give the data plane's TableSink to
// NewServices, call Miss from the data plane's slow path, tell the view
// which jobs run locally (View.SetLocal / SetLocalJobs), and Run it once
// the node is registered.
type Services struct {
	View     *ServiceView
	Resolver *Resolver
	src      ServiceSource
}

// NewServices returns the service machinery of a node whose cluster is src.
func NewServices(src ServiceSource, sink TableSink, o ServiceOptions) *Services {
	v := NewServiceView(sink, o)
	return &Services{View: v, Resolver: NewResolver(v, src), src: src}
}

// Miss is Resolver.Miss: it never blocks.
func (s *Services) Miss(dst netip.Addr) { s.Resolver.Miss(dst) }

// Stats is View.Stats.
func (s *Services) Stats() ServiceStats { return s.View.Stats() }

// Run runs the resolver, the watch loop and interest expiry until ctx ends,
// and returns when all three have stopped.
func (s *Services) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { s.Resolver.Run(ctx) })
	wg.Go(func() { s.View.RunWatch(ctx, s.src) })
	wg.Go(func() { s.View.RunExpiry(ctx, s.src) })
	wg.Wait()
}

// RunWatch keeps the view current until ctx ends: it long-polls src with
// its (epoch, version) position and applies each answer in order.
//
// It starts with no position, asking with version math.MaxUint64: beyond
// any version the cluster has, which the cluster answers with a resync (the
// full state of this node's interests and its peers). A resync replaces the
// view. An answer from another epoch than the one asked for (the cluster's
// state was replaced), or with a gap in versions, drops the position so the
// next watch resyncs. Errors are counted and retried after a backoff of
// 100 ms doubling to 5 s.
func (v *ServiceView) RunWatch(ctx context.Context, src ServiceSource) {
	var (
		have    bool // epoch and since are a position the cluster gave us
		epoch   string
		since   uint64
		backoff time.Duration
		errAt   time.Time
	)
	for ctx.Err() == nil {
		askEpoch, askSince := epoch, since
		if !have {
			askEpoch, askSince = "", math.MaxUint64
		}
		resp, err := src.Watch(ctx, askEpoch, askSince)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			v.ctr.watchErrors.Inc()
			if backoff == 0 {
				errAt = v.opt.Now()
				v.opt.Logger.Warn("cluster watch failed; backing off", "err", err)
			}
			if errors.Is(err, api.ErrNotFound) || errors.Is(err, api.ErrBadRequest) {
				have = false // the cluster does not know our position (or us): start over
			}
			backoff = nextBackoff(backoff)
			select {
			case <-ctx.Done():
				return
			case <-v.opt.after(backoff):
			}
			continue
		}
		if backoff > 0 {
			v.opt.Logger.Info("cluster watch works again", "after", v.opt.Now().Sub(errAt).Round(time.Millisecond))
			backoff = 0
		}
		if !resp.Resync && have {
			if resp.Epoch != epoch {
				v.opt.Logger.Info("cluster epoch changed; resyncing", "old", epoch, "new", resp.Epoch)
				have = false
				continue
			}
			// Changes at or before our position are applied already (the
			// cluster may send a change again after a resync).
			i := 0
			for i < len(resp.Changes) && resp.Changes[i].Version <= since {
				i++
			}
			resp.Changes = resp.Changes[i:]
			if len(resp.Changes) > 0 && resp.Changes[0].Version > since+1 {
				v.opt.Logger.Info("cluster watch skipped versions; resyncing", "since", since, "got", resp.Changes[0].Version)
				have = false
				continue
			}
		}
		if resp.Resync || len(resp.Changes) > 0 {
			_ = v.ApplyWatch(resp) // a refused table is counted by Push
		}
		epoch, since, have = resp.Epoch, resp.Version, true
		v.setPosition(epoch, since)
	}
}

// RunExpiry drops idle interests (ExpireIdle) periodically until ctx ends.
func (v *ServiceView) RunExpiry(ctx context.Context, src ServiceSource) {
	every := min(max(v.opt.IdleTimeout/10, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			v.ExpireIdle(ctx, src)
		}
	}
}

// ExpireIdle removes every service unused for IdleTimeout that has no
// instance on this node, pushes the smaller tables, and drops the node's
// interest in them at the cluster (failed drops are retried by the next
// call). It returns how many services expired.
func (v *ServiceView) ExpireIdle(ctx context.Context, src ServiceSource) int {
	now := v.opt.Now()
	v.mu.Lock()
	expired := 0
	for j, used := range v.lastUsed {
		if v.local[j] || now.Sub(used) < v.opt.IdleTimeout {
			continue
		}
		v.deleteLocked(j)
		v.pendingDrops[j] = struct{}{}
		expired++
	}
	drops := make([]string, 0, len(v.pendingDrops))
	for j := range v.pendingDrops {
		drops = append(drops, j)
	}
	v.mu.Unlock()
	if expired > 0 {
		v.ctr.expiries.v.Add(uint64(expired))
		_ = v.Push()
	}
	for _, j := range drops {
		if ctx.Err() != nil {
			break
		}
		v.dropInterest(ctx, src, j)
	}
	return expired
}

// dropInterest drops job's interest unless it came back meanwhile.
// interestMu orders it against resolves (which add interest).
func (v *ServiceView) dropInterest(ctx context.Context, src ServiceSource, job string) {
	v.interestMu.Lock()
	defer v.interestMu.Unlock()
	v.mu.Lock()
	_, pending := v.pendingDrops[job]
	v.mu.Unlock()
	if !pending {
		return // resolved or pushed again: still wanted
	}
	dctx, cancel := context.WithTimeout(ctx, v.opt.ResolveTimeout)
	err := src.DropInterest(dctx, job)
	cancel()
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		v.ctr.dropErrors.Inc()
		v.opt.Logger.Warn("drop interest", "service", job, "err", err)
		return
	}
	v.mu.Lock()
	delete(v.pendingDrops, job)
	v.mu.Unlock()
}

// Collector exports the view's counters and sizes to Prometheus.
func (v *ServiceView) Collector() prometheus.Collector { return serviceCollector{v} }

type serviceCollector struct{ v *ServiceView }

var (
	svcCounterDesc = prometheus.NewDesc("oakwire_netmanager_services_events_total",
		"Service resolution, watch and interest counters.", []string{"name"}, nil)
	svcGaugeDesc = prometheus.NewDesc("oakwire_netmanager_services_entries",
		"Sizes of the node's service view.", []string{"what"}, nil)
)

func (c serviceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- svcCounterDesc
	ch <- svcGaugeDesc
}

func (c serviceCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.v.Stats()
	for k, n := range s.Counters() {
		ch <- prometheus.MustNewConstMetric(svcCounterDesc, prometheus.CounterValue, float64(n), k)
	}
	for k, n := range map[string]int{"services": s.Services, "instances": s.Instances, "peers": s.Peers,
		"local_jobs": s.Local, "bad_addresses": int(s.BadAddresses)} {
		ch <- prometheus.MustNewConstMetric(svcGaugeDesc, prometheus.GaugeValue, float64(n), k)
	}
}
