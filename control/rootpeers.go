package control

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// Root's side of the cross-cluster peer registry (peerscripts.go has the
// keys and the rules, peerstore.go the store's operations): clusters
// report their nodes' tunnel endpoints, root answers each cluster the
// endpoints of the clusters linked with it and hints clusters (POST
// /api/net/peers/update) whenever what they hold changed.

// sendHints queues hints without a delta.
func (r *Root) sendHints(hints []hint) { r.sendDeltaHints(hints, nil) }

// sendDeltaHints queues hints carrying delta (nil: none).
func (r *Root) sendDeltaHints(hints []hint, delta *api.EndpointsDelta) {
	for _, h := range hints {
		body := api.PeersHint{Delta: delta}
		if h.scope != "" {
			body.Clusters = strings.Split(h.scope, ",")
		}
		b, _ := json.Marshal(body)
		r.notify.enqueue(h.cluster, notice{path: peersPath, body: string(b)})
	}
}

// rehost copies what changed of service id's links (its hosting clusters,
// its interested ones) to the link graph and hints the links that makes or
// ends. A failure leaves the change recorded in the shard for the sweep.
func (r *Root) rehost(c context.Context, id string) {
	r.sendHints(r.store.linksChanged(c, id))
}

// endpointIn validates one reported endpoint (field prefixes the JSON
// names in errors).
func endpointIn(field string, p api.Peer) (api.Peer, error) {
	out := api.Peer{NodeID: p.NodeID}
	if err := validID(field+"node_id", p.NodeID); err != nil {
		return out, err
	}
	var err error
	if out.IP, err = addrIn(field+"ip", p.IP, 0); err != nil {
		return out, err
	}
	if err := portIn(field+"port", p.Port); err != nil {
		return out, err
	}
	out.Port = p.Port
	if p.PublicIP.IsValid() || p.PublicPort != 0 {
		if out.PublicIP, err = addrIn(field+"public_ip", p.PublicIP, 0); err != nil {
			return out, err
		}
		if err := portIn(field+"public_port", p.PublicPort); err != nil {
			return out, err
		}
		out.PublicPort = p.PublicPort
	}
	return out, nil
}

// PUT /api/net/cluster/{cluster_id}/nodes/{node_id}, body {ip, port,
// public_ip?, public_port?}: one node's tunnel endpoint. A cluster may
// report before it registers: its endpoints count once it is registered.
func (r *Root) putNode(ctx *fasthttp.RequestCtx, p []string) error {
	cid, node := p[0], p[1]
	if err := validID("cluster_id", cid); err != nil {
		return err
	}
	var in api.Peer
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	in.NodeID = node
	ep, err := endpointIn("", in)
	if err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	changed, err := r.changeEndpoints(c, cid, endpointsPut, ep)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, api.EndpointChanged{Changed: changed, ClusterID: cid, NodeID: node})
	return nil
}

// DELETE /api/net/cluster/{cluster_id}/nodes/{node_id}: the clusters
// holding the endpoint are hinted. 404 if unknown.
func (r *Root) deleteNode(ctx *fasthttp.RequestCtx, p []string) error {
	cid, node := p[0], p[1]
	if err := validID("cluster_id", cid); err != nil {
		return err
	}
	if err := validID("node_id", node); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	changed, err := r.changeEndpoints(c, cid, endpointsDel, api.Peer{NodeID: node})
	if err != nil {
		return err
	}
	if !changed {
		return notFoundf("node_id: cluster %q reported no node %q", cid, node)
	}
	writeJSON(ctx, 200, api.ClusterNode{ClusterID: cid, NodeID: node})
	return nil
}

// PUT /api/net/cluster/{cluster_id}/nodes: a cluster's whole endpoint list
// (its periodic sync), replaced atomically.
func (r *Root) putNodes(ctx *fasthttp.RequestCtx, p []string) error {
	cid := p[0]
	if err := validID("cluster_id", cid); err != nil {
		return err
	}
	var in api.Endpoints
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	eps := make([]api.Peer, 0, len(in.Nodes))
	seen := map[string]bool{}
	for i, n := range in.Nodes {
		ep, err := endpointIn(fmt.Sprintf("nodes[%d].", i), n)
		if err != nil {
			return err
		}
		if seen[ep.NodeID] {
			return badf(api.CodeDuplicate, "nodes[%d].node_id: %q listed twice", i, ep.NodeID)
		}
		seen[ep.NodeID] = true
		eps = append(eps, ep)
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	changed, err := r.changeEndpoints(c, cid, endpointsReplace, eps...)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, api.EndpointsChanged{Changed: changed, ClusterID: cid, Nodes: len(in.Nodes)})
	return nil
}

// changeEndpoints changes cid's endpoint list and hints the linked
// clusters with the change; it reports whether anything changed.
func (r *Root) changeEndpoints(c context.Context, cid string, mode endpointsMode, eps ...api.Peer) (bool, error) {
	delta, hints, err := r.store.changeEndpoints(c, cid, mode, eps)
	if err != nil || delta == nil {
		return false, err
	}
	r.sendDeltaHints(hints, delta)
	return true, nil
}

// GET /api/net/cluster/{cluster_id}/peers[?of=B,C]: the endpoints of the
// clusters linked with cluster_id (of those named in of).
func (r *Root) peers(ctx *fasthttp.RequestCtx, p []string) error {
	cid := p[0]
	if err := validID("cluster_id", cid); err != nil {
		return err
	}
	var scope []string
	if of := string(ctx.QueryArgs().Peek("of")); of != "" {
		scope = strings.Split(of, ",")
		for i, s := range scope {
			if err := validID(fmt.Sprintf("of[%d]", i), s); err != nil {
				return err
			}
		}
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.store.peerView(c, cid, scope)
	if err != nil {
		return clusterErr(err, cid)
	}
	writeJSON(ctx, 200, v)
	return nil
}
