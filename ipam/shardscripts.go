package ipam

import "github.com/redis/go-redis/v9"

// codeForeign: a custom index lies outside the shard's blocks (the caller
// must claim its block or allocate it in the shard that holds it).
const codeForeign = 4

// LuaShard is the Lua library of a shard's pools (shard.go), for scripts
// that change a shard's records and its addresses in one step: package
// control prepends it to its shard scripts. It holds luaLib (the pool
// functions, with their undo log: rollback() undoes a failed step's pool
// writes) and, on top:
//
//	shard_cfg(s)                       the numbers of Shards.LuaArg
//	shard_adopt(tag, name, list, cfg)  take over the registry's list of the shard's blocks of pool name
//	shard_blocks(tag, name)            how many blocks of pool name the shard has adopted
//	shard_alloc(tag, cfg, o, kind, c4, c6, fams, now)
//	                                   allocate owner o's pair (fams: '46', '4' or '6'); → {['4']=i4, ['6']=i6}
//	                                   or nil, code, pool name (codeExhausted: claim a block of that pool)
//	shard_alloc_new(tag, cfg, o, kind, now) shard_alloc for a new owner, without a custom address: fewer calls
//	shard_release(tag, o, now)         free o's pair into quarantine; → the families o held here ('46', '4', '6', '')
//	shard_unalloc(tag, o)              undo o's allocation, without quarantine; → true if o held one
//	v4text(cfg, i), v6text(cfg, kind, i) the addresses of indexes
//
// A pool name is '4' (the shared IPv4 pool) or '6.<kind>'. Keys, all under
// the shard's tag: p<name> (pool hash, as in luaLib), p<name>z (released
// zset), p<name>b (zset of the shard's blocks, scored by number), po
// (owner → kind).
const LuaShard = luaLib + `
local E_FOREIGN = 4
local function shard_cfg(s)
  -- one match, not a loop: string work is most of a short script's time
  local q, lo4, hi4, lo6, hi6, b4, b6, base4, h1, h2 = string.match(s,
    '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  return {q = tonumber(q), lo4 = tonumber(lo4), hi4 = tonumber(hi4), lo6 = tonumber(lo6),
    hi6 = tonumber(hi6), b4 = tonumber(b4), b6 = tonumber(b6), base4 = tonumber(base4),
    h1 = tonumber(h1), h2 = tonumber(h2)}
end
local function pool_dims(name, cfg)
  if name == '4' then return cfg.lo4, cfg.hi4, cfg.b4 end
  return cfg.lo6, cfg.hi6, cfg.b6
end
local function shard_pool(tag, name, cfg)
  local h = tag .. 'p' .. name
  local lo, hi, b = pool_dims(name, cfg)
  local p = pool(h, h .. 'z', lo, hi, cfg.q)
  p.bkey, p.b = h .. 'b', b
  return p
end
local function shard_blocks(tag, name)
  return redis.call('ZCARD', tag .. 'p' .. name .. 'b')
end
local function in_ranges(p, i)
  return redis.call('ZSCORE', p.bkey, num(math.floor(i / p.b))) ~= false
end
local function shard_adopt(tag, name, list, cfg)
  local h = tag .. 'p' .. name
  local low
  for w in string.gmatch(list, '%d+') do
    if redis.call('ZADD', h .. 'b', 'NX', w, w) == 1 then
      local n = tonumber(w)
      if not low or n < low then low = n end
    end
  end
  if not low then return end
  -- never-used indexes of the new blocks may lie below the hint
  local lo, _, b = pool_dims(name, cfg)
  local start = math.max(low * b, lo)
  local hint = redis.call('HGET', h, 'next')
  if not hint or tonumber(hint) > start then redis.call('HSET', h, 'next', num(start)) end
end
local function shard_alloc(tag, cfg, o, kind, c4, c6, fams, now)
  local own = tag .. 'po'
  local held = hget(own, o)
  if held and held ~= kind then return nil, E_CONFLICT, '' end
  local out = {}
  for f in string.gmatch(fams, '[46]') do
    local name, c = '4', c4
    if f == '6' then name, c = '6.' .. kind, c6 end
    local p = shard_pool(tag, name, cfg)
    if c and not in_ranges(p, tonumber(c)) and hget(p.h, 'o:' .. o) ~= c then return nil, E_FOREIGN, name end
    local i, e = alloc(p, o, c, now)
    if not i then return nil, e, name end
    out[f] = i
  end
  if not held then hset(own, o, kind) end
  return out
end
-- shard_take is the short way to a never-used index of pool p for an
-- owner that holds nothing (a new generation): the index at the hint, when
-- it lies in the hint's block and is unused. nil: take the general way
-- (alloc). Two reads and one write, where alloc makes about seven calls.
local function shard_take(p, o)
  local v = redis.call('HMGET', p.h, 'next', 'nend')
  local n, nend = tonumber(v[1]), tonumber(v[2])
  for _ = 1, 4 do
    if not n or not nend or n > nend then return nil end
    local s = num(n)
    local f = redis.call('HMGET', p.h, 'i:' .. s, 'r:' .. s)
    if not f[1] and not f[2] then
      undo[#undo + 1] = {'h', p.h, 'i:' .. s, false}
      undo[#undo + 1] = {'h', p.h, 'o:' .. o, false}
      undo[#undo + 1] = {'h', p.h, 'next', v[1]}
      redis.call('HSET', p.h, 'i:' .. s, o, 'o:' .. o, s, 'next', num(n + 1))
      return s
    end
    n = n + 1
  end
  return nil
end
-- shard_alloc_new is shard_alloc ('46', no custom address) for an owner
-- that holds nothing: an instance's new generation.
local function shard_alloc_new(tag, cfg, o, kind, now)
  local out = {}
  for _, name in ipairs({'4', '6.' .. kind}) do
    local p = shard_pool(tag, name, cfg)
    local i = shard_take(p, o)
    if not i then
      local e
      i, e = alloc(p, o, nil, now)
      if not i then return nil, e, name end
    end
    out[string.sub(name, 1, 1)] = i
  end
  undo[#undo + 1] = {'h', tag .. 'po', o, false}
  redis.call('HSET', tag .. 'po', o, kind)
  return out
end
local function shard_release(tag, o, now)
  local own = tag .. 'po'
  local kind = hget(own, o)
  if not kind then return '' end
  local fams = ''
  for _, name in ipairs({'4', '6.' .. kind}) do
    local h = tag .. 'p' .. name
    if release(pool(h, h .. 'z', 0, 0, 0), o, now) then fams = fams .. string.sub(name, 1, 1) end
  end
  hdel(own, o)
  return fams
end
local function shard_unalloc(tag, o)
  local own = tag .. 'po'
  local kind = hget(own, o)
  if not kind then return false end
  for _, name in ipairs({'4', '6.' .. kind}) do
    local h = tag .. 'p' .. name
    local i = hget(h, 'o:' .. o)
    if i then
      hdel(h, 'o:' .. o)
      hdel(h, 'i:' .. i)
      local hint = hget(h, 'next')
      if hint and tonumber(hint) > tonumber(i) then hset(h, 'next', i) end
    end
  end
  hdel(own, o)
  return true
end
local function v4text(cfg, i)
  local v = cfg.base4 + tonumber(i)
  local a = math.floor(v / 16777216) % 256
  local b = math.floor(v / 65536) % 256
  local c = math.floor(v / 256) % 256
  return string.format('%d.%d.%d.%d', a, b, c, v % 256)
end
-- v6text formats kind k's address of index i (below 2^32) as RFC 5952
-- text: the base's first hextet, the kind in the second, i in the last two.
local function v6text(cfg, kind, i)
  local v = tonumber(i)
  local hx = {cfg.h1, cfg.h2 + tonumber(kind) * 4096, 0, 0, 0, 0, math.floor(v / 65536), v % 65536}
  local bs, bl, s, l = 0, 0, 0, 0
  for j = 1, 8 do
    if hx[j] == 0 then
      if l == 0 then s = j end
      l = l + 1
      if l > bl then bs, bl = s, l end
    else
      l = 0
    end
  end
  local parts = {}
  local j = 1
  while j <= 8 do
    if bl >= 2 and j == bs then
      parts[#parts + 1] = (j == 1) and ':' or ''
      j = j + bl
      if j > 8 then parts[#parts + 1] = '' end
    else
      parts[#parts + 1] = string.format('%x', hx[j])
      j = j + 1
    end
  end
  return table.concat(parts, ':')
end
`

// scriptClaim gives a shard blocks of a pool, or hands it the blocks the
// registry gave it that it has not adopted yet.
//
//	KEYS[1]  the pool's registry hash: "next" (scan hint), "b:<n>" → shard
//	         holding block n; <KEYS[1]>:s:<k> is a list of shard k's
//	         blocks in the order they were given, so a shard that adopted
//	         the first have gets the rest, however many it holds
//	ARGV     shard, number of blocks the shard has adopted, number of
//	         blocks of the pool, block wanted ("" : any), how many blocks
//	         to claim (any)
//
// Reply {0, list} (the blocks the shard has not adopted, space
// separated), {1} no block left, {2, holder} the wanted block is another
// shard's.
var scriptClaim = redis.NewScript(`
local k, have, nb, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local lk = KEYS[1] .. ':s:' .. k
local function rest() return {0, table.concat(redis.call('LRANGE', lk, have, -1), ' ')} end
if want == '' then
  if redis.call('LLEN', lk) > have then return rest() end
  local n = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
  local got = 0
  for _ = 1, tonumber(ARGV[5]) do
    while n < nb and redis.call('HEXISTS', KEYS[1], 'b:' .. string.format('%.0f', n)) == 1 do n = n + 1 end
    if n >= nb then break end
    local w = string.format('%.0f', n)
    redis.call('HSET', KEYS[1], 'b:' .. w, k)
    redis.call('RPUSH', lk, w)
    n = n + 1
    got = got + 1
  end
  if got == 0 then return {1} end
  redis.call('HSET', KEYS[1], 'next', string.format('%.0f', n))
  return rest()
end
local h = redis.call('HGET', KEYS[1], 'b:' .. want)
if h == k then return {0, want} end
if h then return {2, h} end
redis.call('HSET', KEYS[1], 'b:' .. want, k)
redis.call('RPUSH', lk, want)
return {0, want}
`)

// scriptShardAlloc allocates a batch in one shard, all or nothing.
//
//	ARGV  shard tag, LuaArg, quarantine-free adopt: pool name and block list
//	      ("" ""), then per request: owner, kind, custom v4 index or "",
//	      custom v6 index or "", families ("46", "4" or "6")
//
// Reply {0, i4_1, i6_1, …} ("" for a family not asked) or {code, request
// number, pool name, blocks of that pool the shard has}.
var scriptShardAlloc = redis.NewScript(LuaShard + `
local tag, cfg = ARGV[1], shard_cfg(ARGV[2])
if ARGV[3] ~= '' then shard_adopt(tag, ARGV[3], ARGV[4], cfg) end
local now = now_ms()
local out = {E_OK}
local r = 0
for b = 5, #ARGV, 5 do
  r = r + 1
  local c4, c6 = ARGV[b + 2], ARGV[b + 3]
  if c4 == '' then c4 = nil end
  if c6 == '' then c6 = nil end
  local got, e, name = shard_alloc(tag, cfg, ARGV[b], ARGV[b + 1], c4, c6, ARGV[b + 4], now)
  if not got then
    rollback()
    return {e, r, name, shard_blocks(tag, name)}
  end
  out[#out + 1] = got['4'] or ''
  out[#out + 1] = got['6'] or ''
end
return out
`)

// scriptShardFree frees owners in one shard. ARGV shard tag, mode ("r":
// release into quarantine, "u": undo allocations that were never
// visible), owners. Reply: how many held a pair.
var scriptShardFree = redis.NewScript(LuaShard + `
local tag, now, n = ARGV[1], now_ms(), 0
for i = 3, #ARGV do
  local ok
  if ARGV[2] == 'u' then ok = shard_unalloc(tag, ARGV[i]) else ok = shard_release(tag, ARGV[i], now) ~= '' end
  if ok then n = n + 1 end
end
return n
`)

// scriptShardPeek: ARGV shard tag, LuaArg, pool name. Read only. Reply
// {0, index} or {1}: the next index the shard's pool hands out without a
// new block.
var scriptShardPeek = redis.NewScript(LuaShard + `
local cfg = shard_cfg(ARGV[2])
local p = shard_pool(ARGV[1], ARGV[3], cfg)
local i = peek(p, now_ms())
if not i then return {E_EXHAUSTED} end
return {E_OK, i}
`)
