package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
)

// Changes that span slots.
//
// An instance's record and its addresses live in its service's shard, so
// deploying, moving or deleting one is a single script. A service's record
// sits in its shard, its job name in the index under {r}, and a custom
// service IP may lie in a block another shard holds (ipam.Shards.Place):
// creating or deleting a service is therefore a sequence of scripts, with
// its intent recorded in the shard, in the same script as the record
// check, before anything else is touched:
//
//   - deploy: prepare (one script) checks the request and records an
//     allocation intent "a:<slot>" for each pool owner it is about to use
//     and where its addresses will be; then the job name is claimed in the
//     index; then the addresses are allocated (ipam.Shards.AllocIn, one
//     script per shard); then commit (one script) stores the record and
//     drops the intents. A retry of a failed deploy finds the intent and
//     re-uses its owner, so it gets the same addresses (allocation is
//     idempotent per owner). A deploy refused after allocating (a custom
//     address taken, another id's record) undoes its allocations without
//     quarantine: no record ever held them.
//   - delete: one script removes the record, releases the service IPs its
//     shard holds and records a pending free "f:<owner>" for any held
//     elsewhere; then those are released and the pending frees dropped;
//     the job name goes last.
//
// If Redis goes away between the steps the request fails (503) and the
// intent stays. Every later deploy or delete of the same service, and its
// retry, first finishes the service's pending frees (and turns allocation
// intents older than staleAfter into pending frees); a background sweep
// (RootConfig.Sweep) walks every shard's "pending" set and does the same
// for services nobody touches again. A job name left in the index by a
// failed deploy or delete is taken over by the next deploy of that name
// whose holder has no record of it and no fresh intent (claimJob).
//
// Pool owners carry a random generation, "inst/<id>/<n>/<gen>" and
// "svc/<id>/<policy>/<gen>", stored in the record ("owner" in an instance,
// "owners" in a service's meta). A release that lands late (a replica that
// stalled between the steps) therefore frees only the generation it was
// meant for, never the addresses of an instance deployed again under the
// same number. Records written before generations existed have none; their
// owners are "inst/<id>/<n>" and "svc/<id>/<policy>".
//
// Keys, in the service's shard: pend:<id> and pending (pendingscripts.go).
// A stamp is the server's TIME as "<seconds>.<microseconds>": it dates an
// intent for staleness, and identifies a pending free so finish drops only
// the one it freed.

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

// reply is a pending-state script's reply, {code, payload, frees}, after
// step finished its frees.
type reply struct {
	code    int64
	payload any
}

// str is the payload as a string.
func (r reply) str() string { s, _ := r.payload.(string); return s }

// list is the payload as a list.
func (r reply) list() []any { l, _ := r.payload.([]any); return l }

// step runs one pending-state script of service id (ARGV as given, the
// service's record as KEYS), then finishes the frees it hands back (what
// this call, or an earlier half-finished one, left to free). what names
// the step in errors.
func (s *rootStore) step(c context.Context, sc *redis.Script, id, what string, args ...any) (reply, error) {
	res, err := sc.Run(c, s.rdb, []string{s.kSvc(id)}, args...).Slice()
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
	return reply{code: code, payload: res[1]}, nil
}

// finish frees the pairs of service id's pending frees (owner, value
// pairs, as the scripts return them) where they are, and then drops them.
// On failure they stay pending for the next call or the sweep.
func (s *rootStore) finish(c context.Context, id string, frees []any) error {
	if len(frees) == 0 {
		return nil
	}
	type group struct {
		shard int
		undo  bool
	}
	groups := map[group][]string{}
	args := make([]any, 0, 2+len(frees))
	args = append(args, s.st(id), id)
	for i := 0; i+1 < len(frees); i += 2 {
		o, _ := frees[i].(string)
		v, _ := frees[i+1].(string)
		f := strings.Fields(v) // stamp, mode, where4, where6
		undo := len(f) > 1 && f[1] == "u"
		seen := map[int]bool{}
		for _, w := range f[min(2, len(f)):] {
			k, err := s.where(c, w)
			if err != nil {
				return fmt.Errorf("free %s: %w", o, err)
			}
			if k >= 0 && !seen[k] {
				seen[k] = true
				groups[group{k, undo}] = append(groups[group{k, undo}], o)
			}
		}
		args = append(args, o, v)
	}
	if err := s.hook("free"); err != nil {
		return err
	}
	for g, owners := range groups {
		if err := s.pool.FreeIn(c, g.shard, g.undo, owners); err != nil {
			return fmt.Errorf("free %d pending: %w", len(owners), err)
		}
	}
	if err := finishFreesScript.Run(c, s.rdb, []string{s.kPend(id)}, args...).Err(); err != nil {
		return redisErr("drop freed pending", err)
	}
	return nil
}

// where reads a placement token: a shard number, or an address whose
// block's shard holds it (-1: none, or no address).
func (s *rootStore) where(c context.Context, w string) (int, error) {
	if k, err := strconv.Atoi(w); err == nil {
		return k, nil
	}
	a, err := netip.ParseAddr(w)
	if err != nil {
		return -1, nil
	}
	k, _, _, err := s.pool.Locate(c, a)
	if errors.Is(err, ipam.ErrOutOfPool) || errors.Is(err, ipam.ErrBadRequest) {
		return -1, nil
	}
	return k, err
}

// definite reports whether an allocation error says nothing was allocated
// (a refusal), as opposed to not knowing (Redis unreachable, a timeout: the
// script may have run).
func definite(err error) bool {
	if errors.Is(err, ipam.ErrUnavailable) || errors.Is(err, errRedis) {
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
// intents, so the request leaves nothing behind; otherwise they stay, for a
// retry to re-use or the sweep to reclaim. It returns what the caller
// returns.
func (s *rootStore) afterAllocErr(c context.Context, id string, slots, owners []string, err error) error {
	if !definite(err) {
		return err
	}
	return s.abandon(c, id, slots, owners, err)
}

// abandon drops the intents of a deploy refused with err, undoing what it
// (or an earlier attempt) allocated for them, and returns err.
func (s *rootStore) abandon(c context.Context, id string, slots, owners []string, err error) error {
	args := make([]any, 0, 2+2*len(slots))
	args = append(args, s.st(id), id)
	for i := range slots {
		args = append(args, slots[i], owners[i])
	}
	frees, aerr := abandonIntentsScript.Run(c, s.rdb, []string{s.kPend(id)}, args...).Slice()
	if aerr != nil {
		return errors.Join(err, redisErr("abandon allocation intents", aerr))
	}
	if ferr := s.finish(c, id, frees); ferr != nil {
		return errors.Join(err, ferr)
	}
	return err
}

// sweepService finishes service id's pending frees, after turning its
// allocation intents older than staleAfter into pending frees.
func (s *rootStore) sweepService(c context.Context, id string) error {
	frees, err := sweepServiceScript.Run(c, s.rdb, []string{s.kPend(id)}, s.st(id), id, s.staleArg()).Slice()
	if err != nil {
		return redisErr("collect pending", err)
	}
	return s.finish(c, id, frees)
}

// shardWork lists, per shard, the services with pending state and those
// with link changes not copied yet.
func (s *rootStore) shardWork(c context.Context) (pending, links []string, err error) {
	n := s.pool.Count()
	pipe := s.rdb.Pipeline()
	pc, lc := make([]*redis.StringSliceCmd, n), make([]*redis.StringSliceCmd, n)
	for k := range n {
		pc[k] = pipe.SMembers(c, s.pool.Tag(k)+"pending")
		lc[k] = pipe.SMembers(c, s.pool.Tag(k)+"links")
	}
	if _, err := pipe.Exec(c); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, redisErr("sweep: list", err)
	}
	for k := range n {
		pending = append(pending, pc[k].Val()...)
		links = append(links, lc[k].Val()...)
	}
	return pending, links, nil
}

// sweep finishes the pending state of every service that has some: pending
// frees are released, allocation intents older than staleAfter reclaimed,
// link changes copied to the link graph (and their hints sent).
func (r *Root) sweep(ctx context.Context) error {
	c, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if err := r.store.ready(c); err != nil {
		return err
	}
	pending, links, err := r.store.shardWork(c)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range pending {
		if err := r.store.sweepService(c, id); err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", id, err))
		}
	}
	for _, id := range links {
		hints, err := r.store.syncLinks(c, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep links of %s: %w", id, err))
		}
		r.sendHints(hints)
	}
	return errors.Join(errs...)
}

// sweeper runs sweep every period until ctx ends.
func (r *Root) sweeper(ctx context.Context, period time.Duration) {
	defer r.wg.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		if err := r.sweep(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("sweep pending changes", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
