package control

import (
	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
)

// Lua scripts of root's shards (rootstore.go has the layout). Every script
// here runs on one shard's slot: ARGV[1] is the shard's tag, and the keys
// it builds from it (a service's records, its interests, the shard's
// pools) share that slot, so scripts run unchanged on Redis Cluster.
// KEYS[1] is always one of them, for routing. Each is run by one store
// function, which turns its reply codes into named errors.

// luaShard is prepended to every shard script: ipam's pool library (the
// shard's addresses) and the records' helpers.
const luaShard = ipam.LuaShard + `
local T = ARGV[1]
local function str(v) if type(v) == 'string' then return v end return '' end
-- linked records that the clusters' relation to service id (interest,
-- hosting) changed: the sweep or the caller propagates it to root's link
-- graph (rootpeers.go); lver orders the propagations.
local linked = 0
local function link_changed(id, c)
  redis.call('SADD', T .. 'lchg:' .. id, c)
  redis.call('SADD', T .. 'links', id)
  redis.call('INCR', T .. 'lver:' .. id)
  linked = 1
end
-- host counts service id's instances in cluster c (n = +1 or -1): a
-- cluster that starts or stops hosting it changes links.
local function host(id, c, n)
  if type(c) ~= 'string' or c == '' then return end
  local k = T .. 'hcl:' .. id
  local v = redis.call('HINCRBY', k, c, n)
  if v <= 0 then redis.call('HDEL', k, c) end
  if (n > 0 and v == n) or (n < 0 and v <= 0) then link_changed(id, c) end
end
-- interested appends the ids of the clusters interested in service id.
local function interested(id, out)
  for _, c in ipairs(redis.call('SMEMBERS', T .. 'int:' .. id)) do out[#out + 1] = c end
  return out
end
local function inst_flat(out, v)
  local ok, i = pcall(cjson.decode, v)
  if not ok or type(i) ~= 'table' then i = {} end
  out[#out + 1] = tostring(i.instance_number or -1)
  out[#out + 1] = str(i.instance_ip)
  out[#out + 1] = str(i.instance_ip_v6)
  out[#out + 1] = str(i.cluster_id)
  out[#out + 1] = str(i.namespace_ip)
  out[#out + 1] = str(i.namespace_ip_v6)
  out[#out + 1] = str(i.host_ip)
  out[#out + 1] = tostring(tonumber(i.host_port) or 0)
  return i
end
`

// deployInstance: KEYS svc:<id>. ARGV tag, LuaArg, id, instance number,
// cluster id, new owner, adopt pool, adopt list ("" ""). Allocates the
// instance's pair in the shard and stores it, in one step.
// → {-1} unknown service, {-3, code, pool, blocks} no address (code 1:
// claim a block of pool and try again with it adopted), {-4, code} refused,
// {0 | 1 (changed), linked, job, instance (8 flat values), clusters...}.
var deployInstanceScript = redis.NewScript(luaShard + `
local id, n, cid, owner = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local svc = KEYS[1]
local field = 'i:' .. n
local v = redis.call('HMGET', svc, 'job', field)
local job, cur = v[1], v[2]
if not job then return {-1} end
local cfg = shard_cfg(ARGV[2])
if ARGV[7] ~= '' then shard_adopt(T, ARGV[7], ARGV[8], cfg) end
if cur then
  local out = {0, 0, job}
  local inst = inst_flat(out, cur)
  if inst.cluster_id == cid then return out end
  host(id, inst.cluster_id, -1)
  host(id, cid, 1)
  inst.cluster_id = cid
  redis.call('HSET', svc, field, cjson.encode(inst))
  out[1], out[2], out[7] = 1, linked, cid
  return interested(id, out)
end
local got, e, name = shard_alloc_new(T, cfg, owner, '0', now_ms())
if not got then
  rollback()
  if e == E_EXHAUSTED then return {-3, e, name, shard_blocks(T, name)} end
  return {-4, e}
end
local a4, a6 = v4text(cfg, got['4']), v6text(cfg, 0, got['6'])
redis.call('HSET', svc, field, cjson.encode({instance_number = tonumber(n), instance_ip = a4,
  instance_ip_v6 = a6, cluster_id = cid, namespace_ip = '', namespace_ip_v6 = '', host_ip = '',
  host_port = 0, owner = owner}))
host(id, cid, 1)
return interested(id, {1, linked, job, n, a4, a6, cid, '', '', '', '0'})
`)

// deleteInstances: KEYS svc:<id>. ARGV tag, id, instance number or "-1".
// Removes the records and frees their pairs in the shard (quarantine); a
// pair held elsewhere (a migrated block) becomes a pending free.
// → {-1} unknown service, {-2} unknown instance, {1, linked, job,
// {numbers}, {frees}, clusters...}.
var deleteInstancesScript = redis.NewScript(luaShard + luaPend + `
local id, svc = ARGV[2], KEYS[1]
local job = redis.call('HGET', svc, 'job')
if not job then return {-1} end
local now, ms = now_stamp(), now_ms()
local removed, frees = {}, {}
local function remove(f)
  local n = string.sub(f, 3)
  local ok, inst = pcall(cjson.decode, redis.call('HGET', svc, f))
  if not ok or type(inst) ~= 'table' then inst = {} end
  local o = inst.owner
  if type(o) ~= 'string' then o = 'inst/' .. id .. '/' .. n end
  host(id, inst.cluster_id, -1)
  redis.call('HDEL', svc, f)
  free_pair(id, o, ms, now, str(inst.instance_ip), str(inst.instance_ip_v6), frees)
  table.insert(removed, n)
end
if ARGV[3] == '-1' then
  for _, f in ipairs(redis.call('HKEYS', svc)) do
    if string.sub(f, 1, 2) == 'i:' then remove(f) end
  end
else
  if redis.call('HEXISTS', svc, 'i:' .. ARGV[3]) == 0 then return {-2} end
  remove('i:' .. ARGV[3])
end
local out = {1, linked, job, removed, frees}
if #removed > 0 then interested(id, out) end
return out
`)

// getService: KEYS svc:<id>. ARGV tag, id, cluster id ("" none), job (""
// any: else the record must be that job's, which checks a cached job → id).
// Records the cluster's interest. → {-1} no such service, {1, linked, id,
// job, n service IPs, (type, v4, v6)..., (instance: 8 flat values)...}.
var getServiceScript = redis.NewScript(luaShard + `
local id, cid, svc = ARGV[2], ARGV[3], KEYS[1]
local job = redis.call('HGET', svc, 'job')
if not job or (ARGV[4] ~= '' and ARGV[4] ~= job) then return {-1} end
if cid ~= '' and redis.call('SADD', T .. 'int:' .. id, cid) == 1 then link_changed(id, cid) end
local all = redis.call('HGETALL', svc)
local out = {1, linked, id, job, 0}
local insts = {}
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f == 'meta' then
    local ok, m = pcall(cjson.decode, v)
    if ok and type(m) == 'table' and type(m.service_ip_list) == 'table' then
      for _, ip in ipairs(m.service_ip_list) do
        out[#out + 1] = str(ip.IpType)
        out[#out + 1] = str(ip.Address)
        out[#out + 1] = str(ip.Address_v6)
        out[5] = out[5] + 1
      end
    end
  elseif string.sub(f, 1, 2) == 'i:' then
    insts[#insts + 1] = v
  end
end
for _, v in ipairs(insts) do inst_flat(out, v) end
return out
`)

// dropInterest: KEYS int:<id>. ARGV tag, id, cluster id. → 1 if the
// cluster was interested (the link change is recorded), else 0.
var dropInterestScript = redis.NewScript(luaShard + `
if redis.call('SREM', KEYS[1], ARGV[3]) == 0 then return 0 end
link_changed(ARGV[2], ARGV[3])
return 1
`)

// deployStatus: KEYS svc:<id>. ARGV tag, id, then groups of 5: field,
// nsIP, nsIPv6, host IP, host port. All instances must exist; all are
// updated. → {-1} unknown service, {-2, field} unknown instance, {1, job,
// clusters...}.
var deployStatusScript = redis.NewScript(luaShard + `
local svc = KEYS[1]
local job = redis.call('HGET', svc, 'job')
if not job then return {-1} end
local cur = {}
for i = 3, #ARGV, 5 do
  local v = redis.call('HGET', svc, ARGV[i])
  if not v then return {-2, ARGV[i]} end
  cur[i] = cjson.decode(v)
end
for i = 3, #ARGV, 5 do
  local inst = cur[i]
  inst.namespace_ip = ARGV[i + 1]
  inst.namespace_ip_v6 = ARGV[i + 2]
  inst.host_ip = ARGV[i + 3]
  inst.host_port = tonumber(ARGV[i + 4])
  redis.call('HSET', svc, ARGV[i], cjson.encode(inst))
end
return interested(ARGV[2], {1, job})
`)

// undeployStatus: KEYS svc:<id>. ARGV tag, id, then groups of 3: field,
// host IP, host port. Clears the location of each instance that still runs
// at that host. → {-1}, {-2, field}, {n cleared, job, clusters...}.
var undeployStatusScript = redis.NewScript(luaShard + `
local svc = KEYS[1]
local job = redis.call('HGET', svc, 'job')
if not job then return {-1} end
local cur = {}
for i = 3, #ARGV, 3 do
  local v = redis.call('HGET', svc, ARGV[i])
  if not v then return {-2, ARGV[i]} end
  cur[i] = cjson.decode(v)
end
local n = 0
for i = 3, #ARGV, 3 do
  local inst = cur[i]
  if inst.host_ip == ARGV[i + 1] and tonumber(inst.host_port) == tonumber(ARGV[i + 2]) then
    inst.namespace_ip = ''
    inst.namespace_ip_v6 = ''
    inst.host_ip = ''
    inst.host_port = 0
    redis.call('HSET', svc, ARGV[i], cjson.encode(inst))
    n = n + 1
  end
end
if n == 0 then return {0, job} end
return interested(ARGV[2], {n, job})
`)

// linkState: KEYS lchg:<id>. ARGV tag, id. The relation of each cluster
// whose link to service id changed: → {version, (cluster, interested 0|1,
// hosts 0|1)...}.
var linkStateScript = redis.NewScript(luaShard + `
local id = ARGV[2]
local out = {redis.call('GET', T .. 'lver:' .. id) or '0'}
for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = c
  out[#out + 1] = redis.call('SISMEMBER', T .. 'int:' .. id, c)
  out[#out + 1] = redis.call('HEXISTS', T .. 'hcl:' .. id, c)
end
return out
`)

// linkDone: KEYS lchg:<id>. ARGV tag, id, version propagated. Drops the
// marks unless the links changed again since. → 1 dropped, 0 kept. (lver
// stays: the link graph keeps the last version it copied, and a later
// change must count on from it.)
var linkDoneScript = redis.NewScript(`
local T, id = ARGV[1], ARGV[2]
if (redis.call('GET', T .. 'lver:' .. id) or '0') ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', T .. 'links', id)
return 1
`)
