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
//	shard_release(tag, o, now)         free o's pair into quarantine; → the families o held here ('46', '4', '6', '')
//	shard_unalloc(tag, o)              undo o's allocation, without quarantine; → true if o held one
//	v4text(cfg, i), v6text(cfg, kind, i) the addresses of indexes
//
// A pool name is '4' (the shared IPv4 pool) or '6.<kind>'. Keys, all under
// the shard's tag: p<name> (pool hash, as in luaLib, plus "blocks": the
// shard's block numbers, ascending), p<name>z (released zset), po (owner →
// kind).
const LuaShard = luaLib + `
local E_FOREIGN = 4
local function shard_cfg(s)
  local t = {}
  for w in string.gmatch(s, '%S+') do t[#t + 1] = w end
  return {q = tonumber(t[1]), lo4 = tonumber(t[2]), hi4 = tonumber(t[3]), lo6 = tonumber(t[4]),
    hi6 = tonumber(t[5]), b4 = tonumber(t[6]), b6 = tonumber(t[7]), base4 = tonumber(t[8]),
    h1 = tonumber(t[9]), h2 = tonumber(t[10])}
end
local function pool_dims(name, cfg)
  if name == '4' then return cfg.lo4, cfg.hi4, cfg.b4 end
  return cfg.lo6, cfg.hi6, cfg.b6
end
local function shard_pool(tag, name, cfg)
  local h = tag .. 'p' .. name
  local lo, hi, b = pool_dims(name, cfg)
  local p = pool(h, h .. 'z', lo, hi, cfg.q)
  p.ranges = {}
  local bl = redis.call('HGET', h, 'blocks')
  if bl then
    for w in string.gmatch(bl, '%d+') do
      local n = tonumber(w)
      local rlo, rhi = math.max(n * b, lo), math.min(n * b + b - 1, hi)
      if rlo <= rhi then p.ranges[#p.ranges + 1] = {rlo, rhi} end
    end
  end
  return p
end
local function shard_blocks(tag, name)
  local n = 0
  for _ in string.gmatch(redis.call('HGET', tag .. 'p' .. name, 'blocks') or '', '%d+') do n = n + 1 end
  return n
end
local function in_ranges(p, i)
  for _, r in ipairs(p.ranges) do
    if i >= r[1] and i <= r[2] then return true end
  end
  return false
end
local function shard_adopt(tag, name, list, cfg)
  local h = tag .. 'p' .. name
  local set, all, low = {}, {}, nil
  for w in string.gmatch(redis.call('HGET', h, 'blocks') or '', '%d+') do
    set[w] = true
    all[#all + 1] = tonumber(w)
  end
  for w in string.gmatch(list, '%d+') do
    if not set[w] then
      set[w] = true
      local n = tonumber(w)
      all[#all + 1] = n
      if not low or n < low then low = n end
    end
  end
  if not low then return end
  table.sort(all)
  local s = {}
  for i, n in ipairs(all) do s[i] = num(n) end
  redis.call('HSET', h, 'blocks', table.concat(s, ' '))
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

// scriptClaim gives a shard a block of a pool, or hands it the blocks the
// registry gave it that it has not adopted yet.
//
//	KEYS[1]  the pool's registry hash: "next" (scan hint), "b:<n>" → shard
//	         holding block n, "s:<k>" → shard k's blocks, ascending
//	ARGV     shard, number of blocks the shard has adopted, number of
//	         blocks of the pool, block wanted ("" : any), how many blocks
//	         to claim (any: more when the shard is contended)
//
// Reply {0, list} (shard's blocks, space separated), {1} no block left,
// {2, holder} the wanted block is another shard's.
var scriptClaim = redis.NewScript(`
local k, have, nb, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local cur = redis.call('HGET', KEYS[1], 's:' .. k) or ''
local list = {}
for w in string.gmatch(cur, '%d+') do list[#list + 1] = tonumber(w) end
if want == '' then
  if #list > have then return {0, cur} end
  local n = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
  local got = 0
  for _ = 1, tonumber(ARGV[5]) do
    while n < nb and redis.call('HEXISTS', KEYS[1], 'b:' .. string.format('%.0f', n)) == 1 do n = n + 1 end
    if n >= nb then break end
    redis.call('HSET', KEYS[1], 'b:' .. string.format('%.0f', n), k)
    list[#list + 1] = n
    n = n + 1
    got = got + 1
  end
  if got == 0 then return {1} end
  redis.call('HSET', KEYS[1], 'next', string.format('%.0f', n))
else
  local h = redis.call('HGET', KEYS[1], 'b:' .. want)
  if h == k then return {0, cur} end
  if h then return {2, h} end
  redis.call('HSET', KEYS[1], 'b:' .. want, k)
  list[#list + 1] = tonumber(want)
end
table.sort(list)
local s = {}
for i, v in ipairs(list) do s[i] = string.format('%.0f', v) end
cur = table.concat(s, ' ')
redis.call('HSET', KEYS[1], 's:' .. k, cur)
return {0, cur}
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
