package control

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// A cluster's side of the cross-cluster peer registry (peerscripts.go,
// peerstore.go): it reports its nodes' endpoints to root, holds the
// endpoints of the clusters root links it with, and pushes every change of
// them to its nodes as a peers delta through their watch.

// POST /api/net/peers/update, body {}, {"clusters": [ids]} or, for a change
// of one cluster's endpoints, also "delta": root's hint that the endpoints
// this cluster holds of those clusters (of every linked one when none are
// named) may be out of date. A delta that follows the version held is
// applied as it is; otherwise the clusters named are fetched. The push to
// the nodes happens before the answer, so root retries a hint that failed.
func (c *Cluster) peersUpdate(ctx *fasthttp.RequestCtx, _ []string) error {
	var in api.PeersHint
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
		if n, err = c.applyDelta(ctx, d); err != nil {
			return err
		}
		if n < 0 && in.Clusters == nil {
			in.Clusters = []string{d.ClusterID}
		}
	}
	if n < 0 {
		if n, err = c.syncPeers(ctx, in.Clusters); err != nil {
			return err
		}
	}
	writeJSON(ctx, 200, api.PeersUpdated{Changed: n, ClusterID: c.cfg.ClusterID})
	return nil
}

// syncPeers fetches the endpoints of scope (nil: every linked cluster)
// from root and applies them, returning how many endpoints changed.
func (c *Cluster) syncPeers(ctx context.Context, scope []string) (int, error) {
	for attempt := 0; ; attempt++ {
		v, err := c.root.peers(ctx, c.cfg.ClusterID, scope)
		if errors.Is(err, api.ErrNotFound) && scope == nil {
			// Not registered at root (any more): linked with no one.
			v, err = api.PeerView{Clusters: []api.ClusterPeers{}}, nil
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
// changed to this cluster's nodes. errStalePeers: v is older than a view
// applied already.
func (c *Cluster) applyPeers(ctx context.Context, v api.PeerView, scope []string) (int, error) {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	n, nodes, err := c.store.applyPeers(rc, v, scope)
	switch {
	case errors.Is(err, errStalePeers):
		c.peerUpdates.WithLabelValues("stale").Inc()
	case err == nil:
		c.peerUpdates.WithLabelValues("fetch").Inc()
	}
	c.wakeAll(nodes)
	return n, err
}

// applyDelta applies root's delta of one cluster's endpoints; -1 means it
// does not follow what is held (fetch instead).
func (c *Cluster) applyDelta(ctx context.Context, d *api.EndpointsDelta) (int, error) {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	n, nodes, err := c.store.applyDelta(rc, d)
	if err == nil && n >= 0 {
		c.peerUpdates.WithLabelValues("delta").Inc()
	}
	c.wakeAll(nodes)
	return n, err
}

// pushNodes reports every node's endpoint to root, replacing what root
// holds of this cluster.
func (c *Cluster) pushNodes(ctx context.Context) error {
	rc, cancel := c.rctx(ctx)
	eps, err := c.store.endpoints(rc)
	cancel()
	if err != nil {
		return err
	}
	return c.root.putNodes(ctx, c.cfg.ClusterID, api.Endpoints{Nodes: eps})
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

func (rc *rootClient) putNode(ctx context.Context, cid string, p api.Peer) error {
	return rc.do(ctx, "PUT", "/api/net/cluster/"+url.PathEscape(cid)+"/nodes/"+url.PathEscape(p.NodeID), p, nil)
}

func (rc *rootClient) deleteNode(ctx context.Context, cid, node string) error {
	return rc.do(ctx, "DELETE", "/api/net/cluster/"+url.PathEscape(cid)+"/nodes/"+url.PathEscape(node), nil, nil)
}

func (rc *rootClient) putNodes(ctx context.Context, cid string, b api.Endpoints) error {
	return rc.do(ctx, "PUT", "/api/net/cluster/"+url.PathEscape(cid)+"/nodes", b, nil)
}

func (rc *rootClient) peers(ctx context.Context, cid string, scope []string) (api.PeerView, error) {
	var v api.PeerView
	path := "/api/net/cluster/" + url.PathEscape(cid) + "/peers"
	if scope != nil {
		path += "?of=" + url.QueryEscape(strings.Join(scope, ","))
	}
	err := rc.do(ctx, "GET", path, nil, &v)
	return v, err
}
