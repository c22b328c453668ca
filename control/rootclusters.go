package control

import (
	"errors"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// POST /api/net/cluster: register or update a cluster.
func (r *Root) registerCluster(ctx *fasthttp.RequestCtx, _ []string) error {
	var in api.Cluster
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	if in.ClusterAddress == "" {
		return missing("cluster_address")
	}
	if err := validID("cluster_id", in.ClusterID); err != nil {
		return err
	}
	if err := portIn("cluster_port", int(in.ClusterPort)); err != nil {
		return err
	}
	addr := in.ClusterAddress
	if len(addr) > 255 || strings.ContainsAny(addr, " \t\r\n/?#@") && !strings.Contains(addr, "://") {
		return badf(api.CodeBadAddress, "cluster_address: %q is not a host name, IP address or URL", addr)
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	hints, err := r.store.registerCluster(c, in)
	if err != nil {
		return err
	}
	r.notify.retarget(in)
	r.sendHints(hints)
	writeJSON(ctx, 200, in)
	return nil
}

// DELETE /api/net/cluster/{cluster_id}: its interests and endpoints go,
// and the clusters linked with it are hinted.
func (r *Root) deleteCluster(ctx *fasthttp.RequestCtx, p []string) error {
	cid := p[0]
	if err := validID("cluster_id", cid); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	hints, err := r.store.deleteCluster(c, cid)
	if err != nil {
		return clusterErr(err, cid)
	}
	r.notify.forget(cid)
	r.sendHints(hints)
	writeJSON(ctx, 200, api.ClusterRef{ClusterID: cid})
	return nil
}

// clusterErr names the cluster a store error is about.
func clusterErr(err error, cid string) error {
	if errors.Is(err, errNoCluster) {
		return notFoundf("cluster_id: %q is not registered", cid)
	}
	return err
}
