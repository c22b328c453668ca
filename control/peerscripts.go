package control

import "github.com/redis/go-redis/v9"

// The cross-cluster peer registry (docs/design.md, "Peers across
// clusters"). Root's keys of it, all under the tag {r}, so every script
// below runs on one slot:
//
//	ep:<cid>    hash  node id → endpoint JSON {node_id, ip, port[, public_ip, public_port]}
//	epv:<cid>   int   version of ep:<cid>, raised with every change of it
//	int:<id>    set   clusters interested in service id   } the link graph: a copy of
//	cint:<cid>  set   services cluster cid is interested in } the shards' int:<id> and
//	hcl:<id>    hash  cluster → 1 if it hosts service id    } hcl:<id> (rootstore.go),
//	lv          hash  service id → version of its links copied } kept by syncLinks
//	pgen:<cid>  int   generation of cid's peer view: raised with every hint to cid
//	epoch       str   random id of root's Redis state (a lost state restarts pgen, epv)
//
// Two clusters are linked when one is interested in a service that has an
// instance in the other (int:<id>, hcl:<id>). A cluster's nodes accept
// tunnel traffic from its own nodes and from the nodes of every linked
// cluster. Scripts that change what a cluster should hold return hints:
// pairs (cluster JSON, scope), scope being a comma-separated list of the
// clusters whose endpoints to fetch again, or "" for all of them; root
// posts each to the cluster's /api/net/peers/update. A change of endpoints
// also hands the linked clusters the change itself (a versioned delta), so
// they fetch only when they miss one.

// luaLinks is prepended to the scripts that compute links or hints; tag is
// root's key tag ("<prefix>{r}:").
const luaLinks = `
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
-- candidates adds to out the clusters service sid links cid with: its
-- hosts and, if cid hosts it too, the clusters interested in it.
local function candidates(tag, cid, sid, out)
  local here = false
  for _, h in ipairs(redis.call('HKEYS', tag .. 'hcl:' .. sid)) do
    if h == cid then here = true else out[h] = true end
  end
  if here then
    for _, c in ipairs(redis.call('SMEMBERS', tag .. 'int:' .. sid)) do
      if c ~= cid then out[c] = true end
    end
  end
  return out
end
-- linkset returns {cluster = true} of the registered clusters linked with
-- cid: what each service cid is interested in links it with. A cluster is
-- interested in every service its nodes run (a node's report makes it
-- so), so the services cid hosts are among its interests.
local function linkset(tag, cid)
  local out = {}
  for _, s in ipairs(redis.call('SMEMBERS', tag .. 'cint:' .. cid)) do candidates(tag, cid, s, out) end
  for c in pairs(out) do
    if redis.call('HEXISTS', tag .. 'clusters', c) == 0 then out[c] = nil end
  end
  return out
end
-- interestHints hints both ends of every pair that cid's interest in sid
-- links and that is not linked otherwise. Called before the interest is
-- added, or after it is dropped: linked is then the state without it.
local function interestHints(tag, cid, sid, hints)
  local cand = candidates(tag, cid, sid, {})
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
-- rootEpoch is root's state epoch, fresh if it has none yet.
local function rootEpoch(tag, fresh)
  local e = redis.call('GET', tag .. 'epoch')
  if not e then
    e = fresh
    redis.call('SET', tag .. 'epoch', e)
  end
  return e
end
-- endpointHints hints every cluster linked with cid to fetch cid again.
local function endpointHints(tag, cid, out)
  local hints = {}
  for a in pairs(linkset(tag, cid)) do hint(hints, a, cid) end
  return hintReply(tag, hints, out)
end
`

// changeEndpoints: KEYS ep:<cid>. ARGV tag, cid, a fresh epoch (used if
// root has none yet), mode, then: for "put" node id, endpoint JSON pairs;
// for "del" one node id; for "replace" the cluster's whole list as pairs.
// → {0} nothing changed, {1, delta JSON, hints...}: the delta is
// {cluster_id, epoch, version, set?: [endpoint], del?: [node id]}.
var changeEndpointsScript = redis.NewScript(luaLinks + `
local tag, cid, mode = ARGV[1], ARGV[2], ARGV[4]
local set, del = {}, {}
if mode == 'del' then
  if redis.call('HDEL', KEYS[1], ARGV[5]) == 1 then table.insert(del, ARGV[5]) end
else
  if mode == 'replace' then
    local want = {}
    for i = 5, #ARGV, 2 do want[ARGV[i]] = true end
    for _, n in ipairs(redis.call('HKEYS', KEYS[1])) do
      if not want[n] then
        redis.call('HDEL', KEYS[1], n)
        table.insert(del, n)
      end
    end
  end
  for i = 5, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
      table.insert(set, cjson.decode(ARGV[i + 1]))
    end
  end
end
if #set + #del == 0 then return {0} end
local d = {cluster_id = cid, epoch = rootEpoch(tag, ARGV[3]), version = redis.call('INCR', tag .. 'epv:' .. cid)}
if #set > 0 then d.set = set end
if #del > 0 then d.del = del end
return endpointHints(tag, cid, {1, cjson.encode(d)})
`)

// peerView: KEYS clusters. ARGV tag, cid, scope ("" all, else comma
// separated cluster ids), a fresh epoch (used if root has none yet).
// → {-1} cid not registered, {1, epoch, generation, cid, version,
// {endpoint JSON...}, ...} for every linked cluster (in the scope), sorted.
var peerViewScript = redis.NewScript(luaLinks + `
local tag, cid = ARGV[1], ARGV[2]
if redis.call('HEXISTS', KEYS[1], cid) == 0 then return {-1} end
local epoch = rootEpoch(tag, ARGV[4])
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
  table.insert(out, redis.call('GET', tag .. 'epv:' .. c) or '0')
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

// syncLinks: KEYS int:<id>, hcl:<id>, lv. ARGV tag, id, version, then
// (cluster, interested 0|1, hosts 0|1) for each cluster whose relation to
// service id changed in its shard. Copies a newer relation into the link
// graph and hints both ends of every link that appears or goes (an older
// version, from a replica that was slower, is ignored). → {hints...}.
var syncLinksScript = redis.NewScript(luaLinks + `
local tag, id, ver = ARGV[1], ARGV[2], tonumber(ARGV[3])
if ver <= tonumber(redis.call('HGET', KEYS[3], id) or '-1') then return {} end
redis.call('HSET', KEYS[3], id, ARGV[3])
local hints = {}
for i = 4, #ARGV, 3 do
  local c, wantInt, wantHost = ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2] == '1'
  local isInt = redis.call('SISMEMBER', KEYS[1], c) == 1
  if wantInt and not isInt then
    interestHints(tag, c, id, hints)
    redis.call('SADD', KEYS[1], c)
    redis.call('SADD', tag .. 'cint:' .. c, id)
  elseif isInt and not wantInt then
    redis.call('SREM', KEYS[1], c)
    redis.call('SREM', tag .. 'cint:' .. c, id)
    interestHints(tag, c, id, hints)
  end
  if wantHost ~= (redis.call('HEXISTS', KEYS[2], c) == 1) then
    if wantHost then redis.call('HSET', KEYS[2], c, 1) else redis.call('HDEL', KEYS[2], c) end
    for _, a in ipairs(redis.call('SMEMBERS', KEYS[1])) do
      if a ~= c then
        hint(hints, a, c)
        hint(hints, c, a)
      end
    end
  end
end
return hintReply(tag, hints, {})
`)

// deleteCluster: KEYS clusters, cint:<cid>, ep:<cid>. ARGV cluster id, int
// key prefix, key tag. The clusters linked with it are hinted: its nodes
// leave their peer sets. → {0} unknown, {1, {services it was interested
// in}, hints...} deleted (with its interests in the link graph and its
// endpoints; the shards' copies of its interests are the caller's).
var deleteClusterScript = redis.NewScript(luaLinks + `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {0} end
local hints = {}
for a in pairs(linkset(ARGV[3], ARGV[1])) do hint(hints, a, ARGV[1]) end
redis.call('HDEL', KEYS[1], ARGV[1])
local svcs = redis.call('SMEMBERS', KEYS[2])
for _, s in ipairs(svcs) do
  redis.call('SREM', ARGV[2] .. s, ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3])
return hintReply(ARGV[3], hints, {1, svcs})
`)

// claimJob: KEYS jobs. ARGV job, id. → {1} the job is id's now, {0} it
// was already, {-2, holder} another id holds it.
var claimJobScript = redis.NewScript(`
local h = redis.call('HGET', KEYS[1], ARGV[1])
if h == ARGV[2] then return {0} end
if h then return {-2, h} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1}
`)

// swapJob: KEYS jobs. ARGV job, expected holder, new holder ("" : drop).
// → 1 if the holder was the expected one (and is now the new one).
var swapJobScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
`)
