package control

import "github.com/redis/go-redis/v9"

// Lua scripts: every multi-key change of the control state is one script,
// so it is atomic and replicas never see half of it. All keys of a script
// share one hash tag ({r} for root state, {c:<id>} for a cluster's), and
// keys built inside a script carry the same tag, so scripts run unchanged on
// Redis Cluster. Each is run by one store function (rootstore.go,
// servicestore.go, peerstore.go, clusterstore.go), which turns its reply
// codes into named errors.

// luaInterested appends the JSON of every registered cluster interested in
// the service (int set KEYS[2], clusters hash KEYS[3]) to out.
const luaInterested = `
local function interested(out)
  for _, c in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local v = redis.call('HGET', KEYS[3], c)
    if v then table.insert(out, v) end
  end
  return out
end
`

// deployStatus: KEYS svc, int, clusters. ARGV groups of 5: field, nsIP,
// nsIPv6, host IP, host port. All instances must exist; all are updated.
// → {-1} unknown service, {-2, field} unknown instance, {1, clusters...}.
var deployStatusScript = redis.NewScript(luaInterested + `
if redis.call('HEXISTS', KEYS[1], 'meta') == 0 then return {-1} end
local cur = {}
for i = 1, #ARGV, 5 do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if not v then return {-2, ARGV[i]} end
  cur[i] = cjson.decode(v)
end
for i = 1, #ARGV, 5 do
  local inst = cur[i]
  inst.namespace_ip = ARGV[i+1]
  inst.namespace_ip_v6 = ARGV[i+2]
  inst.host_ip = ARGV[i+3]
  inst.host_port = tonumber(ARGV[i+4])
  redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(inst))
end
return interested({1})
`)

// undeployStatus: KEYS svc, int, clusters. ARGV groups of 3: field, host
// IP, host port. Clears the location of each instance that still runs at
// that host. → {-1}, {-2, field}, {n cleared, clusters...}.
var undeployStatusScript = redis.NewScript(luaInterested + `
if redis.call('HEXISTS', KEYS[1], 'meta') == 0 then return {-1} end
local cur = {}
for i = 1, #ARGV, 3 do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if not v then return {-2, ARGV[i]} end
  cur[i] = cjson.decode(v)
end
local n = 0
for i = 1, #ARGV, 3 do
  local inst = cur[i]
  if inst.host_ip == ARGV[i+1] and tonumber(inst.host_port) == tonumber(ARGV[i+2]) then
    inst.namespace_ip = ''
    inst.namespace_ip_v6 = ''
    inst.host_ip = ''
    inst.host_port = 0
    redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(inst))
    n = n + 1
  end
end
if n == 0 then return {0} end
return interested({n})
`)

// getService: KEYS svc, int, cint, clusters. ARGV id, cluster id, key tag.
// Registers the cluster's interest; a new one may link clusters, which are
// hinted (peerscripts.go). → {-1} unknown service, {-2} unknown cluster,
// {1, HGETALL, hints...}.
var getServiceScript = redis.NewScript(luaLinks + `
if redis.call('HEXISTS', KEYS[1], 'meta') == 0 then return {-1} end
if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 0 then return {-2} end
local hints = {}
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then interestHints(ARGV[3], ARGV[2], ARGV[1], hints) end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return hintReply(ARGV[3], hints, {1, redis.call('HGETALL', KEYS[1])})
`)

// deleteCluster: KEYS clusters, cint, ep:<cid>. ARGV cluster id, int key
// prefix, key tag. The clusters linked with it are hinted: its nodes leave
// their peer sets. → {0} unknown, {1, hints...} deleted (with its
// interests and endpoints).
var deleteClusterScript = redis.NewScript(luaLinks + `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {0} end
local hints = {}
for a in pairs(linkset(ARGV[3], ARGV[1])) do hint(hints, a, ARGV[1]) end
redis.call('HDEL', KEYS[1], ARGV[1])
for _, s in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('SREM', ARGV[2] .. s, ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3])
return hintReply(ARGV[3], hints, {1})
`)

// resolveJob: KEYS jobs, clusters. ARGV job, cluster id (may be empty),
// key tag. One round trip for the hottest read: job → id → service hash,
// registering the cluster's interest when given (a new one may link
// clusters, which are hinted). The service, int and cint keys are built
// here; they carry the same {r} tag as KEYS, so one slot.
// → {-1} unknown job, {-2} unknown cluster, {1, HGETALL, hints...}.
var resolveJobScript = redis.NewScript(luaLinks + `
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return {-1} end
local svc = ARGV[3] .. 'svc:' .. id
if redis.call('HEXISTS', svc, 'meta') == 0 then return {-1} end
local hints = {}
if ARGV[2] ~= '' then
  if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return {-2} end
  if redis.call('SISMEMBER', ARGV[3] .. 'cint:' .. ARGV[2], id) == 0 then interestHints(ARGV[3], ARGV[2], id, hints) end
  redis.call('SADD', ARGV[3] .. 'int:' .. id, ARGV[2])
  redis.call('SADD', ARGV[3] .. 'cint:' .. ARGV[2], id)
end
return hintReply(ARGV[3], hints, {1, redis.call('HGETALL', svc)})
`)
