package control

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/redis/go-redis/v9"
)

// clusterStore is a cluster's state in Redis, all under the hash tag
// {c:<cluster id>} (clusterscripts.go): its nodes, the cached service
// entries, the nodes' interests and change streams, and the endpoints of
// the linked clusters (peerstore.go). Each method is one operation with
// typed arguments and results; the ones that push changes to nodes return
// the nodes to wake. It knows nothing of HTTP.
//
// Node streams are nstream:<node> with ids <seq>-0, where nseq:<node>
// counts.
type clusterStore struct {
	rdb       redis.UniversalClient
	tag       string // prefix{c:<id>}:
	wakeC     string // pub/sub channel of node wake-ups
	retention int    // changes each node's stream keeps
	clusterID string
}

// errNoNode: the node is not registered with this cluster.
var errNoNode = fmt.Errorf("node not registered: %w", api.ErrNotFound)

// nodeRecord is a registered node (a field of the nodes hash).
type nodeRecord struct {
	NodeID     string        `json:"node_id"`
	NodeIP     netip.Addr    `json:"node_ip"`
	TunnelPort int           `json:"tunnel_port"`
	PublicIP   netip.Addr    `json:"public_ip,omitzero"`
	PublicPort int           `json:"public_port,omitempty"`
	Location   *api.Location `json:"location,omitempty"`
	Subnet     netip.Prefix  `json:"subnet"`
	SubnetV6   netip.Prefix  `json:"subnet_v6"`
}

// endpoint is the node's tunnel endpoint as root's registry keeps it.
func (n nodeRecord) endpoint() api.Peer {
	return api.Peer{NodeID: n.NodeID, IP: n.NodeIP, Port: n.TunnelPort, PublicIP: n.PublicIP, PublicPort: n.PublicPort}
}

// tunnelTo is where peers send the node's tunnel traffic: its public
// address behind a NAT, else its own.
func (n nodeRecord) tunnelTo() (netip.Addr, int) {
	if n.PublicIP.IsValid() {
		return n.PublicIP, n.PublicPort
	}
	return n.NodeIP, n.TunnelPort
}

func (s *clusterStore) kNodes() string             { return s.tag + "nodes" }
func (s *clusterStore) kCache(job string) string   { return s.tag + "cache:" + job }
func (s *clusterStore) kIPIdx() string             { return s.tag + "ipidx" }
func (s *clusterStore) kJint(job string) string    { return s.tag + "jint:" + job }
func (s *clusterStore) kNint(node string) string   { return s.tag + "nint:" + node }
func (s *clusterStore) kNseq(node string) string   { return s.tag + "nseq:" + node }
func (s *clusterStore) kStream(node string) string { return s.tag + "nstream:" + node }
func (s *clusterStore) kJobs() string              { return s.tag + "jobs" }
func (s *clusterStore) kEpoch() string             { return s.tag + "epoch" }

// pushArgs are the first arguments of every script that pushes changes.
func (s *clusterStore) pushArgs(rest ...any) []any {
	return append([]any{s.tag, s.retention, s.wakeC}, rest...)
}

// nodesOf reads a script's list of nodes pushed to.
func nodesOf(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, n := range l {
		if s, ok := n.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// epoch returns the epoch of this cluster's Redis state, creating it on
// first use. It is read every time (one round trip, pipelined), so a Redis
// that lost its data gets a new epoch and every watcher re-syncs.
func (s *clusterStore) epoch(c context.Context) (string, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	pipe := s.rdb.Pipeline()
	pipe.SetNX(c, s.kEpoch(), hex.EncodeToString(b[:]), 0)
	get := pipe.Get(c, s.kEpoch())
	if _, err := pipe.Exec(c); err != nil {
		return "", redisErr("epoch", err)
	}
	return get.Val(), nil
}

// cacheSet caches e and pushes it to the nodes interested in it (unless
// it did not change); it returns those nodes.
func (s *clusterStore) cacheSet(c context.Context, e api.ServiceEntry) ([]string, error) {
	if e.InstanceList == nil {
		e.InstanceList = []api.Instance{}
	}
	b, _ := json.Marshal(e)
	res, err := cacheSetScript.Run(c, s.rdb, []string{s.kCache(e.JobName), s.kIPIdx(), s.kJint(e.JobName), s.kJobs()},
		s.pushArgs(e.JobName, b)...).Result()
	if err != nil {
		return nil, redisErr("cache service", err)
	}
	return nodesOf(res), nil
}

// cacheRemove drops the cached entry of job and pushes its removal to the
// nodes interested in it; it returns those nodes.
func (s *clusterStore) cacheRemove(c context.Context, job string) ([]string, error) {
	res, err := cacheRemoveScript.Run(c, s.rdb, []string{s.kCache(job), s.kIPIdx(), s.kJint(job), s.kJobs()},
		s.pushArgs(job)...).Result()
	if err != nil {
		return nil, redisErr("uncache service", err)
	}
	return nodesOf(res), nil
}

// cached returns the cached entry of job, if there is one.
func (s *clusterStore) cached(c context.Context, job string) (api.ServiceEntry, bool, error) {
	var e api.ServiceEntry
	b, err := s.rdb.Get(c, s.kCache(job)).Result()
	if errors.Is(err, redis.Nil) {
		return e, false, nil
	} else if err != nil {
		return e, false, redisErr("read cache", err)
	}
	if err := json.Unmarshal([]byte(b), &e); err != nil {
		return e, false, fmt.Errorf("cached %s: %w", job, err)
	}
	return e, true, nil
}

// jobOf returns the job of the cached entry holding ip, if any.
func (s *clusterStore) jobOf(c context.Context, ip netip.Addr) (string, bool, error) {
	job, err := s.rdb.HGet(c, s.kIPIdx(), ip.String()).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	return job, err == nil, redisErr("resolve ip", err)
}

// cachedJobs lists the jobs in the cache.
func (s *clusterStore) cachedJobs(c context.Context) ([]string, error) {
	jobs, err := s.rdb.SMembers(c, s.kJobs()).Result()
	return jobs, redisErr("cached jobs", err)
}

// addInterest records that node is interested in job.
func (s *clusterStore) addInterest(c context.Context, node, job string) error {
	pipe := s.rdb.TxPipeline()
	pipe.SAdd(c, s.kNint(node), job)
	pipe.SAdd(c, s.kJint(job), node)
	_, err := pipe.Exec(c)
	return redisErr("add interest", err)
}

// dropInterest forgets node's interest in job and returns how many nodes
// are still interested in it.
func (s *clusterStore) dropInterest(c context.Context, node, job string) (int, error) {
	left, err := dropNodeInterestScript.Run(c, s.rdb, []string{s.kNint(node), s.kJint(job)}, node, job).Int()
	return left, redisErr("drop interest", err)
}

// registerNode stores rec; a new node or a changed endpoint is a peers
// change for every other node. It returns the node's stream version.
func (s *clusterStore) registerNode(c context.Context, rec nodeRecord) (uint64, error) {
	b, _ := json.Marshal(rec)
	ver, err := registerNodeScript.Run(c, s.rdb, []string{s.kNodes(), s.kNseq(rec.NodeID)},
		s.pushArgs(rec.NodeID, b, rec.NodeIP.String(), rec.TunnelPort, s.clusterID, addrArg(rec.PublicIP), rec.PublicPort)...).Int64()
	if err != nil {
		return 0, redisErr("register node", err)
	}
	return uint64(ver), nil
}

// deleteNode removes a node, its interests and its stream; the other nodes
// get a peers change. errNoNode.
func (s *clusterStore) deleteNode(c context.Context, node string) error {
	n, err := deleteNodeScript.Run(c, s.rdb, []string{s.kNodes(), s.kNint(node), s.kNseq(node), s.kStream(node)},
		s.pushArgs(node, s.clusterID)...).Int()
	if err != nil {
		return redisErr("delete node", err)
	}
	if n == 0 {
		return errNoNode
	}
	return nil
}

// node returns the registered node. errNoNode.
func (s *clusterStore) node(c context.Context, node string) (nodeRecord, error) {
	var rec nodeRecord
	b, err := s.rdb.HGet(c, s.kNodes(), node).Result()
	if errors.Is(err, redis.Nil) {
		return rec, errNoNode
	} else if err != nil {
		return rec, redisErr("read node", err)
	}
	if err := json.Unmarshal([]byte(b), &rec); err != nil {
		return rec, fmt.Errorf("node %s: %w", node, err)
	}
	return rec, nil
}

// endpoints returns every node's tunnel endpoint, sorted by node id.
func (s *clusterStore) endpoints(c context.Context) ([]api.Peer, error) {
	all, err := s.rdb.HGetAll(c, s.kNodes()).Result()
	if err != nil {
		return nil, redisErr("read nodes", err)
	}
	eps := []api.Peer{}
	for _, b := range all {
		var rec nodeRecord
		if json.Unmarshal([]byte(b), &rec) == nil {
			eps = append(eps, rec.endpoint())
		}
	}
	slices.SortFunc(eps, func(a, b api.Peer) int { return strings.Compare(a.NodeID, b.NodeID) })
	return eps, nil
}

// version returns node's stream version. errNoNode.
func (s *clusterStore) version(c context.Context, node string) (uint64, error) {
	pipe := s.rdb.Pipeline()
	ex := pipe.HExists(c, s.kNodes(), node)
	seq := pipe.Get(c, s.kNseq(node))
	if _, err := pipe.Exec(c); err != nil && !errors.Is(err, redis.Nil) {
		return 0, redisErr("node version", err)
	}
	if !ex.Val() {
		return 0, errNoNode
	}
	v, _ := seq.Uint64()
	return v, nil
}

// peerList is the peer set of node self: every other node of this
// cluster, then the nodes of the linked clusters (clusterpeers.go), sorted
// by cluster and node id.
func (s *clusterStore) peerList(c context.Context, self string) ([]api.Peer, error) {
	pipe := s.rdb.Pipeline()
	own := pipe.HGetAll(c, s.kNodes())
	foreign := pipe.HGetAll(c, s.kXPeers())
	if _, err := pipe.Exec(c); err != nil {
		return nil, redisErr("read nodes", err)
	}
	peers := []api.Peer{}
	for id, b := range own.Val() {
		var rec nodeRecord
		if id != self && json.Unmarshal([]byte(b), &rec) == nil {
			p := rec.endpoint()
			p.ClusterID = s.clusterID
			peers = append(peers, p)
		}
	}
	for cid, b := range foreign.Val() {
		var ps []api.Peer
		if json.Unmarshal([]byte(b), &ps) != nil {
			continue
		}
		for _, p := range ps {
			p.ClusterID = cid
			peers = append(peers, p)
		}
	}
	slices.SortFunc(peers, func(a, b api.Peer) int {
		return cmp.Or(strings.Compare(a.ClusterID, b.ClusterID), strings.Compare(a.NodeID, b.NodeID))
	})
	return peers, nil
}

// maxWatchBatch bounds the changes of one watch answer.
const maxWatchBatch = 1000

// changes reads node's changes after version since (at most
// maxWatchBatch). With deltas, a peers change carries its delta; peers
// reports whether one has none (the watch then sends the whole set). gap
// reports that the stream no longer holds since+1: the node must re-sync.
func (s *clusterStore) changes(c context.Context, node string, since uint64, deltas bool) (out []api.Change, peers, gap bool, err error) {
	msgs, err := s.rdb.XRangeN(c, s.kStream(node), strconv.FormatUint(since+1, 10)+"-0", "+", maxWatchBatch).Result()
	if err != nil {
		return nil, false, false, redisErr("watch: read stream", err)
	}
	if len(msgs) == 0 || streamSeq(msgs[0].ID) != since+1 {
		return nil, false, true, nil // trimmed: the node missed changes
	}
	for _, m := range msgs {
		ch := api.Change{Version: streamSeq(m.ID)}
		ch.Type, _ = m.Values["t"].(string)
		ch.JobName, _ = m.Values["j"].(string)
		d, _ := m.Values["d"].(string)
		switch ch.Type {
		case api.ChangeService:
			var e api.ServiceEntry
			if json.Unmarshal([]byte(d), &e) == nil {
				ch.Service = &e
			}
		case api.ChangePeers:
			var pd api.PeerDelta
			if deltas && d != "" && json.Unmarshal([]byte(d), &pd) == nil {
				ch.PeerDelta = &pd
			} else {
				peers = true
			}
		}
		out = append(out, ch)
	}
	return out, peers, false, nil
}

func streamSeq(id string) uint64 {
	s, _, _ := strings.Cut(id, "-")
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

// interests returns the cached entries of the services node is interested
// in, by job name.
func (s *clusterStore) interests(c context.Context, node string) ([]api.ServiceEntry, error) {
	jobs, err := s.rdb.SMembers(c, s.kNint(node)).Result()
	if err != nil {
		return nil, redisErr("resync: interests", err)
	}
	out := []api.ServiceEntry{}
	if len(jobs) == 0 {
		return out, nil
	}
	slices.Sort(jobs)
	keys := make([]string, len(jobs))
	for i, j := range jobs {
		keys[i] = s.kCache(j)
	}
	vals, err := s.rdb.MGet(c, keys...).Result()
	if err != nil {
		return nil, redisErr("resync: entries", err)
	}
	for _, v := range vals {
		b, ok := v.(string)
		var e api.ServiceEntry
		if ok && json.Unmarshal([]byte(b), &e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// addrArg is a for a script argument: "" when unset.
func addrArg(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
