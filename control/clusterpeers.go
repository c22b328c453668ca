package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/valyala/fasthttp"
)

// A cluster's side of the cross-cluster peer registry (peerscripts.go):
// it reports its nodes' endpoints to root, holds the endpoints of the
// clusters root links it with, and pushes every change of them to its
// nodes as a peers delta through their watch. Keys, in the cluster's slot:
//
//	xpeers  hash    cluster id → JSON list of that cluster's endpoints
//	xver    hash    cluster id → root's version of that list (epv)
//	xgen    string  "<root epoch> <generation>" of the newest view applied

func (c *Cluster) kXPeers() string { return c.tag + "xpeers" }
func (c *Cluster) kXVer() string   { return c.tag + "xver" }
func (c *Cluster) kXGen() string   { return c.tag + "xgen" }

func (c *Cluster) peerKeys() []string {
	return []string{c.kXPeers(), c.kXGen(), c.kNodes(), c.kXVer()}
}

// errStalePeers: root's answer is older than a view applied already (a
// concurrent fetch was faster); fetch again.
var errStalePeers = errors.New("peer view older than the one held")

// endpoint is the node's tunnel endpoint as root's registry keeps it.
func (n nodeRecord) endpoint() nodeclient.Peer {
	return nodeclient.Peer{NodeID: n.NodeID, IP: n.NodeIP, Port: n.TunnelPort}
}

// peersUpdate is root's hint (POST /api/net/peers/update, body {},
// {"clusters": [ids]} or, for a change of one cluster's endpoints, also
// "delta"): the endpoints this cluster holds of those clusters (of every
// linked one when none are named) may be out of date. A delta that follows
// the version held is applied as it is; otherwise the clusters named are
// fetched. The push to the nodes happens before the answer, so root
// retries a hint that failed.
func (c *Cluster) peersUpdate(ctx *fasthttp.RequestCtx, _ []string) error {
	var in peersHint
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	for i, id := range in.Clusters {
		if err := validID(fmt.Sprintf("clusters[%d]", i), id); err != nil {
			return err
		}
	}
	n, err := -1, error(nil)
	if d := in.Delta; d != nil && d.ClusterID != c.cfg.ClusterID {
		if err := validID("delta.cluster_id", d.ClusterID); err != nil {
			return err
		}
		n, err = c.applyDelta(ctx, d)
		if err != nil {
			return err
		}
		if n < 0 && in.Clusters == nil {
			in.Clusters = []string{d.ClusterID}
		}
	}
	if n < 0 {
		n, err = c.syncPeers(ctx, in.Clusters)
	}
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, map[string]any{"cluster_id": c.cfg.ClusterID, "changed": n})
	return nil
}

// syncPeers fetches the endpoints of scope (nil: every linked cluster)
// from root and applies them, returning how many endpoints changed.
func (c *Cluster) syncPeers(ctx context.Context, scope []string) (int, error) {
	for attempt := 0; ; attempt++ {
		v, err := c.root.peers(ctx, c.cfg.ClusterID, scope)
		if errors.Is(err, ErrNotFound) && scope == nil {
			// Not registered at root (any more): linked with no one.
			v, err = peerView{Clusters: []clusterPeers{}}, nil
		}
		if err != nil {
			return 0, err
		}
		n, err := c.applyPeers(ctx, v, scope)
		if !errors.Is(err, errStalePeers) || attempt == 2 {
			return n, err
		}
	}
}

// applyPeers stores view v of scope (nil: a whole view) and pushes what
// changed to this cluster's nodes.
func (c *Cluster) applyPeers(ctx context.Context, v peerView, scope []string) (int, error) {
	full := "0"
	if scope == nil {
		full = "1"
	}
	args := c.pushArgs(c.cfg.ClusterID, v.Epoch, v.Generation, full)
	got := map[string]bool{}
	for _, cp := range v.Clusters {
		if cp.ClusterID == c.cfg.ClusterID {
			continue
		}
		got[cp.ClusterID] = true
		nodes := cp.Nodes
		if nodes == nil {
			nodes = []nodeclient.Peer{}
		}
		b, _ := json.Marshal(nodes)
		args = append(args, cp.ClusterID, cp.Version, string(b))
	}
	for _, s := range scope {
		if !got[s] {
			args = append(args, s, 0, "") // not linked (any more)
		}
	}
	rc, cancel := c.rctx(ctx)
	defer cancel()
	res, err := applyPeersScript.Run(rc, c.rdb, c.peerKeys(), args...).Slice()
	if err != nil {
		return 0, redisErr("apply peers", err)
	}
	n, _ := res[0].(int64)
	if n < 0 {
		c.peerUpdates.WithLabelValues("stale").Inc()
		return 0, errStalePeers
	}
	c.peerUpdates.WithLabelValues("fetch").Inc()
	if len(res) > 1 {
		nodes, _ := res[1].([]any)
		c.wakeAll(nodes)
	}
	return int(n), nil
}

// applyDelta applies root's delta of one cluster's endpoints; -1 means it
// does not follow what is held (fetch instead).
func (c *Cluster) applyDelta(ctx context.Context, d *peersDelta) (int, error) {
	b, _ := json.Marshal(d)
	rc, cancel := c.rctx(ctx)
	defer cancel()
	res, err := applyPeersDeltaScript.Run(rc, c.rdb, c.peerKeys(), c.pushArgs(string(b))...).Slice()
	if err != nil {
		return 0, redisErr("apply peers delta", err)
	}
	n, _ := res[0].(int64)
	if n >= 0 {
		c.peerUpdates.WithLabelValues("delta").Inc()
	}
	if len(res) > 1 {
		nodes, _ := res[1].([]any)
		c.wakeAll(nodes)
	}
	return int(n), nil
}

// pushNodes reports every node's endpoint to root, replacing what root
// holds of this cluster.
func (c *Cluster) pushNodes(ctx context.Context) error {
	rc, cancel := c.rctx(ctx)
	all, err := c.rdb.HGetAll(rc, c.kNodes()).Result()
	cancel()
	if err != nil {
		return redisErr("read nodes", err)
	}
	body := endpointsBody{Nodes: []nodeclient.Peer{}}
	for _, s := range all {
		var rec nodeRecord
		if json.Unmarshal([]byte(s), &rec) == nil {
			body.Nodes = append(body.Nodes, rec.endpoint())
		}
	}
	slices.SortFunc(body.Nodes, func(a, b nodeclient.Peer) int { return strings.Compare(a.NodeID, b.NodeID) })
	return c.root.putNodes(ctx, c.cfg.ClusterID, body)
}

// peerSyncer syncs peers with root now and then every PeerSync until the
// cluster closes: the repair of hints root could not deliver.
func (c *Cluster) peerSyncer() {
	for {
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.RootTimeout)
		err := c.pushNodes(ctx)
		if err == nil {
			_, err = c.syncPeers(ctx, nil)
		}
		cancel()
		if err != nil && c.ctx.Err() == nil {
			c.log.Warn("peer sync with root", "err", err)
		}
		if c.cfg.PeerSync < 0 {
			return
		}
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(c.cfg.PeerSync):
		}
	}
}

func (rc *rootClient) putNode(ctx context.Context, cid string, p nodeclient.Peer) error {
	return rc.do(ctx, "PUT", "/api/net/cluster/"+url.PathEscape(cid)+"/nodes/"+url.PathEscape(p.NodeID), p, nil)
}

func (rc *rootClient) deleteNode(ctx context.Context, cid, node string) error {
	return rc.do(ctx, "DELETE", "/api/net/cluster/"+url.PathEscape(cid)+"/nodes/"+url.PathEscape(node), nil, nil)
}

func (rc *rootClient) putNodes(ctx context.Context, cid string, b endpointsBody) error {
	return rc.do(ctx, "PUT", "/api/net/cluster/"+url.PathEscape(cid)+"/nodes", b, nil)
}

func (rc *rootClient) peers(ctx context.Context, cid string, scope []string) (peerView, error) {
	var v peerView
	path := "/api/net/cluster/" + url.PathEscape(cid) + "/peers"
	if scope != nil {
		path += "?of=" + url.QueryEscape(strings.Join(scope, ","))
	}
	err := rc.do(ctx, "GET", path, nil, &v)
	return v, err
}
