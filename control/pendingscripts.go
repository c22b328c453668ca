package control

import "github.com/redis/go-redis/v9"

// The scripts of the multi-step changes of pending.go: each records or
// drops intents in the same script as the record change it belongs to.
// All run on the service's shard (ARGV[1] its tag, luaShard).

// luaPend is appended to luaShard by the scripts that keep pending state:
//
//	pend:<id>  hash  a:<slot>   "<stamp> <owner> <where4> <where6>"  allocation intent
//	                 f:<owner>  "<stamp> <mode> <where4> <where6>"   pending free
//	pending    set   ids whose pend hash is not empty (for the sweep)
//
// where4/where6 say where the pair's addresses are: a shard number, or an
// address (its block's shard is looked up). mode is "r" (release into
// quarantine: a record held the pair) or "u" (undo an allocation no
// record ever held).
const luaPend = `
if redis.replicate_commands then redis.replicate_commands() end
local function now_stamp()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local function k_pend(id) return T .. 'pend:' .. id end
-- intent returns the stamp, owner and placement of slot's intent, or nil.
local function intent(id, slot)
  local v = redis.call('HGET', k_pend(id), 'a:' .. slot)
  if not v then return nil end
  local st, o, loc = string.match(v, '^(%S+) (%S+) ?(.*)$')
  return st, o, loc
end
local function pend_free(tag, id, owner, now, mode, loc, out)
  local v = now .. ' ' .. mode .. ' ' .. loc
  redis.call('HSET', k_pend(id), 'f:' .. owner, v)
  redis.call('SADD', T .. 'pending', id)
  table.insert(out, owner)
  table.insert(out, v)
end
-- free_pair releases owner o's pair (addresses a4, a6) into quarantine:
-- what the shard holds at once, the rest (a pair placed in another shard's
-- block, or migrated there) as a pending free.
local function free_pair(id, o, ms, now, a4, a6, out)
  local here = shard_release(T, o, ms)
  if here == '46' then return end
  local w4, w6 = a4, a6
  if string.find(here, '4', 1, true) then w4 = '-' end
  if string.find(here, '6', 1, true) then w6 = '-' end
  pend_free(T, id, o, now, 'r', w4 .. ' ' .. w6, out)
end
local function pend_tidy(id)
  if redis.call('EXISTS', k_pend(id)) == 0 then redis.call('SREM', T .. 'pending', id) end
end
-- collect returns the pending frees {owner, value, ...} of service id after
-- turning into pending frees (mode u: never visible) the allocation
-- intents older than stale seconds (negative: none) and, when cancel is
-- set, those whose slot starts with cancel ('' : all).
local function collect(id, now, stale, cancel)
  local out = {}
  local pend = k_pend(id)
  local all = redis.call('HGETALL', pend)
  for i = 1, #all, 2 do
    local f, v = all[i], all[i + 1]
    local kind = string.sub(f, 1, 2)
    if kind == 'f:' then
      table.insert(out, string.sub(f, 3))
      table.insert(out, v)
    elseif kind == 'a:' then
      local st, o, loc = string.match(v, '^(%S+) (%S+) ?(.*)$')
      local slot = string.sub(f, 3)
      if (cancel and string.sub(slot, 1, #cancel) == cancel) or
         (stale >= 0 and tonumber(now) - tonumber(st) > stale) then
        redis.call('HDEL', pend, f)
        pend_free(T, id, o, now, 'u', loc, out)
      end
    end
  end
  return out
end
`

// Replies below are {code, payload, frees}: frees is {owner, value, ...},
// the pending frees the caller must finish.

// prepareService: KEYS svc:<id>. ARGV tag, id, job, stale seconds, then
// policy, new owner, where4, where6 for each policy.
// → {-3, job, frees} the id names another job, {0, meta, frees} exists,
// {2, {owners}, frees} allocate for these owners (an earlier attempt's
// where it left one).
var prepareServiceScript = redis.NewScript(luaShard + luaPend + `
local id, job = ARGV[2], ARGV[3]
local now = now_stamp()
local frees = collect(id, now, tonumber(ARGV[4]), nil)
local meta = redis.call('HGET', KEYS[1], 'meta')
if meta then
  if redis.call('HGET', KEYS[1], 'job') ~= job then return {-3, redis.call('HGET', KEYS[1], 'job'), frees} end
  return {0, meta, frees}
end
local owners = {}
for i = 5, #ARGV, 4 do
  local slot = 'p:' .. ARGV[i]
  local _, o = intent(id, slot)
  if not o then o = ARGV[i + 1] end
  redis.call('HSET', k_pend(id), 'a:' .. slot, now .. ' ' .. o .. ' ' .. ARGV[i + 2] .. ' ' .. ARGV[i + 3])
  table.insert(owners, o)
end
redis.call('SADD', T .. 'pending', id)
return {2, owners, frees}
`)

// commitService: KEYS svc:<id>. ARGV tag, id, job, meta JSON (with
// owners), then policy, owner for each policy.
// → {-3, job, frees} the id names another job, {-4, "", frees} intents
// reclaimed, {0, meta, frees} exists, {1, meta, {}} stored. Our owners
// that the service does not hold become pending frees of mode u: nobody
// saw their addresses.
var commitServiceScript = redis.NewScript(luaShard + luaPend + `
local id, job = ARGV[2], ARGV[3]
local now = now_stamp()
local lost = false
local locs = {}
for i = 5, #ARGV, 2 do
  local slot = 'p:' .. ARGV[i]
  local _, o, loc = intent(id, slot)
  locs[i] = loc or ''
  if o == ARGV[i + 1] then redis.call('HDEL', k_pend(id), 'a:' .. slot) else lost = true end
end
local function free_ours(keep)
  local frees = {}
  for i = 5, #ARGV, 2 do
    if not keep or keep[ARGV[i]] ~= ARGV[i + 1] then
      pend_free(T, id, ARGV[i + 1], now, 'u', locs[i], frees)
    end
  end
  pend_tidy(id)
  return frees
end
local meta = redis.call('HGET', KEYS[1], 'meta')
if meta then
  local m = cjson.decode(meta)
  local keep = type(m.owners) == 'table' and m.owners or {}
  if m.job_name ~= job then return {-3, m.job_name, free_ours(keep)} end
  -- A concurrent deploy of the same service committed first; it shared
  -- our intents, so normally its owners are ours.
  return {0, meta, free_ours(keep)}
end
if lost then return {-4, '', free_ours(nil)} end
pend_tidy(id)
redis.call('HSET', KEYS[1], 'meta', ARGV[4], 'job', job)
return {1, ARGV[4], {}}
`)

// deleteService: KEYS svc:<id>. ARGV tag, id, stale seconds. Deleting (or
// finding no service) cancels every allocation intent of the id: a deploy
// still in flight fails instead of resurrecting it. Service IPs held in
// the shard are released here; others become pending frees. The clusters
// interested in it lose their interest (recorded as link changes).
// → {-1, "", frees} unknown, {-2, "", frees} has instances, {1, {meta,
// linked}, frees}.
var deleteServiceScript = redis.NewScript(luaShard + luaPend + `
local id, svc = ARGV[2], KEYS[1]
local now = now_stamp()
local meta = redis.call('HGET', svc, 'meta')
if meta then
  for _, f in ipairs(redis.call('HKEYS', svc)) do
    if string.sub(f, 1, 2) == 'i:' then
      return {-2, '', collect(id, now, tonumber(ARGV[3]), nil)}
    end
  end
end
local frees = collect(id, now, tonumber(ARGV[3]), '')
if not meta then
  pend_tidy(id)
  return {-1, '', frees}
end
local m = cjson.decode(meta)
local ms = now_ms()
for _, ip in ipairs(m.service_ip_list or {}) do
  local o = type(m.owners) == 'table' and m.owners[ip.IpType] or nil
  if type(o) ~= 'string' then o = 'svc/' .. id .. '/' .. ip.IpType end
  free_pair(id, o, ms, now, str(ip.Address), str(ip.Address_v6), frees)
end
for _, c in ipairs(redis.call('SMEMBERS', T .. 'int:' .. id)) do link_changed(id, c) end
redis.call('DEL', svc, T .. 'int:' .. id, T .. 'hcl:' .. id)
pend_tidy(id)
return {1, {meta, linked}, frees}
`)

// abandonIntents: KEYS pend:<id>. ARGV tag, id, then slot, owner pairs.
// After an allocation that definitely failed: each intent that still names
// the owner becomes a pending free of mode u. → frees.
var abandonIntentsScript = redis.NewScript(luaShard + luaPend + `
local id = ARGV[2]
local now = now_stamp()
local frees = {}
for i = 3, #ARGV, 2 do
  local _, o, loc = intent(id, ARGV[i])
  if o == ARGV[i + 1] then
    redis.call('HDEL', k_pend(id), 'a:' .. ARGV[i])
    pend_free(T, id, o, now, 'u', loc, frees)
  end
end
pend_tidy(id)
return frees
`)

// finishFrees: KEYS pend:<id>. ARGV tag, id, then owner, value pairs that
// were freed. Drops each pending free still carrying that value.
var finishFreesScript = redis.NewScript(`
local T, id = ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], 'f:' .. ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], 'f:' .. ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', T .. 'pending', id) end
return 1
`)

// sweepService: KEYS pend:<id>. ARGV tag, id, stale seconds. → frees.
var sweepServiceScript = redis.NewScript(luaShard + luaPend + `
local frees = collect(ARGV[2], now_stamp(), tonumber(ARGV[3]), nil)
pend_tidy(ARGV[2])
return frees
`)

// probeService: KEYS svc:<id>. ARGV tag, id, stale seconds. Whether a
// job claim of service id is live: → {job of its record or "", 1 if it has
// an allocation intent younger than stale}.
var probeServiceScript = redis.NewScript(luaShard + luaPend + `
local job = redis.call('HGET', KEYS[1], 'job') or ''
local fresh = 0
local now = tonumber(now_stamp())
local all = redis.call('HGETALL', k_pend(ARGV[2]))
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'a:' then
    local st = string.match(all[i + 1], '^(%S+)')
    if now - tonumber(st) <= tonumber(ARGV[3]) then fresh = 1 end
  end
end
return {job, fresh}
`)
