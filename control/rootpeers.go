package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/valyala/fasthttp"
)

// Root's side of the cross-cluster peer registry (peerscripts.go has the
// keys and the rules): clusters report their nodes' tunnel endpoints, root
// answers each cluster the endpoints of the clusters linked with it and
// hints clusters (POST /api/net/peers/update) whenever what they hold
// changed.

func (r *Root) kEndpoints(cid string) string  { return r.keyTag + "ep:" + cid }
func (r *Root) kHosts(id string) string       { return r.keyTag + "hcl:" + id }
func (r *Root) kHostChanges(id string) string { return r.keyTag + "hchg:" + id }
func (r *Root) kRehost() string               { return r.keyTag + "rehost" }

// peersHint is the body of POST /api/net/peers/update: fetch again the
// endpoints of Clusters, or of every linked cluster when it is empty;
// with Delta, apply it instead if it follows the version held (else
// fetch).
type peersHint struct {
	Clusters []string    `json:"clusters,omitempty"`
	Delta    *peersDelta `json:"delta,omitempty"`
}

// peersDelta is one change of a cluster's endpoints at root: the version
// it made, endpoints set and node ids deleted.
type peersDelta struct {
	ClusterID string            `json:"cluster_id"`
	Epoch     string            `json:"epoch"`
	Version   uint64            `json:"version"`
	Set       []nodeclient.Peer `json:"set,omitempty"`
	Del       []string          `json:"del,omitempty"`
}

// peerView is root's answer to GET /api/net/cluster/{cid}/peers: the
// endpoints of the clusters linked with cid (those in the scope asked
// for), and the position of this answer in cid's sequence of peer views
// (Epoch, Generation), so a cluster never replaces a newer view with an
// older one.
type peerView struct {
	ClusterID  string         `json:"cluster_id"`
	Epoch      string         `json:"epoch"`
	Generation uint64         `json:"generation"`
	Clusters   []clusterPeers `json:"clusters"`
}

// clusterPeers are the tunnel endpoints of one cluster's nodes, sorted by
// node id (ClusterID unset in each: it is the enclosing one), at version
// Version of that cluster's list.
type clusterPeers struct {
	ClusterID string            `json:"cluster_id"`
	Version   uint64            `json:"version"`
	Nodes     []nodeclient.Peer `json:"nodes"`
}

// endpointsBody is the body of PUT /api/net/cluster/{cid}/nodes.
type endpointsBody struct {
	Nodes []nodeclient.Peer `json:"nodes"`
}

// sendHints queues the hints a script returned: (cluster JSON, scope)
// pairs.
func (r *Root) sendHints(res []any) { r.sendDeltaHints(res, nil) }

// sendDeltaHints queues hints carrying delta (JSON of a peersDelta; nil:
// none).
func (r *Root) sendDeltaHints(res []any, delta json.RawMessage) {
	for i := 0; i+1 < len(res); i += 2 {
		cs, _ := res[i].(string)
		scope, _ := res[i+1].(string)
		var ci clusterInfo
		if json.Unmarshal([]byte(cs), &ci) != nil {
			continue
		}
		h := struct {
			Clusters []string        `json:"clusters,omitempty"`
			Delta    json.RawMessage `json:"delta,omitempty"`
		}{Delta: delta}
		if scope != "" {
			h.Clusters = strings.Split(scope, ",")
		}
		b, _ := json.Marshal(h)
		r.notify.enqueue(ci, notice{path: peersPath, body: string(b)})
	}
}

// changeEndpoints runs changeEndpointsScript on cid's list and hints the
// linked clusters with the change; it reports whether anything changed.
func (r *Root) changeEndpoints(c context.Context, cid, mode string, args ...any) (bool, error) {
	var e [8]byte
	_, _ = rand.Read(e[:])
	res, err := changeEndpointsScript.Run(c, r.rdb, []string{r.kEndpoints(cid)},
		append([]any{r.keyTag, cid, hex.EncodeToString(e[:]), mode}, args...)...).Slice()
	if err != nil {
		return false, redisErr("node endpoints", err)
	}
	if res[0].(int64) == 0 {
		return false, nil
	}
	d, _ := res[1].(string)
	r.sendDeltaHints(res[2:], json.RawMessage(d))
	return true, nil
}

// rehost hints what a change of the clusters hosting service id links or
// unlinks. A failure leaves the change recorded (hchg, rehost: written
// with it) for the sweep.
func (r *Root) rehost(c context.Context, id string) {
	res, err := rehostScript.Run(c, r.rdb, []string{r.kHostChanges(id), r.kInt(id), r.kRehost()}, r.keyTag, id).Slice()
	if err != nil {
		r.log.Warn("rehost; the sweep retries", "service", id, "err", err)
		return
	}
	r.sendHints(res)
}

// sweepRehost hints the hosting changes a failure left. The first sweep of
// a root whose Redis has no hosting counts yet (state from before them)
// counts every service's instances first. Each step has the request
// budget.
func (r *Root) sweepRehost(ctx context.Context) error {
	step := func(f func(c context.Context) error) error {
		c, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		defer cancel()
		return f(c)
	}
	built := r.keyTag + "hcl-built"
	var have int64
	var ids []string
	err := step(func(c context.Context) (err error) {
		if have, err = r.rdb.Exists(c, built).Result(); err == nil && have == 0 {
			ids, err = r.rdb.HVals(c, r.kJobs()).Result()
		}
		return redisErr("rehost: services", err)
	})
	if err != nil {
		return err
	}
	for _, id := range ids {
		keys := []string{r.kSvc(id), r.kHosts(id), r.kHostChanges(id), r.kRehost()}
		if err := step(func(c context.Context) error {
			return redisErr("rehost: count", recountHostsScript.Run(c, r.rdb, keys, id).Err())
		}); err != nil {
			return err
		}
	}
	if have == 0 {
		if err := step(func(c context.Context) error { return redisErr("rehost: marker", r.rdb.Set(c, built, "1", 0).Err()) }); err != nil {
			return err
		}
	}
	if err := step(func(c context.Context) (err error) {
		ids, err = r.rdb.SMembers(c, r.kRehost()).Result()
		return redisErr("rehost: list", err)
	}); err != nil {
		return err
	}
	for _, id := range ids {
		_ = step(func(c context.Context) error { r.rehost(c, id); return nil })
	}
	return nil
}

// endpointIn validates one reported endpoint (field prefixes the JSON
// names in errors).
func endpointIn(field string, p nodeclient.Peer) (nodeclient.Peer, error) {
	out := nodeclient.Peer{NodeID: p.NodeID}
	if err := validID(field+"node_id", p.NodeID); err != nil {
		return out, err
	}
	var err error
	if out.IP, out.Port, err = addrPortIn(field, "", p.IP, p.Port); err != nil {
		return out, err
	}
	if p.PublicIP != "" || p.PublicPort != 0 {
		out.PublicIP, out.PublicPort, err = addrPortIn(field, "public_", p.PublicIP, p.PublicPort)
	}
	return out, err
}

// addrPortIn validates the address and port fields <field><name>ip and
// <field><name>port.
func addrPortIn(field, name, ip string, port int) (string, int, error) {
	if ip == "" {
		return "", 0, badf("missing_field", "%s%sip: missing", field, name)
	}
	a, err := parseAddr(field+name+"ip", ip, 0)
	if err != nil {
		return "", 0, err
	}
	if port < 1 || port > 65535 {
		return "", 0, badf("bad_port", "%s%sport: %d not in 1..65535", field, name, port)
	}
	return a.String(), port, nil
}

// putNode records one node's tunnel endpoint (PUT
// /api/net/cluster/{cid}/nodes/{node_id}, body {ip, port, public_ip?,
// public_port?}). A cluster may report before it registers: its endpoints
// count once it is registered.
func (r *Root) putNode(ctx *fasthttp.RequestCtx, p []string) error {
	cid, node := p[0], p[1]
	if err := validID("cluster_id", cid); err != nil {
		return err
	}
	var in nodeclient.Peer
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	in.NodeID = node
	ep, err := endpointIn("", in)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(ep)
	c, cancel := r.ctx(ctx)
	defer cancel()
	changed, err := r.changeEndpoints(c, cid, "put", node, b)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, map[string]any{"cluster_id": cid, "node_id": node, "changed": changed})
	return nil
}

// deleteNode forgets one node's endpoint; the clusters holding it are
// hinted. 404 if unknown.
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
	changed, err := r.changeEndpoints(c, cid, "del", node)
	if err != nil {
		return err
	}
	if !changed {
		return notFoundf("node_id: cluster %q reported no node %q", cid, node)
	}
	writeJSON(ctx, 200, map[string]string{"cluster_id": cid, "node_id": node})
	return nil
}

// putNodes replaces a cluster's whole endpoint list (its periodic sync),
// atomically.
func (r *Root) putNodes(ctx *fasthttp.RequestCtx, p []string) error {
	cid := p[0]
	if err := validID("cluster_id", cid); err != nil {
		return err
	}
	var in endpointsBody
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	var args []any
	seen := map[string]bool{}
	for i, n := range in.Nodes {
		ep, err := endpointIn(fmt.Sprintf("nodes[%d].", i), n)
		if err != nil {
			return err
		}
		if seen[ep.NodeID] {
			return badf("duplicate", "nodes[%d].node_id: %q listed twice", i, ep.NodeID)
		}
		seen[ep.NodeID] = true
		b, _ := json.Marshal(ep)
		args = append(args, ep.NodeID, string(b))
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	changed, err := r.changeEndpoints(c, cid, "replace", args...)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, map[string]any{"cluster_id": cid, "nodes": len(in.Nodes), "changed": changed})
	return nil
}

// peers answers GET /api/net/cluster/{cid}/peers[?of=B,C]: the endpoints
// of the clusters linked with cid (of those named in of).
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
	var e [8]byte
	_, _ = rand.Read(e[:])
	c, cancel := r.ctx(ctx)
	defer cancel()
	res, err := peerViewScript.Run(c, r.rdb, []string{r.kClusters()}, r.keyTag, cid, strings.Join(scope, ","), hex.EncodeToString(e[:])).Slice()
	if err != nil {
		return redisErr("peers", err)
	}
	if res[0].(int64) == -1 {
		return notFoundf("cluster_id: %q is not registered", cid)
	}
	v, err := peerViewFrom(cid, res[1:])
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, v)
	return nil
}

// peerViewFrom decodes peerViewScript's reply after its code.
func peerViewFrom(cid string, res []any) (peerView, error) {
	v := peerView{ClusterID: cid, Clusters: []clusterPeers{}}
	if len(res) < 2 {
		return v, fmt.Errorf("peers: script reply of %d values", len(res))
	}
	v.Epoch, _ = res[0].(string)
	gs, _ := res[1].(string)
	v.Generation, _ = strconv.ParseUint(gs, 10, 64)
	for i := 2; i+2 < len(res); i += 3 {
		cp := clusterPeers{Nodes: []nodeclient.Peer{}}
		cp.ClusterID, _ = res[i].(string)
		vs, _ := res[i+1].(string)
		cp.Version, _ = strconv.ParseUint(vs, 10, 64)
		eps, _ := res[i+2].([]any)
		for _, e := range eps {
			s, _ := e.(string)
			var pe nodeclient.Peer
			if err := json.Unmarshal([]byte(s), &pe); err != nil {
				return v, fmt.Errorf("peers: endpoint of %s: %w", cp.ClusterID, err)
			}
			cp.Nodes = append(cp.Nodes, pe)
		}
		slices.SortFunc(cp.Nodes, func(a, b nodeclient.Peer) int { return strings.Compare(a.NodeID, b.NodeID) })
		v.Clusters = append(v.Clusters, cp)
	}
	return v, nil
}
