package control

import "github.com/redis/go-redis/v9"

// The scripts of the two-phase changes of pending.go: each records or
// drops intents in the same script as the record change it belongs to.

// luaPend is prepended to the scripts that keep pending state.
const luaPend = `
if redis.replicate_commands then redis.replicate_commands() end
local function now_stamp()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
-- intent returns the stamp and owner of slot's allocation intent, or nil.
local function intent(pend, slot)
  local v = redis.call('HGET', pend, 'a:' .. slot)
  if not v then return nil end
  local sp = string.find(v, ' ', 1, true)
  return string.sub(v, 1, sp - 1), string.sub(v, sp + 1)
end
local function pend_free(pend, pending, id, owner, now, out)
  redis.call('HSET', pend, 'f:' .. owner, now)
  redis.call('SADD', pending, id)
  table.insert(out, owner)
  table.insert(out, now)
end
local function pend_tidy(pend, pending, id)
  if redis.call('EXISTS', pend) == 0 then redis.call('SREM', pending, id) end
end
-- collect returns the pending frees {owner, stamp, ...} of service id after
-- turning into pending frees the allocation intents older than stale
-- seconds (negative: none) and, when cancel is set, those whose slot starts
-- with cancel ('' : all).
local function collect(pend, pending, id, now, stale, cancel)
  local out = {}
  local all = redis.call('HGETALL', pend)
  for i = 1, #all, 2 do
    local f, v = all[i], all[i + 1]
    local kind = string.sub(f, 1, 2)
    if kind == 'f:' then
      table.insert(out, string.sub(f, 3))
      table.insert(out, v)
    elseif kind == 'a:' then
      local sp = string.find(v, ' ', 1, true)
      local st, o = string.sub(v, 1, sp - 1), string.sub(v, sp + 1)
      local slot = string.sub(f, 3)
      if (cancel and string.sub(slot, 1, #cancel) == cancel) or
         (stale >= 0 and tonumber(now) - tonumber(st) > stale) then
        redis.call('HDEL', pend, f)
        pend_free(pend, pending, id, o, now, out)
      end
    end
  end
  return out
end
`

// Script replies below are {code, payload, frees, clusters...}: frees is
// {owner, stamp, ...}, the pending frees the caller must finish.

// luaHosts is prepended to the scripts that add, move or remove
// instances: they keep the service's instance count per cluster (hcl:<id>,
// KEYS[6]) and, when a cluster starts or stops hosting it (a count to or
// from 0), record that cluster (hchg:<id>, KEYS[7]) and mark the service
// (rehost, KEYS[8]) for rehostScript, which hints what the change links
// or unlinks (peerscripts.go). hosting tells the caller to run it.
const luaHosts = `
local hosting = 0
local function host(id, c, n)
  if type(c) ~= 'string' or c == '' then return end
  local v = redis.call('HINCRBY', KEYS[6], c, n)
  if v <= 0 then redis.call('HDEL', KEYS[6], c) end
  if (n > 0 and v == n) or (n < 0 and v <= 0) then
    redis.call('SADD', KEYS[7], c)
    redis.call('SADD', KEYS[8], id)
    hosting = 1
  end
end
`

// prepareInstance: KEYS svc, int, clusters, pend, pending, hcl, hchg,
// rehost. ARGV id, field "i:<n>", cluster id, new owner, stale seconds.
// → {-1} unknown service, {-2} unknown cluster, {0, {instance, meta}}
// exists, {1, {instance, meta, hosting}, frees, clusters...} exists and
// moved to the cluster, {2, owner} allocate for owner (an earlier
// attempt's, or the new one).
var prepareInstanceScript = redis.NewScript(luaInterested + luaPend + luaHosts + `
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return {-1, '', {}} end
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 0 then return {-2, '', {}} end
local now = now_stamp()
local frees = collect(KEYS[4], KEYS[5], ARGV[1], now, tonumber(ARGV[5]), nil)
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur then
  local inst = cjson.decode(cur)
  if inst.cluster_id == ARGV[3] then return {0, {cur, meta}, frees} end
  host(ARGV[1], inst.cluster_id, -1)
  host(ARGV[1], ARGV[3], 1)
  inst.cluster_id = ARGV[3]
  cur = cjson.encode(inst)
  redis.call('HSET', KEYS[1], ARGV[2], cur)
  return interested({1, {cur, meta, hosting}, frees})
end
local _, o = intent(KEYS[4], ARGV[2])
if not o then o = ARGV[4] end
redis.call('HSET', KEYS[4], 'a:' .. ARGV[2], now .. ' ' .. o)
redis.call('SADD', KEYS[5], ARGV[1])
return {2, o, frees}
`)

// commitInstance: KEYS svc, int, clusters, pend, pending, hcl, hchg,
// rehost. ARGV id, field, owner, instance JSON (with owner), cluster id.
// → {-1, "", frees} service gone, {-3, "", frees} intent reclaimed (stale),
// {0, {instance, meta}, frees} exists already, {1, {instance, meta,
// hosting}, frees, clusters...} stored. Whenever the owner's pair is not
// the instance's, it becomes a pending free.
var commitInstanceScript = redis.NewScript(luaInterested + luaPend + luaHosts + `
local now = now_stamp()
local frees = {}
local _, o = intent(KEYS[4], ARGV[2])
if o == ARGV[3] then redis.call('HDEL', KEYS[4], 'a:' .. ARGV[2]) end
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then
  pend_free(KEYS[4], KEYS[5], ARGV[1], ARGV[3], now, frees)
  return {-1, '', frees}
end
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur then
  local inst = cjson.decode(cur)
  if inst.owner ~= ARGV[3] then
    pend_free(KEYS[4], KEYS[5], ARGV[1], ARGV[3], now, frees)
    return {0, {cur, meta}, frees}
  end
  pend_tidy(KEYS[4], KEYS[5], ARGV[1])
  if inst.cluster_id == ARGV[5] then return {0, {cur, meta}, frees} end
  host(ARGV[1], inst.cluster_id, -1)
  host(ARGV[1], ARGV[5], 1)
  inst.cluster_id = ARGV[5]
  cur = cjson.encode(inst)
  redis.call('HSET', KEYS[1], ARGV[2], cur)
  return interested({1, {cur, meta, hosting}, frees})
end
if o ~= ARGV[3] then
  pend_free(KEYS[4], KEYS[5], ARGV[1], ARGV[3], now, frees)
  return {-3, '', frees}
end
pend_tidy(KEYS[4], KEYS[5], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
host(ARGV[1], ARGV[5], 1)
return interested({1, {ARGV[4], meta, hosting}, frees})
`)

// deleteInstances: KEYS svc, int, clusters, pend, pending, hcl, hchg,
// rehost. ARGV id, instance number or "-1", stale seconds.
// → {-1, "", frees} unknown service, {-2, "", frees} unknown instance,
// {1, {meta, {numbers}, hosting}, frees, clusters...}.
var deleteInstancesScript = redis.NewScript(luaInterested + luaPend + luaHosts + `
local now = now_stamp()
local frees = collect(KEYS[4], KEYS[5], ARGV[1], now, tonumber(ARGV[3]), nil)
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return {-1, '', frees} end
local removed = {}
local function remove(f)
  local n = string.sub(f, 3)
  local ok, inst = pcall(cjson.decode, redis.call('HGET', KEYS[1], f))
  local o = ok and type(inst) == 'table' and inst.owner or nil
  if type(o) ~= 'string' then o = 'inst/' .. ARGV[1] .. '/' .. n end
  if ok and type(inst) == 'table' then host(ARGV[1], inst.cluster_id, -1) end
  redis.call('HDEL', KEYS[1], f)
  pend_free(KEYS[4], KEYS[5], ARGV[1], o, now, frees)
  table.insert(removed, n)
end
if ARGV[2] == '-1' then
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 2) == 'i:' then remove(f) end
  end
else
  if redis.call('HEXISTS', KEYS[1], 'i:' .. ARGV[2]) == 0 then return {-2, '', frees} end
  remove('i:' .. ARGV[2])
end
if #removed == 0 then return {1, {meta, removed, hosting}, frees} end
return interested({1, {meta, removed, hosting}, frees})
`)

// prepareService: KEYS svc, jobs, pend, pending. ARGV id, job, stale
// seconds, then policy, new owner for each policy.
// → {-2, other id} job taken, {-3, job} id names another job, {0, meta}
// exists, {2, {owners}} allocate for these owners (an earlier attempt's
// where it left one).
var prepareServiceScript = redis.NewScript(luaPend + `
local now = now_stamp()
local frees = collect(KEYS[3], KEYS[4], ARGV[1], now, tonumber(ARGV[3]), nil)
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder and holder ~= ARGV[1] then return {-2, holder, frees} end
local meta = redis.call('HGET', KEYS[1], 'meta')
if meta then
  local m = cjson.decode(meta)
  if m.job_name ~= ARGV[2] then return {-3, m.job_name, frees} end
  return {0, meta, frees}
end
local owners = {}
for i = 4, #ARGV, 2 do
  local slot = 'p:' .. ARGV[i]
  local _, o = intent(KEYS[3], slot)
  if not o then o = ARGV[i + 1] end
  redis.call('HSET', KEYS[3], 'a:' .. slot, now .. ' ' .. o)
  table.insert(owners, o)
end
redis.call('SADD', KEYS[4], ARGV[1])
return {2, owners, frees}
`)

// commitService: KEYS svc, jobs, pend, pending. ARGV id, job, meta JSON
// (with owners), then policy, owner for each policy.
// → {-2, other id, frees} job taken, {-3, job, frees} id names another job,
// {-4, "", frees} intents reclaimed, {0, meta, frees} exists, {1, meta, {}}
// stored. Whenever our owners are not the service's, they become pending
// frees.
var commitServiceScript = redis.NewScript(luaPend + `
local now = now_stamp()
local lost = false
for i = 4, #ARGV, 2 do
  local slot = 'p:' .. ARGV[i]
  local _, o = intent(KEYS[3], slot)
  if o == ARGV[i + 1] then redis.call('HDEL', KEYS[3], 'a:' .. slot) else lost = true end
end
local function free_ours()
  local frees = {}
  for i = 4, #ARGV, 2 do pend_free(KEYS[3], KEYS[4], ARGV[1], ARGV[i + 1], now, frees) end
  return frees
end
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder and holder ~= ARGV[1] then return {-2, holder, free_ours()} end
local meta = redis.call('HGET', KEYS[1], 'meta')
if meta then
  local m = cjson.decode(meta)
  if m.job_name ~= ARGV[2] then return {-3, m.job_name, free_ours()} end
  -- A concurrent deploy of the same service committed first; it shared
  -- our intents, so normally its owners are ours.
  local same = type(m.owners) == 'table'
  for i = 4, #ARGV, 2 do
    if not same or m.owners[ARGV[i]] ~= ARGV[i + 1] then same = false end
  end
  if same then
    pend_tidy(KEYS[3], KEYS[4], ARGV[1])
    return {0, meta, {}}
  end
  return {0, meta, free_ours()}
end
if lost then return {-4, '', free_ours()} end
pend_tidy(KEYS[3], KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], 'meta', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return {1, ARGV[3], {}}
`)

// deleteService: KEYS svc, jobs, int, pend, pending. ARGV id, cint key
// prefix, stale seconds. Deleting (or finding no service) cancels every
// allocation intent of the id: a deploy still in flight fails instead of
// resurrecting it.
// → {-1, "", frees} unknown, {-2, "", frees} has instances, {1, meta, frees}.
var deleteServiceScript = redis.NewScript(luaPend + `
local now = now_stamp()
local meta = redis.call('HGET', KEYS[1], 'meta')
if meta then
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 2) == 'i:' then
      return {-2, '', collect(KEYS[4], KEYS[5], ARGV[1], now, tonumber(ARGV[3]), nil)}
    end
  end
end
local frees = collect(KEYS[4], KEYS[5], ARGV[1], now, tonumber(ARGV[3]), '')
if not meta then return {-1, '', frees} end
local m = cjson.decode(meta)
for _, ip in ipairs(m.service_ip_list or {}) do
  local o = type(m.owners) == 'table' and m.owners[ip.IpType] or nil
  if type(o) ~= 'string' then o = 'svc/' .. ARGV[1] .. '/' .. ip.IpType end
  pend_free(KEYS[4], KEYS[5], ARGV[1], o, now, frees)
end
for _, c in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  redis.call('SREM', ARGV[2] .. c, ARGV[1])
end
redis.call('DEL', KEYS[1], KEYS[3])
if redis.call('HGET', KEYS[2], m.job_name) == ARGV[1] then
  redis.call('HDEL', KEYS[2], m.job_name)
end
return {1, meta, frees}
`)

// abandonIntents: KEYS pend, pending. ARGV id, then slot, owner pairs.
// After an allocation that definitely failed: each intent that still names
// the owner becomes a pending free (an earlier attempt may have allocated
// for it). → frees.
var abandonIntentsScript = redis.NewScript(luaPend + `
local now = now_stamp()
local frees = {}
for i = 2, #ARGV, 2 do
  local _, o = intent(KEYS[1], ARGV[i])
  if o == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], 'a:' .. ARGV[i])
    pend_free(KEYS[1], KEYS[2], ARGV[1], o, now, frees)
  end
end
return frees
`)

// finishFrees: KEYS pend, pending. ARGV id, then owner, stamp pairs that
// were released. Drops each pending free still carrying that stamp.
var finishFreesScript = redis.NewScript(`
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], 'f:' .. ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], 'f:' .. ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
`)

// sweepService: KEYS pend, pending. ARGV id, stale seconds. → frees.
var sweepServiceScript = redis.NewScript(luaPend + `
local frees = collect(KEYS[1], KEYS[2], ARGV[1], now_stamp(), tonumber(ARGV[2]), nil)
pend_tidy(KEYS[1], KEYS[2], ARGV[1])
return frees
`)
