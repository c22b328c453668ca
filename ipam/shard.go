package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Shards is the service pool split into blocks with affinity to shards,
// as Calico's IPAM gives blocks affinity to hosts, so that allocations
// spread over the masters of a Redis Cluster.
//
// The control plane keeps each service's records in one of a fixed number
// of shards, each a hash tag of its own (ShardTag). A shard's pools (one
// for IPv4, one per kind for IPv6) sit under the same tag and hand out
// only the indexes of the blocks the shard holds: a script of the shard
// can allocate an address and write the record that holds it in one step.
// A shard that runs out of addresses claims another block from the pool's
// registry (one hash per pool under the tag {pool}): the registry decides
// which shard holds a block, and a shard adopts only blocks the registry
// gave it, so no index is in two shards' pools. Blocks are claimed lowest
// first and never move between shards (this version): a block a shard
// holds keeps serving it, and Owner can cache where a block is.
//
// Order of reuse, per shard: never-used indexes of its blocks (ascending),
// then released ones past quarantine (least recently released first), then
// a new block. The first service on a fresh pool therefore gets the pool's
// first address, whichever shard it is in. The rest of the contract is
// RedisAllocator's (quarantine by the server's clock, idempotent per owner,
// all-or-nothing batches).
type Shards struct {
	c      redis.UniversalClient
	pl     plan
	prefix string
	n      int
	b4, b6 uint64 // block sizes, in indexes
	nb4    uint64 // blocks of the IPv4 pool
	nb6    uint64 // blocks of an IPv6 kind's pool
	luaArg string

	mu     sync.RWMutex      // guards holder
	holder map[string]int    // "<pool>/<block>" → shard (blocks never move)
	reg    map[string]string // pool name → registry key
}

// Default block sizes: an IPv4 block is a /28, an IPv6 block 256
// addresses of a kind's /21.
const (
	DefaultBlockV4 = 16
	DefaultBlockV6 = 256
)

// ShardTag is the key prefix of shard k: keys under it share one hash slot.
func ShardTag(prefix string, k int) string { return prefix + "{s" + strconv.Itoa(k) + "}:" }

// NewShards returns the sharded pool over n shards on client, keys under
// prefix. blockV4 and blockV6 are the block sizes in addresses (0: the
// defaults); an IPv4 block never exceeds the pool. Processes sharing a
// store must agree on everything here.
func NewShards(client redis.UniversalClient, cfg Config, prefix string, n, blockV4, blockV6 int) (*Shards, error) {
	if client == nil {
		return nil, errors.New("ipam: nil redis client")
	}
	if n < 1 || n > 16384 {
		return nil, fmt.Errorf("ipam: %d shards, want 1..16384", n)
	}
	pl, err := newPlan(cfg, V6IndexCap)
	if err != nil {
		return nil, err
	}
	if blockV4 == 0 {
		blockV4 = DefaultBlockV4
	}
	if blockV6 == 0 {
		blockV6 = DefaultBlockV6
	}
	size4 := pl.v4Hi + 2
	if blockV4 < 1 || blockV6 < 1 || blockV6 > V6IndexCap {
		return nil, fmt.Errorf("ipam: block sizes %d, %d", blockV4, blockV6)
	}
	s := &Shards{c: client, pl: pl, prefix: prefix, n: n,
		b4: min(uint64(blockV4), size4), b6: uint64(blockV6),
		holder: map[string]int{}, reg: map[string]string{}}
	s.nb4 = (size4 + s.b4 - 1) / s.b4
	s.nb6 = (uint64(V6IndexCap) + s.b6 - 1) / s.b6
	b16 := cfg.WithDefaults().ServiceV6Base.Masked().Addr().As16()
	s.luaArg = fmt.Sprintf("%d %d %d %d %d %d %d %d %d %d", pl.quarantineMs, pl.v4Lo, pl.v4Hi, pl.v6Lo, pl.v6Hi,
		s.b4, s.b6, u32(pl.cfg.ServiceV4.Addr()), uint16(b16[0])<<8|uint16(b16[1]), uint16(b16[2])<<8|uint16(b16[3]))
	s.reg["4"] = prefix + "{pool}:reg4"
	for k := range MaxKinds {
		s.reg[v6Pool(Kind(k))] = prefix + "{pool}:reg6." + strconv.Itoa(k)
	}
	return s, nil
}

func v6Pool(k Kind) string { return "6." + strconv.Itoa(int(k)) }

// Count is the number of shards.
func (s *Shards) Count() int { return s.n }

// Tag is shard k's key prefix.
func (s *Shards) Tag(k int) string { return ShardTag(s.prefix, k) }

// LuaArg is the argument LuaShard's shard_cfg reads: the plan's numbers.
func (s *Shards) LuaArg() string { return s.luaArg }

// Layout describes the block layout, for a store to record and check that
// every process shares it.
func (s *Shards) Layout() string {
	return fmt.Sprintf("shards=%d block4=%d block6=%d v4=%s v6=%s", s.n, s.b4, s.b6, s.pl.cfg.ServiceV4, s.pl.cfg.ServiceV6Base)
}

// Plan is the address plan.
func (s *Shards) Plan() Config { return s.pl.cfg }

// BlockSize is the block size of pool ("4" or "6.<kind>"), in indexes.
func (s *Shards) BlockSize(pool string) uint64 {
	if pool == "4" {
		return s.b4
	}
	return s.b6
}

// Claim gives shard k blocks of pool ("4" or "6.<kind>", as LuaShard
// names it) when it has adopted all the registry gave it (have blocks),
// and returns the blocks it has not adopted, for shard_adopt. ErrExhausted: no
// block left. try counts the claims of the same allocation: a shard whose
// new blocks others keep filling first gets more at once.
func (s *Shards) Claim(ctx context.Context, k int, pool string, have, try int) (string, error) {
	key, ok := s.reg[pool]
	if !ok {
		return "", fmt.Errorf("claim block of pool %q: %w", pool, ErrBadRequest)
	}
	nb := s.nb4
	if pool != "4" {
		nb = s.nb6
	}
	// A shard that holds many blocks is a busy one: it gets more at once
	// (an eighth of what it has, at most 16), and more again when others
	// keep filling its new blocks first.
	count := min(max(have/8, 1)<<min(try, 3), 16)
	v, err := scriptClaim.Run(ctx, s.c, []string{key}, k, have, nb, "", count).Slice()
	if err != nil {
		return "", fmt.Errorf("claim block of pool %s: %w", pool, storeErr(err))
	}
	if c, _ := replyCode(v); c == 1 {
		return "", fmt.Errorf("claim block of pool %s: %w", pool, ErrExhausted)
	}
	if len(v) < 2 {
		return "", fmt.Errorf("claim block of pool %s: reply of %d values", pool, len(v))
	}
	list, _ := v[1].(string)
	return list, nil
}

// claimOf makes sure the block of index i of pool is some shard's: shard
// k's if no shard holds it. It returns the holder and, when that is k, the
// list to adopt.
func (s *Shards) claimOf(ctx context.Context, k int, pool string, i uint64) (int, string, error) {
	b := i / s.BlockSize(pool)
	v, err := scriptClaim.Run(ctx, s.c, []string{s.reg[pool]}, k, 0, 0, strconv.FormatUint(b, 10), 1).Slice()
	if err != nil {
		return 0, "", fmt.Errorf("claim block %d of pool %s: %w", b, pool, storeErr(err))
	}
	c, _ := replyCode(v)
	if len(v) < 2 {
		return 0, "", fmt.Errorf("claim block %d of pool %s: reply of %d values", b, pool, len(v))
	}
	str, _ := v[1].(string)
	if c == 2 {
		h, err := strconv.Atoi(str)
		if err != nil {
			return 0, "", fmt.Errorf("claim block %d of pool %s: holder %q", b, pool, str)
		}
		s.remember(pool, b, h)
		return h, "", nil
	}
	s.remember(pool, b, k)
	return k, str, nil
}

func (s *Shards) remember(pool string, b uint64, k int) {
	s.mu.Lock()
	s.holder[pool+"/"+strconv.FormatUint(b, 10)] = k
	s.mu.Unlock()
}

// holderOf returns the shard holding the block of index i of pool, or -1
// when no shard does.
func (s *Shards) holderOf(ctx context.Context, pool string, i uint64) (int, error) {
	b := i / s.BlockSize(pool)
	key := pool + "/" + strconv.FormatUint(b, 10)
	s.mu.RLock()
	k, ok := s.holder[key]
	s.mu.RUnlock()
	if ok {
		return k, nil
	}
	v, err := s.c.HGet(ctx, s.reg[pool], "b:"+strconv.FormatUint(b, 10)).Result()
	if errors.Is(err, redis.Nil) {
		return -1, nil
	} else if err != nil {
		return 0, storeErr(err)
	}
	k, err = strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("ipam: registry names shard %q", v)
	}
	s.remember(pool, b, k)
	return k, nil
}

// Where is the placement of an allocation: the shards whose pools hold
// (or will hold) its IPv4 and IPv6 address.
type Where struct{ V4, V6 int }

// Place decides where request q of a service in shard home is allocated:
// in home, except that a custom address in a block another shard holds is
// allocated there. A custom address in a block no shard holds claims that
// block for home first.
func (s *Shards) Place(ctx context.Context, home int, q Request) (Where, error) {
	w := Where{home, home}
	if err := checkRequest(q); err != nil {
		return w, fmt.Errorf("place %s: %w", q.Owner, err)
	}
	i4, has4, i6, has6, err := s.pl.customIndexes(q)
	if err != nil {
		return w, fmt.Errorf("place %s: %w", q.Owner, err)
	}
	if has4 {
		if w.V4, _, err = s.claimOf(ctx, home, "4", i4); err != nil {
			return w, err
		}
	}
	if has6 {
		if w.V6, _, err = s.claimOf(ctx, home, v6Pool(q.Kind), i6); err != nil {
			return w, err
		}
	}
	return w, nil
}

// AllocIn allocates the families fams ("46", "4" or "6") of every request
// in shard k, all or nothing, claiming blocks for k as needed. A custom
// address must lie in k's blocks (Place). The pairs hold only the families
// asked.
func (s *Shards) AllocIn(ctx context.Context, k int, fams string, reqs []Request) ([]Pair, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 4+5*len(reqs))
	args = append(args, s.Tag(k), s.luaArg, "", "")
	for _, q := range reqs {
		if err := checkRequest(q); err != nil {
			return nil, fmt.Errorf("alloc %s: %w", q.Owner, err)
		}
		i4, has4, i6, has6, err := s.pl.customIndexes(q)
		if err != nil {
			return nil, fmt.Errorf("alloc %s: %w", q.Owner, err)
		}
		c4, c6 := "", ""
		if has4 && strings.Contains(fams, "4") {
			c4 = strconv.FormatUint(i4, 10)
		}
		if has6 && strings.Contains(fams, "6") {
			c6 = strconv.FormatUint(i6, 10)
		}
		args = append(args, q.Owner, strconv.Itoa(int(q.Kind)), c4, c6, fams)
	}
	key := s.Tag(k) + "po" // routes the script to the shard's slot
	for try := range maxClaims {
		v, err := scriptShardAlloc.Run(ctx, s.c, []string{key}, args...).Slice()
		if err != nil {
			return nil, fmt.Errorf("alloc %s: %w", reqs[0].Owner, storeErr(err))
		}
		code, err := replyCode(v)
		if err != nil {
			return nil, fmt.Errorf("alloc %s: %w", reqs[0].Owner, err)
		}
		if code == codeOK {
			if len(v) != 1+2*len(reqs) {
				return nil, fmt.Errorf("alloc: reply of %d values for %d requests", len(v), len(reqs))
			}
			return s.pairs(reqs, v[1:])
		}
		n, _ := v[1].(int64)
		pool, _ := v[2].(string)
		if n < 1 || int(n) > len(reqs) {
			return nil, fmt.Errorf("alloc: reply names request %d", n)
		}
		q := reqs[n-1]
		var list string
		switch code {
		case codeExhausted:
			have, _ := v[3].(int64)
			list, err = s.Claim(ctx, k, pool, int(have), try)
		case codeForeign:
			// A custom address of a block the registry may have given k
			// (Place) that k has not adopted yet.
			var h int
			i4, _, i6, _, _ := s.pl.customIndexes(q)
			i := i4
			if pool != "4" {
				i = i6
			}
			if h, list, err = s.claimOf(ctx, k, pool, i); err == nil && h != k {
				err = fmt.Errorf("custom address in shard %d's block, not %d's: %w", h, k, ErrConflict)
			}
		default:
			return nil, fmt.Errorf("alloc %s pool %s: %w", q.Owner, pool, codeErr(code))
		}
		if err != nil {
			return nil, fmt.Errorf("alloc %s: %w", q.Owner, err)
		}
		args[2], args[3] = pool, list
	}
	return nil, fmt.Errorf("alloc %s: blocks claimed by others %d times in a row: %w", reqs[0].Owner, maxClaims, ErrUnavailable)
}

// maxClaims bounds the claims of one allocation (others may fill a block
// between the claim and the allocation).
const maxClaims = 16

func (s *Shards) pairs(reqs []Request, v []any) ([]Pair, error) {
	out := make([]Pair, len(reqs))
	for n, q := range reqs {
		s4, _ := v[2*n].(string)
		s6, _ := v[2*n+1].(string)
		if s4 != "" {
			i, err := strconv.ParseUint(s4, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("alloc %s: index %q", q.Owner, s4)
			}
			out[n].V4 = s.pl.v4At(i)
		}
		if s6 != "" {
			i, err := strconv.ParseUint(s6, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("alloc %s: index %q", q.Owner, s6)
			}
			out[n].V6 = s.pl.v6At(q.Kind, i)
		}
	}
	return out, nil
}

// FreeIn frees owners' pairs in shard k: into quarantine, or, with undo,
// as if never allocated (for allocations no record ever held: nobody can
// have seen them).
func (s *Shards) FreeIn(ctx context.Context, k int, undo bool, owners []string) error {
	if len(owners) == 0 {
		return nil
	}
	mode := "r"
	if undo {
		mode = "u"
	}
	args := make([]any, 0, 2+len(owners))
	args = append(args, s.Tag(k), mode)
	for _, o := range owners {
		args = append(args, o)
	}
	if err := scriptShardFree.Run(ctx, s.c, []string{s.Tag(k) + "po"}, args...).Err(); err != nil {
		return fmt.Errorf("free %s: %w", owners[0], storeErr(err))
	}
	return nil
}

// Locate returns the shard whose pool holds addr's block (-1: none) and
// addr's index there.
func (s *Shards) Locate(ctx context.Context, addr netip.Addr) (shard int, pool string, index uint64, err error) {
	if addr.Is4() {
		if index, err = s.pl.v4Index(addr); err != nil {
			return 0, "", 0, fmt.Errorf("locate %s: %w", addr, err)
		}
		pool = "4"
	} else {
		var k Kind
		if k, index, err = s.pl.v6Index(addr); err != nil {
			return 0, "", 0, fmt.Errorf("locate %s: %w", addr, err)
		}
		pool = v6Pool(k)
	}
	shard, err = s.holderOf(ctx, pool, index)
	if err != nil {
		return 0, "", 0, fmt.Errorf("locate %s: %w", addr, err)
	}
	return shard, pool, index, nil
}

// Owner returns the owner of an allocated service-pool address, or
// ErrNotFound. Two lookups at most: the block's shard (cached), then the
// owner in its pool.
func (s *Shards) Owner(ctx context.Context, addr netip.Addr) (string, error) {
	k, pool, i, err := s.Locate(ctx, addr)
	if err != nil {
		return "", fmt.Errorf("owner: %w", err)
	}
	if k < 0 {
		return "", fmt.Errorf("owner %s: %w", addr, ErrNotFound)
	}
	o, err := s.c.HGet(ctx, s.Tag(k)+"p"+pool, "i:"+strconv.FormatUint(i, 10)).Result()
	if errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("owner %s: %w", addr, ErrNotFound)
	} else if err != nil {
		return "", fmt.Errorf("owner %s: %w", addr, storeErr(err))
	}
	return o, nil
}

// Peek returns an address the next allocation of kind in the given
// family (4 or 6) could get: the lowest of what each shard hands out
// without a new block and the first address of the lowest block no shard
// holds. Read only.
func (s *Shards) Peek(ctx context.Context, kind Kind, family int) (netip.Addr, error) {
	if kind >= MaxKinds {
		return netip.Addr{}, fmt.Errorf("peek: kind %d: %w", kind, ErrBadRequest)
	}
	pool := "4"
	switch family {
	case 4:
	case 6:
		pool = v6Pool(kind)
	default:
		return netip.Addr{}, fmt.Errorf("peek: family %d: %w", family, ErrBadRequest)
	}
	if err := scriptShardPeek.Load(ctx, s.c).Err(); err != nil {
		return netip.Addr{}, fmt.Errorf("peek: %w", storeErr(err))
	}
	cmds := make([]*redis.Cmd, s.n)
	pipe := s.c.Pipeline()
	for k := range s.n {
		cmds[k] = scriptShardPeek.EvalSha(ctx, pipe, []string{s.Tag(k) + "po"}, s.Tag(k), s.luaArg, pool)
	}
	_, _ = pipe.Exec(ctx)
	best, found := uint64(0), false
	for _, c := range cmds {
		v, err := c.Slice()
		if err != nil {
			return netip.Addr{}, fmt.Errorf("peek: %w", storeErr(err))
		}
		if code, _ := replyCode(v); code == codeOK && len(v) == 2 {
			if i, err := replyIndex(v[1]); err == nil && (!found || i < best) {
				best, found = i, true
			}
		}
	}
	// The lowest block nobody holds.
	nb, b := s.nb4, s.b4
	lo, hi := s.pl.v4Lo, s.pl.v4Hi
	if pool != "4" {
		nb, b, lo, hi = s.nb6, s.b6, s.pl.v6Lo, s.pl.v6Hi
	}
	next, err := s.c.HGet(ctx, s.reg[pool], "next").Uint64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return netip.Addr{}, fmt.Errorf("peek: %w", storeErr(err))
	}
	for n := next; n < nb && n < next+64; n++ {
		h, err := s.holderOf(ctx, pool, n*b)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("peek: %w", err)
		}
		if h < 0 {
			if i := max(n*b, lo); i <= hi && (!found || i < best) {
				best, found = i, true
			}
			break
		}
	}
	if !found {
		return netip.Addr{}, fmt.Errorf("peek pool %s: %w", pool, ErrExhausted)
	}
	if family == 4 {
		return s.pl.v4At(best), nil
	}
	return s.pl.v6At(kind, best), nil
}

// V4 and V6 are the addresses of indexes (for scripts that reply with
// indexes).
func (s *Shards) V4(i uint64) netip.Addr         { return s.pl.v4At(i) }
func (s *Shards) V6(k Kind, i uint64) netip.Addr { return s.pl.v6At(k, i) }
