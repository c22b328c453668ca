package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/oakwire/oakwire/api"
)

// The store's operations on the cross-cluster peer registry
// (peerscripts.go has the keys and the rules): root's endpoint lists,
// links and hints; a cluster's view of the linked clusters' endpoints.

// endpointsMode is how changeEndpoints changes a cluster's list.
type endpointsMode string

const (
	endpointsPut     endpointsMode = "put"     // set the endpoints given
	endpointsDel     endpointsMode = "del"     // delete the one node given
	endpointsReplace endpointsMode = "replace" // the list is the endpoints given
)

// freshEpoch is a random epoch, used by the scripts if root has none yet.
func freshEpoch() string {
	var e [8]byte
	_, _ = rand.Read(e[:])
	return hex.EncodeToString(e[:])
}

// changeEndpoints changes cluster cid's endpoint list and returns the
// change as a versioned delta (nil: nothing changed) and the hints for
// the clusters linked with cid.
func (s *rootStore) changeEndpoints(c context.Context, cid string, mode endpointsMode, eps []api.Peer) (*api.EndpointsDelta, []hint, error) {
	args := []any{s.tag, cid, freshEpoch(), string(mode)}
	for _, ep := range eps {
		if mode == endpointsDel {
			args = append(args, ep.NodeID)
			continue
		}
		b, _ := json.Marshal(ep)
		args = append(args, ep.NodeID, string(b))
	}
	res, err := changeEndpointsScript.Run(c, s.rdb, []string{s.kEndpoints(cid)}, args...).Slice()
	if err != nil {
		return nil, nil, redisErr("node endpoints", err)
	}
	if code(res) == 0 {
		return nil, nil, nil
	}
	d, _ := res[1].(string)
	var delta api.EndpointsDelta
	if err := json.Unmarshal([]byte(d), &delta); err != nil {
		return nil, nil, fmt.Errorf("node endpoints: delta: %w", err)
	}
	return &delta, hintsOf(res[2:]), nil
}

// peerView returns the endpoints of the clusters linked with cid (of
// those in scope; nil: all), with the view's position. errNoCluster.
func (s *rootStore) peerView(c context.Context, cid string, scope []string) (api.PeerView, error) {
	res, err := peerViewScript.Run(c, s.rdb, []string{s.kClusters()}, s.tag, cid, strings.Join(scope, ","), freshEpoch()).Slice()
	if err != nil {
		return api.PeerView{}, redisErr("peers", err)
	}
	if code(res) == -1 {
		return api.PeerView{}, errNoCluster
	}
	res = res[1:]
	v := api.PeerView{ClusterID: cid, Clusters: []api.ClusterPeers{}}
	if len(res) < 2 {
		return v, fmt.Errorf("peers: script reply of %d values", len(res))
	}
	v.Epoch, _ = res[0].(string)
	gs, _ := res[1].(string)
	v.Generation, _ = strconv.ParseUint(gs, 10, 64)
	for i := 2; i+2 < len(res); i += 3 {
		cp := api.ClusterPeers{Nodes: []api.Peer{}}
		cp.ClusterID, _ = res[i].(string)
		vs, _ := res[i+1].(string)
		cp.Version, _ = strconv.ParseUint(vs, 10, 64)
		eps, _ := res[i+2].([]any)
		for _, e := range eps {
			es, _ := e.(string)
			var pe api.Peer
			if err := json.Unmarshal([]byte(es), &pe); err != nil {
				return v, fmt.Errorf("peers: endpoint of %s: %w", cp.ClusterID, err)
			}
			cp.Nodes = append(cp.Nodes, pe)
		}
		slices.SortFunc(cp.Nodes, func(a, b api.Peer) int { return strings.Compare(a.NodeID, b.NodeID) })
		v.Clusters = append(v.Clusters, cp)
	}
	return v, nil
}

// A cluster's keys of the endpoints it holds of the clusters root links it
// with, in the cluster's slot:
//
//	xpeers  hash    cluster id → JSON list of that cluster's endpoints
//	xver    hash    cluster id → root's version of that list (epv)
//	xgen    string  "<root epoch> <generation>" of the newest view applied

func (s *clusterStore) kXPeers() string { return s.tag + "xpeers" }
func (s *clusterStore) kXVer() string   { return s.tag + "xver" }
func (s *clusterStore) kXGen() string   { return s.tag + "xgen" }

func (s *clusterStore) peerKeys() []string {
	return []string{s.kXPeers(), s.kXGen(), s.kNodes(), s.kXVer()}
}

// errStalePeers: root's answer is older than a view applied already (a
// concurrent fetch was faster); fetch again.
var errStalePeers = errors.New("peer view older than the one held")

// applyPeers stores view v of scope (nil: a whole view: clusters not in
// it are dropped) and pushes what changed to every node; it returns how
// many endpoints changed and the nodes pushed to. errStalePeers.
func (s *clusterStore) applyPeers(c context.Context, v api.PeerView, scope []string) (int, []string, error) {
	full := "0"
	if scope == nil {
		full = "1"
	}
	args := s.pushArgs(s.clusterID, v.Epoch, v.Generation, full)
	got := map[string]bool{}
	for _, cp := range v.Clusters {
		if cp.ClusterID == s.clusterID {
			continue
		}
		got[cp.ClusterID] = true
		nodes := cp.Nodes
		if nodes == nil {
			nodes = []api.Peer{}
		}
		b, _ := json.Marshal(nodes)
		args = append(args, cp.ClusterID, cp.Version, string(b))
	}
	for _, sc := range scope {
		if !got[sc] {
			args = append(args, sc, 0, "") // not linked (any more)
		}
	}
	res, err := applyPeersScript.Run(c, s.rdb, s.peerKeys(), args...).Slice()
	if err != nil {
		return 0, nil, redisErr("apply peers", err)
	}
	if code(res) < 0 {
		return 0, nil, errStalePeers
	}
	return int(code(res)), pushedTo(res), nil
}

// applyDelta applies root's delta of one cluster's endpoints if it is the
// next version of what is held, and pushes the difference to every node;
// it returns how many endpoints changed (-1: not the next version, fetch
// instead) and the nodes pushed to.
func (s *clusterStore) applyDelta(c context.Context, d *api.EndpointsDelta) (int, []string, error) {
	b, _ := json.Marshal(d)
	res, err := applyPeersDeltaScript.Run(c, s.rdb, s.peerKeys(), s.pushArgs(string(b))...).Slice()
	if err != nil {
		return 0, nil, redisErr("apply peers delta", err)
	}
	return int(code(res)), pushedTo(res), nil
}

// pushedTo reads the nodes of a {n, {nodes pushed to}} reply.
func pushedTo(res []any) []string {
	if len(res) < 2 {
		return nil
	}
	return nodesOf(res[1])
}
