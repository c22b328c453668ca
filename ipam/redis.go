package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// RedisAllocator is the Allocator the control plane runs: all state in
// Redis, every operation one Lua script (see doc.go for the key layout).
// Any number of processes may share one store through it.
type RedisAllocator struct {
	c  redis.UniversalClient
	pl plan

	subnetH, subnetZ string
	owners           string // service pool: owner → kind
	v4H, v4Z         string
	v6H, v6Z         [MaxKinds]string
	releaseKeys      []string // every service-pool key, for scriptRelease
}

var _ Allocator = (*RedisAllocator)(nil)

// NewRedis returns an allocator on client for cfg, keeping its keys under
// prefix (for example "oakwire:"). Processes that share a store must use
// the same Config and prefix. client may be a plain, cluster or failover
// client: each script's keys share one hash tag, so one slot.
func NewRedis(client redis.UniversalClient, cfg Config, prefix string) (*RedisAllocator, error) {
	return newRedis(client, cfg, prefix, V6IndexCap)
}

func newRedis(client redis.UniversalClient, cfg Config, prefix string, v6Cap uint64) (*RedisAllocator, error) {
	if client == nil {
		return nil, errors.New("ipam: nil redis client")
	}
	pl, err := newPlan(cfg, v6Cap)
	if err != nil {
		return nil, err
	}
	sub := prefix + "{subnets}:"
	svc := prefix + "{svcpool}:"
	r := &RedisAllocator{
		c:       client,
		pl:      pl,
		subnetH: sub + "pool",
		subnetZ: sub + "released",
		owners:  svc + "owners",
		v4H:     svc + "v4",
		v4Z:     svc + "v4:released",
	}
	r.releaseKeys = []string{r.owners, r.v4H, r.v4Z}
	for k := range r.v6H {
		r.v6H[k] = svc + "v6." + strconv.Itoa(k)
		r.v6Z[k] = r.v6H[k] + ":released"
		r.releaseKeys = append(r.releaseKeys, r.v6H[k], r.v6Z[k])
	}
	return r, nil
}

// storeErr wraps a client error. Failing to reach Redis (network, timeout,
// cancelled context, closed client) or a Redis that cannot serve now
// (loading, cluster down, busy, read-only replica) is ErrUnavailable. Any
// other error reply (a script error, wrong key type) is a bug or a foreign
// key in our prefix, and stays a plain error.
func storeErr(err error) error {
	var re redis.Error
	if errors.As(err, &re) && !redis.IsLoadingError(err) && !redis.IsClusterDownError(err) &&
		!redis.IsTryAgainError(err) && !redis.IsMasterDownError(err) && !redis.IsReadOnlyError(err) &&
		!redis.HasErrorPrefix(err, "BUSY") && !redis.HasErrorPrefix(err, "NOREPLICAS") {
		return fmt.Errorf("redis: %w", err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// run executes a script (EVALSHA, EVAL when the server lacks it) and
// returns its array reply.
func (r *RedisAllocator) run(ctx context.Context, s *redis.Script, keys []string, args ...any) ([]any, error) {
	v, err := s.Run(ctx, r.c, keys, args...).Slice()
	if err != nil {
		return nil, storeErr(err)
	}
	return v, nil
}

func codeErr(code int64) error {
	switch code {
	case codeExhausted:
		return ErrExhausted
	case codeConflict:
		return ErrConflict
	case codeNotFound:
		return ErrNotFound
	}
	return fmt.Errorf("ipam: script reply code %d", code)
}

func replyCode(v []any) (int64, error) {
	if len(v) == 0 {
		return 0, errors.New("ipam: empty script reply")
	}
	c, ok := v[0].(int64)
	if !ok {
		return 0, fmt.Errorf("ipam: script reply code %T", v[0])
	}
	return c, nil
}

func replyIndex(v any) (uint64, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("ipam: script reply index %T", v)
	}
	return strconv.ParseUint(s, 10, 64)
}

func (r *RedisAllocator) quarantineArg() string { return strconv.FormatInt(r.pl.quarantineMs, 10) }

// AllocSubnet implements Allocator.
func (r *RedisAllocator) AllocSubnet(ctx context.Context, nodeID string) (SubnetPair, error) {
	if nodeID == "" {
		return SubnetPair{}, fmt.Errorf("alloc subnet: empty node id: %w", ErrBadRequest)
	}
	v, err := r.run(ctx, scriptAllocSubnet, []string{r.subnetH, r.subnetZ},
		0, r.pl.subnets-1, r.quarantineArg(), nodeID)
	if err != nil {
		return SubnetPair{}, fmt.Errorf("alloc subnet %s: %w", nodeID, err)
	}
	i, err := r.indexReply(v)
	if err != nil {
		return SubnetPair{}, fmt.Errorf("alloc subnet %s: %w", nodeID, err)
	}
	if i >= r.pl.subnets {
		return SubnetPair{}, fmt.Errorf("alloc subnet %s: index %d beyond %d blocks (config changed?)", nodeID, i, r.pl.subnets)
	}
	return r.pl.subnetAt(i), nil
}

// indexReply decodes {0, index} or {code}.
func (r *RedisAllocator) indexReply(v []any) (uint64, error) {
	code, err := replyCode(v)
	if err != nil {
		return 0, err
	}
	if code != codeOK {
		return 0, codeErr(code)
	}
	if len(v) != 2 {
		return 0, fmt.Errorf("ipam: script reply of %d values", len(v))
	}
	return replyIndex(v[1])
}

// ReleaseSubnet implements Allocator.
func (r *RedisAllocator) ReleaseSubnet(ctx context.Context, nodeID string) error {
	v, err := r.run(ctx, scriptReleaseSubnet, []string{r.subnetH, r.subnetZ}, nodeID)
	if err != nil {
		return fmt.Errorf("release subnet %s: %w", nodeID, err)
	}
	code, err := replyCode(v)
	if err == nil && code != codeOK {
		err = codeErr(code)
	}
	if err != nil {
		return fmt.Errorf("release subnet %s: %w", nodeID, err)
	}
	return nil
}

// LookupSubnet implements Allocator. It is one HGET, atomic by itself.
func (r *RedisAllocator) LookupSubnet(ctx context.Context, nodeID string) (SubnetPair, error) {
	s, err := r.c.HGet(ctx, r.subnetH, "o:"+nodeID).Result()
	if errors.Is(err, redis.Nil) {
		return SubnetPair{}, fmt.Errorf("lookup subnet %s: %w", nodeID, ErrNotFound)
	}
	if err != nil {
		return SubnetPair{}, fmt.Errorf("lookup subnet %s: %w", nodeID, storeErr(err))
	}
	i, err := strconv.ParseUint(s, 10, 64)
	if err != nil || i >= r.pl.subnets {
		return SubnetPair{}, fmt.Errorf("lookup subnet %s: bad index %q in store", nodeID, s)
	}
	return r.pl.subnetAt(i), nil
}

// Alloc implements Allocator.
func (r *RedisAllocator) Alloc(ctx context.Context, reqs []Request) ([]Pair, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	var seen [MaxKinds]bool
	var kinds []Kind
	reqArgs := make([]any, 0, 4*len(reqs))
	for _, q := range reqs {
		if err := checkRequest(q); err != nil {
			return nil, fmt.Errorf("alloc %s: %w", q.Owner, err)
		}
		i4, has4, i6, has6, err := r.pl.customIndexes(q)
		if err != nil {
			return nil, fmt.Errorf("alloc %s: %w", q.Owner, err)
		}
		c4, c6 := "", ""
		if has4 {
			c4 = strconv.FormatUint(i4, 10)
		}
		if has6 {
			c6 = strconv.FormatUint(i6, 10)
		}
		reqArgs = append(reqArgs, q.Owner, strconv.Itoa(int(q.Kind)), c4, c6)
		if !seen[q.Kind] {
			seen[q.Kind] = true
			kinds = append(kinds, q.Kind)
		}
	}
	keys := []string{r.owners, r.v4H, r.v4Z}
	args := []any{r.quarantineArg(), r.pl.v4Lo, r.pl.v4Hi, r.pl.v6Lo, r.pl.v6Hi, len(kinds)}
	for _, k := range kinds {
		keys = append(keys, r.v6H[k], r.v6Z[k])
		args = append(args, strconv.Itoa(int(k)))
	}
	args = append(args, len(reqs))
	args = append(args, reqArgs...)

	v, err := r.run(ctx, scriptAlloc, keys, args...)
	if err != nil {
		return nil, fmt.Errorf("alloc %s: %w", reqs[0].Owner, err)
	}
	code, err := replyCode(v)
	if err != nil {
		return nil, fmt.Errorf("alloc %s: %w", reqs[0].Owner, err)
	}
	if code != codeOK {
		if len(v) != 3 {
			return nil, fmt.Errorf("alloc: script reply of %d values", len(v))
		}
		n, _ := v[1].(int64)
		fam, _ := v[2].(int64)
		if n < 1 || int(n) > len(reqs) {
			return nil, fmt.Errorf("alloc: script reply names request %d", n)
		}
		q := reqs[n-1]
		if fam == 0 {
			return nil, fmt.Errorf("alloc %s: holds a pair of another kind than %d: %w", q.Owner, q.Kind, codeErr(code))
		}
		return nil, fmt.Errorf("alloc %s v%d: %w", q.Owner, fam, codeErr(code))
	}
	if len(v) != 1+2*len(reqs) {
		return nil, fmt.Errorf("alloc: script reply of %d values for %d requests", len(v), len(reqs))
	}
	out := make([]Pair, len(reqs))
	for n, q := range reqs {
		i4, err := replyIndex(v[1+2*n])
		if err != nil {
			return nil, fmt.Errorf("alloc %s: %w", q.Owner, err)
		}
		i6, err := replyIndex(v[2+2*n])
		if err != nil {
			return nil, fmt.Errorf("alloc %s: %w", q.Owner, err)
		}
		out[n] = Pair{V4: r.pl.v4At(i4), V6: r.pl.v6At(q.Kind, i6)}
	}
	return out, nil
}

// Release implements Allocator.
func (r *RedisAllocator) Release(ctx context.Context, owners []string) error {
	if len(owners) == 0 {
		return nil
	}
	args := make([]any, len(owners))
	for i, o := range owners {
		args[i] = o
	}
	if err := scriptRelease.Run(ctx, r.c, r.releaseKeys, args...).Err(); err != nil {
		return fmt.Errorf("release %s: %w", owners[0], storeErr(err))
	}
	return nil
}

// Owner implements Allocator. It is one HGET, atomic by itself.
func (r *RedisAllocator) Owner(ctx context.Context, addr netip.Addr) (string, error) {
	var key string
	var i uint64
	if addr.Is4() {
		var err error
		if i, err = r.pl.v4Index(addr); err != nil {
			return "", fmt.Errorf("owner %s: %w", addr, err)
		}
		key = r.v4H
	} else {
		k, idx, err := r.pl.v6Index(addr)
		if err != nil {
			return "", fmt.Errorf("owner %s: %w", addr, err)
		}
		key, i = r.v6H[k], idx
	}
	o, err := r.c.HGet(ctx, key, "i:"+strconv.FormatUint(i, 10)).Result()
	if errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("owner %s: %w", addr, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("owner %s: %w", addr, storeErr(err))
	}
	return o, nil
}

// Peek implements Allocator.
func (r *RedisAllocator) Peek(ctx context.Context, kind Kind, family int) (netip.Addr, error) {
	if kind >= MaxKinds {
		return netip.Addr{}, fmt.Errorf("peek: kind %d: %w", kind, ErrBadRequest)
	}
	var keys []string
	var lo, hi uint64
	var what string
	switch family {
	case 4:
		keys, lo, hi, what = []string{r.v4H, r.v4Z}, r.pl.v4Lo, r.pl.v4Hi, "peek v4"
	case 6:
		keys, lo, hi, what = []string{r.v6H[kind], r.v6Z[kind]}, r.pl.v6Lo, r.pl.v6Hi, fmt.Sprintf("peek kind %d v6", kind)
	default:
		return netip.Addr{}, fmt.Errorf("peek: family %d: %w", family, ErrBadRequest)
	}
	v, err := r.run(ctx, scriptPeek, keys, lo, hi, r.quarantineArg())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: %w", what, err)
	}
	i, err := r.indexReply(v)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: %w", what, err)
	}
	if family == 4 {
		return r.pl.v4At(i), nil
	}
	return r.pl.v6At(kind, i), nil
}
