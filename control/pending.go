package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
)

// Changes that span the root's records and the address pool.
//
// The root's keys carry the hash tag {r}, the pool's (package ipam) the tag
// {svcpool}: two slots, so on Redis Cluster no one script can change both.
// Deploying or deleting a service or an instance is therefore two-phase,
// with the intent recorded in the root's slot, in the same script as the
// record change, before the pool is touched:
//
//   - deploy: prepare (one script) checks the request and records an
//     allocation intent "a:<slot>" for each pool owner it is about to use;
//     then ipam.Alloc; then commit (one script) stores the record and drops
//     the intent. A retry of a failed deploy finds the intent and re-uses its
//     owner, so it gets the same addresses (Alloc is idempotent per owner).
//   - delete: one script removes the records and records a pending free
//     "f:<owner>" for each owner they held; then ipam.Release; then finish
//     (one script) drops the pending frees that were released.
//
// If Redis goes away between the phases the request fails (503) and the
// intent stays. Every later deploy or delete of the same service, and its
// retry, first finishes the service's pending frees (and turns allocation
// intents older than staleAfter into pending frees); a background sweep
// (RootConfig.Sweep) does the same for services nobody touches again. So no
// address stays held by a record that is gone, and none is freed while a
// record holds it. (What can still leak: an allocation that reaches Redis
// only after its intent was cancelled by a delete or reclaimed as stale,
// sent by a replica that then dies before its commit, which would have
// freed it.)
//
// Pool owners carry a random generation, "inst/<id>/<n>/<gen>" and
// "svc/<id>/<policy>/<gen>", stored in the record ("owner" in an instance,
// "owners" in a service's meta). A release that lands late (a replica that
// stalled between the phases) therefore frees only the generation it was
// meant for, never the addresses of an instance deployed again under the
// same number. Records written before generations existed have none; their
// owners are "inst/<id>/<n>" and "svc/<id>/<policy>".
//
// Keys, all in the root's slot:
//
//	pend:<id>  hash   a:i:<n>      "<stamp> <owner>" instance n being deployed
//	                  a:p:<policy> "<stamp> <owner>" service IP being deployed
//	                  f:<owner>    "<stamp>" owner whose pair is to be freed
//	pending    set    ids whose pend hash is not empty (for the sweep)
//
// A stamp is the server's TIME as "<seconds>.<microseconds>": it dates an
// intent for staleness, and identifies a pending free so finish drops only
// the one it released.

// newOwner returns a pool owner of a new generation under base
// ("inst/<id>/<n>" or "svc/<id>/<policy>").
func newOwner(base string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return base + "/" + hex.EncodeToString(b[:])
}

// Pool owner bases; newOwner adds the generation.
func svcOwnerBase(id, policy string) string { return "svc/" + id + "/" + policy }
func instOwnerBase(id string, n int) string { return "inst/" + id + "/" + strconv.Itoa(n) }

// staleArg is staleAfter in seconds, as a script argument.
func (s *rootStore) staleArg() string {
	return strconv.FormatFloat(s.staleAfter.Seconds(), 'f', 3, 64)
}

// reply is a pending-state script's reply, {code, payload, frees,
// clusters...}, after step finished its frees: rest is the clusters
// interested in the service.
type reply struct {
	code    int64
	payload any
	rest    []any
}

// str is the payload as a string.
func (r reply) str() string { s, _ := r.payload.(string); return s }

// list is the payload as a list.
func (r reply) list() []any { l, _ := r.payload.([]any); return l }

// step runs one pending-state script of service id, then finishes the
// frees it hands back (what this call, or an earlier half-finished one,
// left to release). what names the step in errors.
func (s *rootStore) step(c context.Context, sc *redis.Script, id, what string, keys []string, args ...any) (reply, error) {
	res, err := sc.Run(c, s.rdb, keys, args...).Slice()
	if err != nil {
		return reply{}, redisErr(what, err)
	}
	if len(res) < 3 {
		return reply{}, fmt.Errorf("%s: script reply of %d values", what, len(res))
	}
	code, ok := res[0].(int64)
	if !ok {
		return reply{}, fmt.Errorf("%s: script reply code %T", what, res[0])
	}
	frees, _ := res[2].([]any)
	if err := s.finish(c, id, frees); err != nil {
		return reply{}, fmt.Errorf("%s: %w", what, err)
	}
	return reply{code: code, payload: res[1], rest: res[3:]}, nil
}

// finish releases the pool pairs of service id's pending frees (owner,
// stamp pairs, as the scripts return them) and then drops them. On failure
// they stay pending for the next call or the sweep.
func (s *rootStore) finish(c context.Context, id string, frees []any) error {
	if len(frees) == 0 {
		return nil
	}
	owners := make([]string, 0, len(frees)/2)
	args := make([]any, 0, 1+len(frees))
	args = append(args, id)
	for i := 0; i+1 < len(frees); i += 2 {
		o, _ := frees[i].(string)
		owners = append(owners, o)
		args = append(args, frees[i], frees[i+1])
	}
	if err := s.alloc.Release(c, owners); err != nil {
		return fmt.Errorf("release %d pending: %w", len(owners), err)
	}
	if err := finishFreesScript.Run(c, s.rdb, []string{s.kPend(id), s.kPending()}, args...).Err(); err != nil {
		return redisErr("drop released pending", err)
	}
	return nil
}

// definite reports whether an allocation error says nothing was allocated
// (a refusal), as opposed to not knowing (Redis unreachable, a timeout: the
// script may have run).
func definite(err error) bool {
	if errors.Is(err, ipam.ErrUnavailable) {
		return false
	}
	for _, s := range []error{ipam.ErrConflict, ipam.ErrExhausted, ipam.ErrOutOfPool, ipam.ErrBadRequest, ipam.ErrNotFound} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// afterAllocErr handles an allocation for owners (of slots, the pend hash
// fields without "a:") that failed with err. A definite refusal abandons the
// intents (freeing what an earlier attempt may have allocated for them), so
// the request leaves nothing behind; otherwise they stay, for a retry to
// re-use or the sweep to reclaim. It returns what the caller returns.
func (s *rootStore) afterAllocErr(c context.Context, id string, slots, owners []string, err error) error {
	if !definite(err) {
		return err
	}
	args := make([]any, 0, 1+2*len(slots))
	args = append(args, id)
	for i := range slots {
		args = append(args, slots[i], owners[i])
	}
	frees, aerr := abandonIntentsScript.Run(c, s.rdb, []string{s.kPend(id), s.kPending()}, args...).Slice()
	if aerr != nil {
		return errors.Join(err, redisErr("abandon allocation intents", aerr))
	}
	if ferr := s.finish(c, id, frees); ferr != nil {
		return errors.Join(err, ferr)
	}
	return err
}

// pendingIDs lists the services with pending state.
func (s *rootStore) pendingIDs(c context.Context) ([]string, error) {
	ids, err := s.rdb.SMembers(c, s.kPending()).Result()
	return ids, redisErr("sweep: list", err)
}

// sweepService finishes service id's pending frees, after turning its
// allocation intents older than staleAfter into pending frees.
func (s *rootStore) sweepService(c context.Context, id string) error {
	frees, err := sweepServiceScript.Run(c, s.rdb, []string{s.kPend(id), s.kPending()}, id, s.staleArg()).Slice()
	if err != nil {
		return redisErr("collect pending", err)
	}
	return s.finish(c, id, frees)
}

// sweep finishes the pending state of every service that has some: pending
// frees are released, allocation intents older than staleAfter reclaimed,
// hosting sets left stale recomputed (rootpeers.go).
func (r *Root) sweep(ctx context.Context) error {
	c, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	ids, err := r.store.pendingIDs(c)
	if err != nil {
		return err
	}
	var errs []error
	if err := r.sweepRehost(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		if err := r.store.sweepService(c, id); err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// sweeper runs sweep every period until ctx ends.
func (r *Root) sweeper(ctx context.Context, period time.Duration) {
	defer r.wg.Done()
	// Hosting counts first thing: a root upgraded over older state counts
	// them before its clusters rely on them.
	if err := r.sweepRehost(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("count hosting clusters", "err", err)
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.sweep(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("sweep pending changes", "err", err)
		}
	}
}
