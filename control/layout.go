package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/redis/go-redis/v9"
)

// The key layout root's Redis holds, checked before the first operation
// that touches services or addresses (ready):
//
//   - none yet (a fresh Redis): this root's layout is recorded;
//   - this layout (same shard count and blocks): served;
//   - another layout 2 (other shards or blocks): refused, naming both: the
//     services would be looked for in the wrong shards;
//   - layout 1 (root's records under {r}, one pool under {svcpool}, what
//     versions before issue 16 wrote): migrated in place, once.
//
// The migration first fences layout-1 replicas still running: it renames
// the old pool's keys and leaves a string in their place, so an old
// replica's allocations fail (WRONGTYPE) instead of handing out addresses
// the new layout holds. Then it copies every service's records into its
// shard, every pool index into the shard of the block it lies in (a block
// goes to the shard of the first service holding an address in it;
// another service's address in it stays where it is and is freed there),
// registers the blocks, turns pending frees and abandoned intents into
// pending frees of the new layout (the sweep finishes them), records the
// layout, and only then deletes the old keys. A migration cut short is
// redone from the old keys by the next start.

// layoutVersion names this key layout.
const layoutVersion = "2"

func (s *rootStore) kLayout() string    { return s.tag + "layout" }
func (s *rootStore) layoutWant() string { return layoutVersion + " " + s.pool.Layout() }

// errLayout: Redis holds root state of a layout this root does not serve.
var errLayout = fmt.Errorf("root state in another key layout: %w", api.ErrUnavailable)

// ready checks (once) that Redis holds state of this root's layout,
// migrating layout 1 if that is what it holds.
func (s *rootStore) ready(c context.Context) error {
	if s.checked.Load() {
		return nil
	}
	s.checkMu.Lock()
	defer s.checkMu.Unlock()
	if s.checked.Load() {
		return nil
	}
	got, err := s.rdb.Get(c, s.kLayout()).Result()
	switch {
	case err == nil && got == s.layoutWant():
		s.checked.Store(true)
		return nil
	case err == nil:
		return fmt.Errorf("%w: Redis holds %q, this root is configured for %q; run every root replica with the same shards and address plan", errLayout, got, s.layoutWant())
	case !errors.Is(err, redis.Nil):
		return redisErr("check key layout", err)
	}
	old, err := s.oldLayout(c)
	if err != nil {
		return err
	}
	if old {
		if err := s.migrate(c); err != nil {
			return fmt.Errorf("migrate root state from layout 1: %w", err)
		}
	}
	// Record this layout, unless another replica recorded one first.
	if err := s.rdb.SetNX(c, s.kLayout(), s.layoutWant(), 0).Err(); err != nil {
		return redisErr("record key layout", err)
	}
	if got, err = s.rdb.Get(c, s.kLayout()).Result(); err != nil {
		return redisErr("check key layout", err)
	}
	if got != s.layoutWant() {
		return fmt.Errorf("%w: Redis holds %q, this root is configured for %q", errLayout, got, s.layoutWant())
	}
	s.checked.Store(true)
	return nil
}

func jsonUnmarshalString(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// The layout-1 keys.
func (s *rootStore) oldPool() string         { return s.prefix + "{svcpool}:" }
func (s *rootStore) oldSvc(id string) string { return s.tag + "svc:" + id }

// oldLayout reports whether Redis holds layout-1 state: its pool, or
// services in the job index without a layout marker.
func (s *rootStore) oldLayout(c context.Context) (bool, error) {
	n, err := s.rdb.Exists(c, s.oldPool()+"owners").Result()
	if err != nil {
		return false, redisErr("check key layout", err)
	}
	if n > 0 {
		return true, nil
	}
	if n, err = s.rdb.Exists(c, s.oldPool()+"v4").Result(); err != nil || n > 0 {
		return n > 0, redisErr("check key layout", err)
	}
	jobs, err := s.rdb.HLen(c, s.kJobs()).Result()
	return jobs > 0, redisErr("check key layout", err)
}

// fenceScript: KEYS the old pool's keys (one slot). ARGV the note left in
// their place. Renames each to <key>:v1 (once) and leaves a string.
var fenceScript = redis.NewScript(`
for _, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  if t ~= 'none' and t ~= 'string' then
    redis.call('RENAME', k, k .. ':v1')
  end
  if t ~= 'string' then redis.call('SET', k, ARGV[1]) end
end
return 1
`)

// poolIndex is one index of an old pool.
type oldIndex struct {
	owner    string // holder, or "" when released
	released string // "<ms> <owner>" of a released index
	score    float64
}

// migrate moves a layout-1 Redis to this layout: it fences the old
// replicas, rewrites the pools as shard pools and the records into their
// shards, records the layout and drops the old keys.
func (s *rootStore) migrate(c context.Context) error {
	// A migration takes longer than a request's budget.
	c, cancel := context.WithTimeout(context.WithoutCancel(c), 2*time.Minute)
	defer cancel()
	lock := s.tag + "migrating"
	ok, err := s.rdb.SetNX(c, lock, "1", 2*time.Minute).Result()
	if err != nil {
		return redisErr("lock", err)
	}
	if !ok {
		return fmt.Errorf("another replica is migrating: %w", errRedis)
	}
	defer s.rdb.Del(context.WithoutCancel(c), lock)

	// Fence the old replicas.
	poolKeys := []string{s.oldPool() + "owners", s.oldPool() + "v4", s.oldPool() + "v4:released"}
	for k := range 16 {
		h := s.oldPool() + "v6." + strconv.Itoa(k)
		poolKeys = append(poolKeys, h, h+":released")
	}
	if err := fenceScript.Run(c, s.rdb, poolKeys, "moved to root key layout 2: stop root replicas of older versions").Err(); err != nil {
		return redisErr("fence", err)
	}
	v1 := func(k string) string { return k + ":v1" }

	pools, owners, names, err := s.readOldPools(c, v1)
	if err != nil {
		return err
	}
	held, err := s.writeShardPools(c, pools, owners, names)
	if err != nil {
		return err
	}
	ids, err := s.migrateRecords(c, held)
	if err != nil {
		return err
	}
	if err := s.rdb.Set(c, s.kLayout(), s.layoutWant(), 0).Err(); err != nil {
		return redisErr("record key layout", err)
	}
	s.dropOldKeys(c, ids, poolKeys, v1)
	return nil
}

// oldPoolState is one pool of layout 1, read by migrate.
type oldPoolState struct {
	idx  map[uint64]*oldIndex
	last map[string]string // l:<owner>
	seq  string
}

// readOldPools reads layout 1's pools (fenced: under their :v1 names), by
// pool name ("4", "6.<k>"), and the owner → kind hash; names lists every
// pool name.
func (s *rootStore) readOldPools(c context.Context, v1 func(string) string) (pools map[string]*oldPoolState, owners map[string]string, names []string, err error) {
	owners, err = s.rdb.HGetAll(c, v1(s.oldPool()+"owners")).Result()
	if err != nil {
		return nil, nil, nil, redisErr("read pool", err)
	}
	pools = map[string]*oldPoolState{}
	names = []string{"4"}
	for k := range 16 {
		names = append(names, "6."+strconv.Itoa(k))
	}
	for _, name := range names {
		h := s.oldPool() + "v4"
		if name != "4" {
			h = s.oldPool() + "v" + name
		}
		m, err := s.rdb.HGetAll(c, v1(h)).Result()
		if err != nil {
			return nil, nil, nil, redisErr("read pool", err)
		}
		if len(m) == 0 {
			continue
		}
		z, err := s.rdb.ZRangeWithScores(c, v1(h+":released"), 0, -1).Result()
		if err != nil {
			return nil, nil, nil, redisErr("read pool", err)
		}
		ps := &oldPoolState{idx: map[uint64]*oldIndex{}, last: map[string]string{}, seq: m["seq"]}
		get := func(f string) *oldIndex {
			i, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return nil
			}
			if ps.idx[i] == nil {
				ps.idx[i] = &oldIndex{}
			}
			return ps.idx[i]
		}
		for f, v := range m {
			switch {
			case strings.HasPrefix(f, "i:"):
				if e := get(f[2:]); e != nil {
					e.owner = v
				}
			case strings.HasPrefix(f, "r:"):
				if e := get(f[2:]); e != nil {
					e.released = v
				}
			case strings.HasPrefix(f, "l:"):
				ps.last[f[2:]] = v
			}
		}
		for _, e := range z {
			if x := get(fmt.Sprint(e.Member)); x != nil {
				x.score = e.Score
			}
		}
		pools[name] = ps
	}

	return pools, owners, names, nil
}

// writeShardPools writes the old pools as shard pools: each block to the
// shard of the service of its lowest index's owner. held: pool name →
// owner → shard holding it.
func (s *rootStore) writeShardPools(c context.Context, pools map[string]*oldPoolState, owners map[string]string, names []string) (map[string]map[string]int, error) {
	shardOf := func(owner string) int {
		parts := strings.Split(owner, "/")
		if len(parts) < 3 {
			return 0
		}
		return s.shard(parts[1])
	}
	held := map[string]map[string]int{} // pool name → owner → shard holding it
	pipe := s.rdb.Pipeline()
	for _, name := range names {
		// Start every shard's pool and the registry afresh (a migration cut
		// short is redone).
		pipe.Del(c, s.prefix+"{pool}:reg"+name)
		for k := range s.pool.Count() {
			pipe.Del(c, s.pool.Tag(k)+"p"+name, s.pool.Tag(k)+"p"+name+"z", s.pool.Tag(k)+"p"+name+"b")
		}
	}
	for k := range s.pool.Count() {
		pipe.Del(c, s.pool.Tag(k)+"po")
	}
	if _, err := pipe.Exec(c); err != nil {
		return nil, redisErr("reset new pools", err)
	}
	bsize := s.pool.BlockSize
	for name, ps := range pools {
		held[name] = map[string]int{}
		idxs := make([]uint64, 0, len(ps.idx))
		for i := range ps.idx {
			idxs = append(idxs, i)
		}
		slices.Sort(idxs)
		blockShard := map[uint64]int{}
		shardBlocks := map[int][]uint64{}
		for _, i := range idxs {
			b := i / bsize(name)
			if _, ok := blockShard[b]; ok {
				continue
			}
			e := ps.idx[i]
			o := e.owner
			if o == "" {
				_, o, _ = strings.Cut(e.released, " ")
			}
			k := shardOf(o)
			blockShard[b] = k
			shardBlocks[k] = append(shardBlocks[k], b)
		}
		reg := s.prefix + "{pool}:reg" + name
		pipe := s.rdb.Pipeline()
		for b, k := range blockShard {
			pipe.HSet(c, reg, "b:"+strconv.FormatUint(b, 10), k)
		}
		for k, bl := range shardBlocks {
			slices.Sort(bl)
			strs := make([]string, len(bl))
			for i, b := range bl {
				strs[i] = strconv.FormatUint(b, 10)
			}
			pipe.Del(c, reg+":s:"+strconv.Itoa(k))
			pipe.RPush(c, reg+":s:"+strconv.Itoa(k), strs)
			h := s.pool.Tag(k) + "p" + name
			lo := bl[0] * bsize(name)
			for _, b := range bl {
				pipe.ZAdd(c, h+"b", redis.Z{Score: float64(b), Member: strconv.FormatUint(b, 10)})
			}
			pipe.HSet(c, h, "next", strconv.FormatUint(lo, 10))
			if ps.seq != "" {
				pipe.HSet(c, h, "seq", ps.seq)
			}
		}
		for _, i := range idxs {
			e := ps.idx[i]
			k := blockShard[i/bsize(name)]
			h := s.pool.Tag(k) + "p" + name
			is := strconv.FormatUint(i, 10)
			if e.owner != "" {
				pipe.HSet(c, h, "i:"+is, e.owner, "o:"+e.owner, is)
				held[name][e.owner] = k
				if kind, ok := owners[e.owner]; ok {
					pipe.HSet(c, s.pool.Tag(k)+"po", e.owner, kind)
				}
			}
			if e.released != "" {
				pipe.HSet(c, h, "r:"+is, e.released)
				pipe.ZAdd(c, h+"z", redis.Z{Score: e.score, Member: is})
				if _, o, _ := strings.Cut(e.released, " "); ps.last[o] == is {
					pipe.HSet(c, h, "l:"+o, is)
				}
			}
		}
		if _, err := pipe.Exec(c); err != nil {
			return nil, redisErr("write pools", err)
		}
	}

	return held, nil
}

// migrateRecords moves every service's record, interest and pending
// frees into its shard; held is writeShardPools'. It returns the ids.
func (s *rootStore) migrateRecords(c context.Context, held map[string]map[string]int) ([]string, error) {
	ids, err := s.rdb.HVals(c, s.kJobs()).Result()
	if err != nil {
		return nil, redisErr("read services", err)
	}
	pendIDs, err := s.rdb.SMembers(c, s.tag+"pending").Result()
	if err != nil {
		return nil, redisErr("read services", err)
	}
	ids = append(ids, pendIDs...)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	where := func(o string) string {
		w4, w6 := "-", "-"
		if k, ok := held["4"][o]; ok {
			w4 = strconv.Itoa(k)
		}
		for name, m := range held {
			if k, ok := m[o]; ok && name != "4" {
				w6 = strconv.Itoa(k)
			}
		}
		return w4 + " " + w6
	}
	for _, id := range ids {
		rec, err := s.rdb.HGetAll(c, s.oldSvc(id)).Result()
		if err != nil {
			return nil, redisErr("read service "+id, err)
		}
		ints, err := s.rdb.SMembers(c, s.tag+"int:"+id).Result()
		if err != nil {
			return nil, redisErr("read service "+id, err)
		}
		pend, err := s.rdb.HGetAll(c, s.tag+"pend:"+id).Result()
		if err != nil {
			return nil, redisErr("read service "+id, err)
		}
		pipe := s.rdb.Pipeline()
		if len(rec) > 0 {
			fields := make([]any, 0, 2*len(rec)+2)
			hosts := map[string]int64{}
			for f, v := range rec {
				fields = append(fields, f, v)
				if f == "meta" {
					var m serviceMeta
					if err := jsonUnmarshalString(v, &m); err == nil {
						fields = append(fields, "job", m.JobName)
					}
				} else if strings.HasPrefix(f, "i:") {
					var in storedInstance
					if jsonUnmarshalString(v, &in) == nil && in.ClusterID != "" {
						hosts[in.ClusterID]++
					}
				}
			}
			pipe.Del(c, s.kSvc(id), s.st(id)+"hcl:"+id)
			pipe.HSet(c, s.kSvc(id), fields...)
			for cl, n := range hosts {
				pipe.HSet(c, s.st(id)+"hcl:"+id, cl, n)
				pipe.HSet(c, s.kHosts(id), cl, 1) // the link graph's copy
			}
		}
		if len(ints) > 0 {
			pipe.SAdd(c, s.kShardInt(id), ints)
		}
		// Pending frees and the intents of deploys that no longer run: the
		// sweep frees them in the new layout.
		for f, v := range pend {
			st, rest, _ := strings.Cut(v, " ")
			var owner, mode string
			switch {
			case strings.HasPrefix(f, "f:"):
				owner, mode = f[2:], "r"
			case strings.HasPrefix(f, "a:"):
				owner, mode = rest, "u"
			default:
				continue
			}
			pipe.HSet(c, s.kPend(id), "f:"+owner, st+" "+mode+" "+where(owner))
			pipe.SAdd(c, s.st(id)+"pending", id)
		}
		if _, err := pipe.Exec(c); err != nil {
			return nil, redisErr("write service "+id, err)
		}
	}
	return ids, nil
}

// dropOldKeys deletes layout 1's keys, best effort: the layout marker
// says they are no longer read.
func (s *rootStore) dropOldKeys(c context.Context, ids, poolKeys []string, v1 func(string) string) {
	old := []string{s.tag + "pending", s.tag + "rehost", s.tag + "hcl-built"}
	for _, id := range ids {
		old = append(old, s.oldSvc(id), s.tag+"pend:"+id, s.tag+"hchg:"+id)
	}
	for _, k := range poolKeys {
		old = append(old, v1(k))
	}
	for _, k := range old {
		s.rdb.Del(c, k)
	}
}
