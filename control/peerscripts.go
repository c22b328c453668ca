package control

import "github.com/redis/go-redis/v9"

// The cross-cluster peer registry (docs/design.md, "Peers across
// clusters"). Root's keys, all under the {r} tag like the rest of root's
// state, so every script below runs on one slot:
//
//	ep:<cid>    hash  node id → endpoint JSON {node_id, ip, port[, public_ip, public_port]}
//	hcl:<id>    set   clusters hosting an instance of service id (instance cluster_id)
//	rehost      set   service ids whose hcl set must be recomputed (rehostScript)
//	pgen:<cid>  int   generation of cid's peer view: raised with every hint to cid
//	epoch       str   random id of root's Redis state (a lost state restarts pgen)
//
// Two clusters are linked when one is interested in a service that has an
// instance in the other (int:<id>, hcl:<id>). A cluster's nodes accept
// tunnel traffic from its own nodes and from the nodes of every linked
// cluster. Scripts that change what a cluster should hold return hints:
// pairs (cluster JSON, scope), scope being a comma-separated list of the
// clusters whose endpoints to fetch again, or "" for all of them; root
// posts each to the cluster's /api/net/peers/update.

// luaLinks is prepended to the scripts that compute links or hints; tag is
// root's key tag ("<prefix>{r}:").
const luaLinks = `
-- linkset returns {cluster = true} of the registered clusters linked with
-- cid: the hosts of the services cid is interested in and, for those it
-- hosts itself, the clusters interested in them. A cluster is interested
-- in every service its nodes run (a node's report makes it so), so the
-- services cid hosts are among its interests.
local function linkset(tag, cid)
  local out = {}
  for _, s in ipairs(redis.call('SMEMBERS', tag .. 'cint:' .. cid)) do
    local here = false
    for _, h in ipairs(redis.call('SMEMBERS', tag .. 'hcl:' .. s)) do
      if h == cid then here = true else out[h] = true end
    end
    if here then
      for _, c in ipairs(redis.call('SMEMBERS', tag .. 'int:' .. s)) do
        if c ~= cid then out[c] = true end
      end
    end
  end
  for c in pairs(out) do
    if redis.call('HEXISTS', tag .. 'clusters', c) == 0 then out[c] = nil end
  end
  return out
end
-- hint records that target must fetch scope's endpoints again (scope nil:
-- all of its peers).
local function hint(hints, target, scope)
  local h = hints[target]
  if not h then
    h = {scopes = {}, full = false}
    hints[target] = h
  end
  if scope == nil then h.full = true else h.scopes[scope] = true end
end
-- candidates returns the clusters that service sid links cid with.
local function candidates(tag, cid, sid)
  local out, here = {}, false
  for _, h in ipairs(redis.call('SMEMBERS', tag .. 'hcl:' .. sid)) do
    if h == cid then here = true else out[h] = true end
  end
  if here then
    for _, c in ipairs(redis.call('SMEMBERS', tag .. 'int:' .. sid)) do
      if c ~= cid then out[c] = true end
    end
  end
  return out
end
-- interestHints hints both ends of every pair that cid's interest in sid
-- links and that is not linked otherwise. Called before the interest is
-- added, or after it is dropped: linked is then the state without it.
local function interestHints(tag, cid, sid, hints)
  local cand = candidates(tag, cid, sid)
  if next(cand) == nil then return end
  local linked = linkset(tag, cid)
  for x in pairs(cand) do
    if not linked[x] then
      hint(hints, cid, x)
      hint(hints, x, cid)
    end
  end
end
-- hintReply appends (cluster JSON, scope) for each hinted registered
-- cluster to out, raising its peer generation.
local function hintReply(tag, hints, out)
  local targets = {}
  for t in pairs(hints) do table.insert(targets, t) end
  table.sort(targets)
  for _, t in ipairs(targets) do
    local ci = redis.call('HGET', tag .. 'clusters', t)
    if ci then
      redis.call('INCR', tag .. 'pgen:' .. t)
      local h, s = hints[t], ''
      if not h.full then
        local l = {}
        for sc in pairs(h.scopes) do table.insert(l, sc) end
        table.sort(l)
        s = table.concat(l, ',')
      end
      table.insert(out, ci)
      table.insert(out, s)
    end
  end
  return out
end
-- endpointHints hints every cluster linked with cid to fetch cid again.
local function endpointHints(tag, cid, out)
  local hints = {}
  for a in pairs(linkset(tag, cid)) do hint(hints, a, cid) end
  return hintReply(tag, hints, out)
end
`

// putEndpoint: KEYS ep:<cid>. ARGV tag, cid, node id, endpoint JSON.
// → {0} unchanged, {1, hints...} stored.
var putEndpointScript = redis.NewScript(luaLinks + `
local tag, cid = ARGV[1], ARGV[2]
if redis.call('HGET', KEYS[1], ARGV[3]) == ARGV[4] then return {0} end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return endpointHints(tag, cid, {1})
`)

// deleteEndpoint: KEYS ep:<cid>. ARGV tag, cid, node id.
// → {0} unknown, {1, hints...} deleted.
var deleteEndpointScript = redis.NewScript(luaLinks + `
local tag, cid = ARGV[1], ARGV[2]
if redis.call('HDEL', KEYS[1], ARGV[3]) == 0 then return {0} end
return endpointHints(tag, cid, {1})
`)

// replaceEndpoints: KEYS ep:<cid>. ARGV tag, cid, then node id, endpoint
// JSON pairs: the cluster's whole list. → {0} unchanged, {1, hints...}.
var replaceEndpointsScript = redis.NewScript(luaLinks + `
local tag, cid = ARGV[1], ARGV[2]
local want, n = {}, 0
for i = 3, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1]; n = n + 1 end
local cur = redis.call('HGETALL', KEYS[1])
local same = #cur == 2 * n
for i = 1, #cur, 2 do
  if want[cur[i]] ~= cur[i + 1] then same = false end
end
if same then return {0} end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return endpointHints(tag, cid, {1})
`)

// peerView: KEYS clusters. ARGV tag, cid, scope ("" all, else comma
// separated cluster ids), a fresh epoch (used if root has none yet).
// → {-1} cid not registered, {1, epoch, generation, cid, {endpoint JSON...}, ...}
// for every linked cluster (in the scope), sorted.
var peerViewScript = redis.NewScript(luaLinks + `
local tag, cid = ARGV[1], ARGV[2]
if redis.call('HEXISTS', KEYS[1], cid) == 0 then return {-1} end
local epoch = redis.call('GET', tag .. 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', tag .. 'epoch', epoch)
end
local gen = redis.call('GET', tag .. 'pgen:' .. cid) or '0'
local linked = linkset(tag, cid)
local list = {}
if ARGV[3] == '' then
  for c in pairs(linked) do table.insert(list, c) end
else
  for c in string.gmatch(ARGV[3], '[^,]+') do
    if linked[c] then table.insert(list, c) end
  end
end
table.sort(list)
local out = {1, epoch, gen}
for _, c in ipairs(list) do
  table.insert(out, c)
  table.insert(out, redis.call('HVALS', tag .. 'ep:' .. c))
end
return out
`)

// registerCluster: KEYS clusters. ARGV tag, cid, cluster JSON. A cluster
// that was not registered becomes linkable: the clusters it links with are
// hinted (it fetches its own view once registered). → {0 | 1, hints...}.
var registerClusterScript = redis.NewScript(luaLinks + `
local tag, cid = ARGV[1], ARGV[2]
local was = redis.call('HEXISTS', KEYS[1], cid)
redis.call('HSET', KEYS[1], cid, ARGV[3])
if was == 1 then return {0} end
return endpointHints(tag, cid, {1})
`)

// rehost: KEYS svc:<id>, hcl:<id>, int:<id>, rehost. ARGV tag, id.
// Recomputes the clusters hosting the service from its instances and, if
// they changed, hints both ends of every pair the change may link or
// unlink. → {hints...}.
var rehostScript = redis.NewScript(luaLinks + `
local tag, id = ARGV[1], ARGV[2]
redis.call('SREM', KEYS[4], id)
local now = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'i:' then
    local ok, inst = pcall(cjson.decode, redis.call('HGET', KEYS[1], f))
    if ok and type(inst) == 'table' and type(inst.cluster_id) == 'string' and inst.cluster_id ~= '' then
      now[inst.cluster_id] = true
    end
  end
end
local changed = {}
for _, c in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if now[c] then now[c] = nil else
    table.insert(changed, c)
    redis.call('SREM', KEYS[2], c)
  end
end
for c in pairs(now) do
  table.insert(changed, c)
  redis.call('SADD', KEYS[2], c)
end
local hints = {}
if #changed > 0 then
  local int = redis.call('SMEMBERS', KEYS[3])
  for _, b in ipairs(changed) do
    for _, a in ipairs(int) do
      if a ~= b then
        hint(hints, a, b)
        hint(hints, b, a)
      end
    end
  end
end
return hintReply(tag, hints, {})
`)

// dropInterest: KEYS int:<id>, cint:<cid>. ARGV tag, id, cid.
// → {hints...}.
var dropInterestScript = redis.NewScript(luaLinks + `
local tag, id, cid = ARGV[1], ARGV[2], ARGV[3]
redis.call('SREM', KEYS[1], cid)
if redis.call('SREM', KEYS[2], id) == 0 then return {} end
local hints = {}
interestHints(tag, cid, id, hints)
return hintReply(tag, hints, {})
`)
