package ipam

import "github.com/redis/go-redis/v9"

// Reply codes of the scripts. A domain failure is a reply {code, ...}, never
// a Lua error: a Lua error after a write would leave the write in place.
const (
	codeOK        = 0
	codeExhausted = 1
	codeConflict  = 2
	codeNotFound  = 3
)

// luaLib is prepended to every script. An index pool is two keys, both in
// the caller's hash tag:
//
//	H (hash)  next           first index never handed out (hint: indexes
//	                         from it upward may still be taken by custom
//	                         requests, so it is advanced past them)
//	          seq            release sequence number
//	          i:<idx>        owner of an allocated index
//	          o:<owner>      index an owner holds
//	          r:<idx>        "<release ms> <owner>" of a released index
//	          l:<owner>      index the owner released last, while free
//	Z (zset)  released indexes scored by release sequence number
//
// Indexes are decimal strings without leading zeros; Lua numbers hold them
// exactly (see V6IndexCap). Writes go through hset/hdel/zadd/zrem, which
// log the previous value so rollback() can undo a failed Alloc batch: Redis
// runs a script atomically but does not undo its writes.
const luaLib = `
if redis.replicate_commands then redis.replicate_commands() end
local E_OK, E_EXHAUSTED, E_CONFLICT, E_NOTFOUND = 0, 1, 2, 3
local undo = {}
local function hget(k, f)
  local v = redis.call('HGET', k, f)
  if v == false then return nil end
  return v
end
local function hset(k, f, v)
  undo[#undo + 1] = {'h', k, f, redis.call('HGET', k, f)}
  redis.call('HSET', k, f, v)
end
-- hset_known is hset when the caller knows the previous value (false:
-- none), saving the read.
local function hset_known(k, f, v, prev)
  undo[#undo + 1] = {'h', k, f, prev}
  redis.call('HSET', k, f, v)
end
local function hdel(k, f)
  local p = redis.call('HGET', k, f)
  if p == false then return end
  undo[#undo + 1] = {'h', k, f, p}
  redis.call('HDEL', k, f)
end
local function zadd(k, s, m)
  undo[#undo + 1] = {'z', k, m, redis.call('ZSCORE', k, m)}
  redis.call('ZADD', k, s, m)
end
local function zrem(k, m)
  local p = redis.call('ZSCORE', k, m)
  if p == false then return end
  undo[#undo + 1] = {'z', k, m, p}
  redis.call('ZREM', k, m)
end
local function rollback()
  for n = #undo, 1, -1 do
    local e = undo[n]
    if e[1] == 'h' then
      if e[4] == false then redis.call('HDEL', e[2], e[3]) else redis.call('HSET', e[2], e[3], e[4]) end
    else
      if e[4] == false then redis.call('ZREM', e[2], e[3]) else redis.call('ZADD', e[2], e[4], e[3]) end
    end
  end
  undo = {}
end
local function num(n) return string.format('%.0f', n) end
-- TIME is the server's clock: every replica of the control plane sees the
-- same one. Milliseconds.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function pool(h, z, lo, hi, q)
  return {h = h, z = z, lo = tonumber(lo), hi = tonumber(hi), q = tonumber(q)}
end
local function rel_info(p, i)
  local v = hget(p.h, 'r:' .. i)
  if not v then return nil end
  local sp = string.find(v, ' ', 1, true)
  return tonumber(string.sub(v, 1, sp - 1)), string.sub(v, sp + 1)
end
local function free_at(p, at, now) return p.q < 0 or now - at >= p.q end
local function unrelease(p, i)
  local _, prev = rel_info(p, i)
  if prev and hget(p.h, 'l:' .. prev) == i then hdel(p.h, 'l:' .. prev) end
  hdel(p.h, 'r:' .. i)
  zrem(p.z, i)
end
-- assign is called only for a free index and an owner holding nothing, so
-- neither field exists.
local function assign(p, i, o)
  hset_known(p.h, 'i:' .. i, o, false)
  hset_known(p.h, 'o:' .. o, i, false)
end
-- next_unused returns the lowest never-used index (p.hi+1 if none) and
-- the stored hint, as read.
local function unused(p, n)
  local s = num(n)
  return redis.call('HEXISTS', p.h, 'i:' .. s) == 0 and redis.call('HEXISTS', p.h, 'r:' .. s) == 0
end
local function next_unused(p)
  local hint = redis.call('HGET', p.h, 'next')
  local n = tonumber(hint or p.lo)
  if n < p.lo then n = p.lo end
  if p.bkey then
    -- A shard's pool (shard.go): only the indexes of its blocks, from the
    -- block of the hint upward, a few blocks per read.
    local from = math.floor(n / p.b)
    while true do
      local bl = redis.call('ZRANGEBYSCORE', p.bkey, from, '+inf', 'LIMIT', 0, 8)
      if #bl == 0 then return p.hi + 1, hint end
      for _, w in ipairs(bl) do
        local b = tonumber(w)
        local rlo, rhi = math.max(b * p.b, p.lo), math.min(b * p.b + p.b - 1, p.hi)
        if n < rlo then n = rlo end
        while n <= rhi do
          if unused(p, n) then
            p.nend = rhi
            return n, hint
          end
          n = n + 1
        end
        from = b + 1
      end
    end
  end
  while n <= p.hi do
    if unused(p, n) then break end
    n = n + 1
  end
  return n, hint
end
-- alloc gives owner o an index: the one it holds; custom index c (a string)
-- when given; the one it released last if still free (even in quarantine);
-- the lowest never-used; the least recently released past quarantine.
local function alloc(p, o, c, now)
  local cur = hget(p.h, 'o:' .. o)
  if cur then
    if c and c ~= cur then return nil, E_CONFLICT end
    return cur
  end
  if c then
    if redis.call('HEXISTS', p.h, 'i:' .. c) == 1 then return nil, E_CONFLICT end
    local at, prev = rel_info(p, c)
    if at then
      if prev ~= o and not free_at(p, at, now) then return nil, E_CONFLICT end
      unrelease(p, c)
    end
    assign(p, c, o)
    return c
  end
  local l = hget(p.h, 'l:' .. o)
  if l then
    local _, prev = rel_info(p, l)
    if prev == o then
      unrelease(p, l)
      assign(p, l, o)
      return l
    end
  end
  local n, hint = next_unused(p)
  if n <= p.hi then
    hset_known(p.h, 'next', num(n + 1), hint)
    if p.nend then
      -- the end of the hint's block, for shard_take
      hset(p.h, 'nend', num(p.nend))
    end
    local i = num(n)
    assign(p, i, o)
    return i
  end
  local head = redis.call('ZRANGE', p.z, 0, 0)[1]
  if head then
    local at = rel_info(p, head)
    if free_at(p, at, now) then
      unrelease(p, head)
      assign(p, head, o)
      return head
    end
  end
  return nil, E_EXHAUSTED
end
local function peek(p, now)
  local n = next_unused(p)
  if n <= p.hi then return num(n) end
  local head = redis.call('ZRANGE', p.z, 0, 0)[1]
  if head and free_at(p, rel_info(p, head), now) then return head end
  return nil
end
local function release(p, o, now)
  local i = hget(p.h, 'o:' .. o)
  if not i then return false end
  hdel(p.h, 'o:' .. o)
  hdel(p.h, 'i:' .. i)
  local seq = redis.call('HINCRBY', p.h, 'seq', 1)
  zadd(p.z, seq, i)
  hset(p.h, 'r:' .. i, num(now) .. ' ' .. o)
  hset(p.h, 'l:' .. o, i)
  return true
end
`

// scriptAllocSubnet: KEYS = pool H, Z; ARGV = lo, hi, quarantine ms, node.
// Reply {0, index} or {code}.
var scriptAllocSubnet = redis.NewScript(luaLib + `
local p = pool(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
local i, e = alloc(p, ARGV[4], nil, now_ms())
if not i then return {e} end
return {E_OK, i}
`)

// scriptReleaseSubnet: KEYS = pool H, Z; ARGV = node. Reply {0} or {3}.
var scriptReleaseSubnet = redis.NewScript(luaLib + `
local p = pool(KEYS[1], KEYS[2], 0, 0, 0)
if release(p, ARGV[1], now_ms()) then return {E_OK} end
return {E_NOTFOUND}
`)

// scriptPeek: KEYS = pool H, Z; ARGV = lo, hi, quarantine ms. Read only.
// Reply {0, index} or {1}.
var scriptPeek = redis.NewScript(luaLib + `
local p = pool(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
local i = peek(p, now_ms())
if not i then return {E_EXHAUSTED} end
return {E_OK, i}
`)

// scriptAlloc performs a batch of service-pool requests, all or nothing.
//
//	KEYS[1]            owner → kind hash
//	KEYS[2], KEYS[3]   the IPv4 pool
//	KEYS[2+2j], [3+2j] the IPv6 pool of the j-th kind in ARGV
//	ARGV               quarantine ms, v4 lo, v4 hi, v6 lo, v6 hi,
//	                   nkinds, kind_1 … kind_nkinds, nreqs,
//	                   then per request: owner, kind, custom v4 index or
//	                   "", custom v6 index or ""
//
// Reply {0, v4_1, v6_1, v4_2, v6_2, …} or {code, request number (1-based),
// family (4 or 6, 0 for a kind conflict)}.
var scriptAlloc = redis.NewScript(luaLib + `
local q = ARGV[1]
local v4 = pool(KEYS[2], KEYS[3], ARGV[2], ARGV[3], q)
local v6 = {}
local nk = tonumber(ARGV[6])
for j = 1, nk do
  v6[ARGV[6 + j]] = pool(KEYS[2 + 2 * j], KEYS[3 + 2 * j], ARGV[4], ARGV[5], q)
end
local a = 7 + nk
local nr = tonumber(ARGV[a])
local now = now_ms()
local out = {E_OK}
for r = 1, nr do
  local b = a + 1 + (r - 1) * 4
  local o, kind, c4, c6 = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  if c4 == '' then c4 = nil end
  if c6 == '' then c6 = nil end
  local held = hget(KEYS[1], o)
  if held and held ~= kind then
    rollback()
    return {E_CONFLICT, r, 0}
  end
  local i4, e = alloc(v4, o, c4, now)
  if not i4 then
    rollback()
    return {e, r, 4}
  end
  local i6
  i6, e = alloc(v6[kind], o, c6, now)
  if not i6 then
    rollback()
    return {e, r, 6}
  end
  if not held then hset(KEYS[1], o, kind) end
  out[#out + 1] = i4
  out[#out + 1] = i6
end
return out
`)

// scriptRelease frees every owner's pair.
//
//	KEYS[1]                owner → kind hash
//	KEYS[2], KEYS[3]       the IPv4 pool
//	KEYS[4+2k], KEYS[5+2k] kind k's IPv6 pool, k = 0 … MaxKinds-1
//	ARGV                   owners
//
// Reply: the number of owners that held a pair.
var scriptRelease = redis.NewScript(luaLib + `
local now = now_ms()
local v4 = pool(KEYS[2], KEYS[3], 0, 0, 0)
local n = 0
for _, o in ipairs(ARGV) do
  local kind = hget(KEYS[1], o)
  if kind then
    local k = tonumber(kind)
    release(v4, o, now)
    release(pool(KEYS[4 + 2 * k], KEYS[5 + 2 * k], 0, 0, 0), o, now)
    hdel(KEYS[1], o)
    n = n + 1
  end
end
return n
`)
