package control

import "github.com/redis/go-redis/v9"

// Cluster scripts. ARGV[1..3] are always: key tag (prefix{c:<id>}:), stream
// MAXLEN, wake channel; the rest follow. Node streams are
// <tag>nstream:<node> with ids <seq>-0 where <tag>nseq:<node> counts.

const luaPush = `
local tag, maxlen, chan = ARGV[1], ARGV[2], ARGV[3]
local function pushTo(nodes, typ, job, data)
  for _, n in ipairs(nodes) do
    local seq = redis.call('INCR', tag .. 'nseq:' .. n)
    redis.call('XADD', tag .. 'nstream:' .. n, 'MAXLEN', maxlen, seq .. '-0', 't', typ, 'j', job, 'd', data)
  end
  if #nodes > 0 then redis.call('PUBLISH', chan, table.concat(nodes, ',')) end
  return nodes
end
local function eachIP(e, f)
  if type(e.service_ip_list) == 'table' then
    for _, s in ipairs(e.service_ip_list) do f(s.Address); f(s.Address_v6) end
  end
  if type(e.instance_list) == 'table' then
    for _, i in ipairs(e.instance_list) do f(i.instance_ip); f(i.instance_ip_v6) end
  end
end
`

// cacheSet: KEYS cache:<job>, ipidx, jint:<job>, jobs. ARGV tag, maxlen,
// chan, job, entry JSON. Stores the entry, re-indexes its IPs and pushes it
// to every interested node, unless it did not change. → nodes pushed to.
var cacheSetScript = redis.NewScript(luaPush + `
local job, entry = ARGV[4], ARGV[5]
local old = redis.call('GET', KEYS[1])
if old == entry then return {} end
if old then
  eachIP(cjson.decode(old), function(a)
    if type(a) == 'string' and a ~= '' and redis.call('HGET', KEYS[2], a) == job then redis.call('HDEL', KEYS[2], a) end
  end)
end
eachIP(cjson.decode(entry), function(a)
  if type(a) == 'string' and a ~= '' then redis.call('HSET', KEYS[2], a, job) end
end)
redis.call('SET', KEYS[1], entry)
redis.call('SADD', KEYS[4], job)
return pushTo(redis.call('SMEMBERS', KEYS[3]), 'service', job, entry)
`)

// cacheRemove: same KEYS and ARGV (without the entry). Drops the cached
// entry and pushes a removal to interested nodes. → nodes pushed to.
var cacheRemoveScript = redis.NewScript(luaPush + `
local job = ARGV[4]
local old = redis.call('GET', KEYS[1])
redis.call('SREM', KEYS[4], job)
if not old then return {} end
eachIP(cjson.decode(old), function(a)
  if type(a) == 'string' and a ~= '' and redis.call('HGET', KEYS[2], a) == job then redis.call('HDEL', KEYS[2], a) end
end)
redis.call('DEL', KEYS[1])
return pushTo(redis.call('SMEMBERS', KEYS[3]), 'removed', job, '')
`)

// registerNode: KEYS nodes, nseq:<node>. ARGV tag, maxlen, chan, node,
// node JSON, node ip, tunnel port. A new node or a changed endpoint pushes
// a peers change to every other node. → the node's current version.
var registerNodeScript = redis.NewScript(luaPush + `
local node = ARGV[4]
local old = redis.call('HGET', KEYS[1], node)
redis.call('HSET', KEYS[1], node, ARGV[5])
local changed = true
if old then
  local o = cjson.decode(old)
  changed = not (o.node_ip == ARGV[6] and tonumber(o.tunnel_port) == tonumber(ARGV[7]))
end
if changed then
  local others = {}
  for _, n in ipairs(redis.call('HKEYS', KEYS[1])) do
    if n ~= node then table.insert(others, n) end
  end
  pushTo(others, 'peers', '', '')
end
return tonumber(redis.call('GET', KEYS[2]) or '0')
`)

// deleteNode: KEYS nodes, nint:<node>, nseq:<node>, nstream:<node>. ARGV
// tag, maxlen, chan, node. → 0 unknown, 1 deleted.
var deleteNodeScript = redis.NewScript(luaPush + `
local node = ARGV[4]
if redis.call('HDEL', KEYS[1], node) == 0 then return 0 end
for _, j in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('SREM', tag .. 'jint:' .. j, node)
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
pushTo(redis.call('HKEYS', KEYS[1]), 'peers', '', '')
return 1
`)

// dropNodeInterest: KEYS nint:<node>, jint:<job>. ARGV node, job.
// → nodes still interested in job.
var dropNodeInterestScript = redis.NewScript(`
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
return redis.call('SCARD', KEYS[2])
`)
