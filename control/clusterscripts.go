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
// node JSON, node ip, tunnel port, cluster id, public ip ("" none), public
// port. A new node or a changed endpoint pushes a peers change (its delta)
// to every other node. → the node's current version.
var registerNodeScript = redis.NewScript(luaPush + `
local node = ARGV[4]
local old = redis.call('HGET', KEYS[1], node)
redis.call('HSET', KEYS[1], node, ARGV[5])
local changed = true
if old then
  local o = cjson.decode(old)
  changed = not (o.node_ip == ARGV[6] and tonumber(o.tunnel_port) == tonumber(ARGV[7]) and
    (o.public_ip or '') == ARGV[9] and tonumber(o.public_port or 0) == tonumber(ARGV[10]))
end
if changed then
  local others = {}
  for _, n in ipairs(redis.call('HKEYS', KEYS[1])) do
    if n ~= node then table.insert(others, n) end
  end
  local p = {cluster_id = ARGV[8], node_id = node, ip = ARGV[6], port = tonumber(ARGV[7])}
  if ARGV[9] ~= '' then
    p.public_ip = ARGV[9]
    if tonumber(ARGV[10]) ~= 0 then p.public_port = tonumber(ARGV[10]) end
  end
  pushTo(others, 'peers', '', cjson.encode({set = {p}}))
end
return tonumber(redis.call('GET', KEYS[2]) or '0')
`)

// deleteNode: KEYS nodes, nint:<node>, nseq:<node>, nstream:<node>. ARGV
// tag, maxlen, chan, node, cluster id. → 0 unknown, 1 deleted.
var deleteNodeScript = redis.NewScript(luaPush + `
local node = ARGV[4]
if redis.call('HDEL', KEYS[1], node) == 0 then return 0 end
for _, j in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('SREM', tag .. 'jint:' .. j, node)
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
pushTo(redis.call('HKEYS', KEYS[1]), 'peers', '', cjson.encode({del = {{cluster_id = ARGV[5], node_id = node}}}))
return 1
`)

// dropNodeInterest: KEYS nint:<node>, jint:<job>. ARGV node, job.
// → nodes still interested in job.
var dropNodeInterestScript = redis.NewScript(`
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
return redis.call('SCARD', KEYS[2])
`)

// luaPeerDiff is prepended to the scripts that change the endpoints held
// of other clusters. diff adds to set and del what turns the endpoint list
// oldJ of cluster src into newJ (JSON lists; nil or "": none).
const luaPeerDiff = `
local set, del = {}, {}
local function byNode(j)
  local m = {}
  if j and j ~= '' then for _, p in ipairs(cjson.decode(j)) do m[p.node_id] = p end end
  return m
end
local function diff(src, oldJ, newJ)
  local old, new = byNode(oldJ), byNode(newJ)
  for id, p in pairs(new) do
    local o = old[id]
    if not o or o.ip ~= p.ip or o.port ~= p.port or o.public_ip ~= p.public_ip or o.public_port ~= p.public_port then
      local q = {cluster_id = src, node_id = id, ip = p.ip, port = p.port, public_ip = p.public_ip, public_port = p.public_port}
      table.insert(set, q)
    end
  end
  for id in pairs(old) do
    if not new[id] then table.insert(del, {cluster_id = src, node_id = id}) end
  end
end
-- pushDiff pushes set and del, as one peers delta, to every node (nodes
-- hash key). → {n changed, {nodes pushed to}}.
local function pushDiff(nodes)
  if #set + #del == 0 then return {0, {}} end
  local d = {}
  if #set > 0 then d.set = set end
  if #del > 0 then d.del = del end
  return {#set + #del, pushTo(redis.call('HKEYS', nodes), 'peers', '', cjson.encode(d))}
end
`

// applyPeers: KEYS xpeers, xgen, nodes, xver. ARGV tag, maxlen, chan, own
// cluster id, root epoch ("" : no position, apply regardless), generation,
// "1" for a whole view (clusters not in it are dropped) or "0" for a
// scoped one, then cluster id, version, endpoints JSON ("" : not linked any
// more) triples. Replaces the endpoints held of each cluster given, unless
// a delta brought a newer version already, and pushes the difference to
// every node of this cluster. → {-1} older than a view applied already,
// {n, {nodes pushed to}} with n endpoints set or deleted.
var applyPeersScript = redis.NewScript(luaPush + luaPeerDiff + `
local own, epoch, gen, full = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7] == '1'
local same = false
if epoch ~= '' then
  local cur = redis.call('GET', KEYS[2])
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    same = string.sub(cur, 1, sp - 1) == epoch
    if same and gen < tonumber(string.sub(cur, sp + 1)) then return {-1} end
  end
  redis.call('SET', KEYS[2], epoch .. ' ' .. gen)
end
local given = {}
for i = 8, #ARGV, 3 do
  local src, ver, nj = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if src ~= own then
    given[src] = true
    local held = tonumber(redis.call('HGET', KEYS[4], src) or '-1')
    if nj == '' or not same or tonumber(ver) >= held then
      diff(src, redis.call('HGET', KEYS[1], src), nj)
      if nj == '' then
        redis.call('HDEL', KEYS[1], src)
        redis.call('HDEL', KEYS[4], src)
      else
        redis.call('HSET', KEYS[1], src, nj)
        redis.call('HSET', KEYS[4], src, ver)
      end
    end
  end
end
if full then
  for _, src in ipairs(redis.call('HKEYS', KEYS[1])) do
    if not given[src] then
      diff(src, redis.call('HGET', KEYS[1], src), '')
      redis.call('HDEL', KEYS[1], src)
      redis.call('HDEL', KEYS[4], src)
    end
  end
end
return pushDiff(KEYS[3])
`)

// applyPeersDelta: KEYS xpeers, xgen, nodes, xver. ARGV tag, maxlen, chan,
// root's delta JSON (peersDelta). Applies it to the endpoints held of its
// cluster if it is the next version of them, and pushes the difference to
// every node. → {-1} not the next version of what is held (another epoch,
// a gap, or a cluster not held): fetch instead; {n, {nodes pushed to}}.
var applyPeersDeltaScript = redis.NewScript(luaPush + luaPeerDiff + `
local d = cjson.decode(ARGV[4])
local cur = redis.call('GET', KEYS[2])
if not cur or string.sub(cur, 1, string.find(cur, ' ', 1, true) - 1) ~= d.epoch then return {-1} end
local src = d.cluster_id
local held = redis.call('HGET', KEYS[4], src)
if not held then return {-1} end
held = tonumber(held)
if d.version <= held then return {0, {}} end
if d.version ~= held + 1 then return {-1} end
local oldJ = redis.call('HGET', KEYS[1], src)
local m = byNode(oldJ)
if type(d.del) == 'table' then for _, n in ipairs(d.del) do m[n] = nil end end
if type(d.set) == 'table' then for _, p in ipairs(d.set) do m[p.node_id] = p end end
local ids, list = {}, {}
for id in pairs(m) do table.insert(ids, id) end
table.sort(ids)
for _, id in ipairs(ids) do
  local p = m[id]
  table.insert(list, {node_id = id, ip = p.ip, port = p.port, public_ip = p.public_ip, public_port = p.public_port})
end
local newJ = '[]'
if #list > 0 then newJ = cjson.encode(list) end
diff(src, oldJ, newJ)
redis.call('HSET', KEYS[1], src, newJ)
redis.call('HSET', KEYS[4], src, d.version)
return pushDiff(KEYS[3])
`)
