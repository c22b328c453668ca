package netmanager

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/oakwire/oakwire/api"
)

// Resolver resolves fast-path misses (SPEC §7.3 item 6): a destination in
// the service ranges that the table does not know is asked of the cluster
// asynchronously, and the answer merged into the view, which pushes new
// tables. Miss never blocks; Run does the cluster calls, one at a time.
//
// A flood to one address costs at most one cluster query per NegativeTTL:
// an address is queued once (in-flight set), and after its answer (found or
// not) further misses for it are ignored for NegativeTTL. Cluster errors
// are counted and retried after a backoff (100 ms doubling to 5 s), at most
// resolveAttempts times per miss.
type Resolver struct {
	view *ServiceView
	src  ServiceSource
	opt  ServiceOptions
	ctr  *serviceCounters
	q    chan netip.Addr

	// mu guards inflight and negative (held only for map operations: Miss
	// runs on a data-plane slow-path goroutine).
	mu       sync.Mutex
	inflight map[netip.Addr]struct{}  // queued or being resolved
	negative map[netip.Addr]time.Time // not asked again before the time

	retry    []pendingResolve // owned by Run: failed lookups to retry
	errStart time.Time        // owned by Run: start of the current error streak
}

type pendingResolve struct {
	addr     netip.Addr
	attempts int
}

const (
	resolveAttempts = 5
	backoffMin      = 100 * time.Millisecond
	backoffMax      = 5 * time.Second
)

// NewResolver returns a resolver merging into view. Its options are the
// view's.
func NewResolver(view *ServiceView, src ServiceSource) *Resolver {
	return &Resolver{
		view: view, src: src, opt: view.opt, ctr: &view.ctr,
		q:        make(chan netip.Addr, view.opt.QueueLen),
		inflight: map[netip.Addr]struct{}{},
		negative: map[netip.Addr]time.Time{},
	}
}

// Miss reports a packet to dst that the fast path could not translate. It
// never blocks: a full queue drops the request and counts it.
func (r *Resolver) Miss(dst netip.Addr) {
	r.ctr.misses.Inc()
	dst = dst.Unmap()
	now := r.opt.Now()
	r.mu.Lock()
	if until, ok := r.negative[dst]; ok {
		if now.Before(until) {
			r.mu.Unlock()
			r.ctr.negativeHits.Inc()
			return
		}
		delete(r.negative, dst)
	}
	if _, ok := r.inflight[dst]; ok {
		r.mu.Unlock()
		r.ctr.missesDeduped.Inc()
		return
	}
	r.inflight[dst] = struct{}{}
	r.mu.Unlock()
	select {
	case r.q <- dst:
	default:
		r.mu.Lock()
		delete(r.inflight, dst)
		r.mu.Unlock()
		r.ctr.missesDropped.Inc()
	}
}

// finish ends the lookup of a; with until set, misses for a are ignored
// until then.
func (r *Resolver) finish(a netip.Addr, until time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inflight, a)
	if until.IsZero() {
		return
	}
	if len(r.negative) >= r.opt.MaxNegative {
		r.sweepLocked(r.opt.Now())
		if len(r.negative) >= r.opt.MaxNegative {
			return
		}
	}
	r.negative[a] = until
}

func (r *Resolver) sweepLocked(now time.Time) {
	for a, until := range r.negative {
		if !now.Before(until) {
			delete(r.negative, a)
		}
	}
}

// Run serves the queue until ctx ends.
func (r *Resolver) Run(ctx context.Context) {
	sweep := time.NewTicker(max(r.opt.NegativeTTL, time.Second))
	defer sweep.Stop()
	var backoff time.Duration
	for {
		if ctx.Err() != nil {
			return
		}
		var it pendingResolve
		if len(r.retry) > 0 {
			it = r.retry[0]
			r.retry = r.retry[1:]
		} else {
			select {
			case <-ctx.Done():
				return
			case a := <-r.q:
				it = pendingResolve{addr: a}
			case <-sweep.C:
				r.mu.Lock()
				r.sweepLocked(r.opt.Now())
				r.mu.Unlock()
				continue
			}
		}
		err := r.resolve(ctx, it.addr)
		if err == nil {
			if backoff > 0 {
				r.opt.Logger.Info("service resolution works again", "after", r.opt.Now().Sub(r.errStart).Round(time.Millisecond))
			}
			backoff = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		r.ctr.resolveErrors.Inc()
		if backoff == 0 {
			r.errStart = r.opt.Now()
			r.opt.Logger.Warn("service resolution failed; backing off", "addr", it.addr, "err", err)
		}
		backoff = nextBackoff(backoff)
		it.attempts++
		if it.attempts < resolveAttempts && len(r.retry) < cap(r.q) {
			r.retry = append(r.retry, it)
		} else {
			// Give up on this miss; a flood waits out the backoff.
			r.finish(it.addr, r.opt.Now().Add(backoff))
		}
		select {
		case <-ctx.Done():
			return
		case <-r.opt.after(backoff):
		}
	}
}

func nextBackoff(b time.Duration) time.Duration {
	if b <= 0 {
		return backoffMin
	}
	return min(2*b, backoffMax)
}

// resolve looks a up and merges the answer. It returns only cluster errors
// (to be retried); a found or unknown address is finished.
func (r *Resolver) resolve(ctx context.Context, a netip.Addr) error {
	negUntil := r.opt.Now().Add(r.opt.NegativeTTL)
	if job, ok := r.view.Lookup(a); ok {
		// Known already (an instance that is not running, or a table push
		// that raced with the miss): no query; the watch brings changes.
		r.view.Touch(job)
		r.ctr.resolveKnown.Inc()
		r.finish(a, negUntil)
		return nil
	}
	r.view.interestMu.Lock()
	defer r.view.interestMu.Unlock()
	seq := r.view.watchSeq()
	qctx, cancel := context.WithTimeout(ctx, r.opt.ResolveTimeout)
	e, err := r.src.ResolveIP(qctx, a)
	cancel()
	switch {
	case errors.Is(err, api.ErrNotFound):
		r.ctr.resolveNotFound.Inc()
		r.finish(a, r.opt.Now().Add(r.opt.NegativeTTL))
		return nil
	case err != nil:
		return err
	}
	r.ctr.resolves.Inc()
	// A push error is the sink's (counted there); the address is negatively
	// cached either way, so a refused table does not turn into a query flood.
	_ = r.view.mergeResolved(e, seq)
	r.finish(a, r.opt.Now().Add(r.opt.NegativeTTL))
	return nil
}
