package control

import (
	"context"
	"errors"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// The node-facing API of a cluster (/api/node/): nodes register, report
// their instances, drop interests and read their peers; resolve is in
// clusterservices.go, the watch in clusterwatch.go.

// POST /api/node/register: subnets from root (idempotent per node id),
// the endpoint reported to root, the node's peers and watch position.
func (c *Cluster) registerNode(ctx *fasthttp.RequestCtx, _ []string) error {
	var in api.RegisterRequest
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	rec, err := nodeIn(&in)
	if err != nil {
		return err
	}
	epoch, err := c.epoch(ctx)
	if err != nil {
		return err
	}
	sn, err := c.root.subnet(ctx, rec.NodeID)
	if err != nil {
		return err
	}
	rec.Subnet, rec.SubnetV6 = sn.Subnet, sn.SubnetV6
	// Root learns the endpoint first, so peers in other clusters may know
	// it by the time the node is told it is registered.
	if err := c.root.putNode(ctx, c.cfg.ClusterID, rec.endpoint()); err != nil {
		return err
	}
	rc, cancel := c.rctx(ctx)
	defer cancel()
	ver, err := c.store.registerNode(rc, rec)
	if err != nil {
		return err
	}
	peers, err := c.store.peerList(rc, rec.NodeID)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, api.RegisterResponse{NodeID: rec.NodeID, SubnetAddr: sn.SubnetAddr, SubnetAddrV6: sn.SubnetAddrV6,
		Subnet: sn.Subnet, SubnetV6: sn.SubnetV6, Peers: peers, Epoch: epoch, Version: ver})
	return nil
}

// nodeIn validates a registration.
func nodeIn(in *api.RegisterRequest) (nodeRecord, error) {
	if err := validID("node_id", in.NodeID); err != nil {
		return nodeRecord{}, err
	}
	ip, err := addrIn("node_ip", in.NodeIP, 0)
	if err != nil {
		return nodeRecord{}, err
	}
	port := in.TunnelPort
	if port == 0 {
		port = api.DefaultTunnelPort
	}
	if err := portIn("tunnel_port", port); err != nil {
		return nodeRecord{}, err
	}
	rec := nodeRecord{NodeID: in.NodeID, NodeIP: ip, TunnelPort: port}
	if in.PublicIP.IsValid() || in.PublicPort != 0 {
		// Behind a NAT: peers tunnel to the public address and port.
		if rec.PublicIP, err = addrIn("public_ip", in.PublicIP, 0); err != nil {
			return rec, err
		}
		if rec.PublicIP.Is4() != ip.Is4() {
			return rec, badf(api.CodeBadAddress, "public_ip: %s is not of node_ip %s's family", rec.PublicIP, ip)
		}
		rec.PublicPort = in.PublicPort
		if rec.PublicPort == 0 {
			rec.PublicPort = port
		}
		if err := portIn("public_port", rec.PublicPort); err != nil {
			return rec, err
		}
	}
	if l := in.Location; l != nil {
		if l.Lat < -90 || l.Lat > 90 || l.Long < -180 || l.Long > 180 {
			return rec, badf(api.CodeBadLocation, "location: lat %g / long %g out of range", l.Lat, l.Long)
		}
		rec.Location = &api.Location{Lat: l.Lat, Long: l.Long}
	}
	return rec, nil
}

// epoch is the epoch of this cluster's state.
func (c *Cluster) epoch(ctx context.Context) (string, error) {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	return c.store.epoch(rc)
}

// DELETE /api/node/{node_id}: subnets freed at root, the endpoint removed
// there, interests dropped, the other nodes told.
func (c *Cluster) deleteNode(ctx *fasthttp.RequestCtx, p []string) error {
	node := p[0]
	if err := validID("node_id", node); err != nil {
		return err
	}
	if _, err := c.node(ctx, node); err != nil {
		return err
	}
	if err := c.root.releaseSubnet(ctx, node); err != nil && !errors.Is(err, api.ErrNotFound) {
		return err
	}
	// Other clusters' nodes drop it as a peer (a failure leaves the node
	// registered here, for the caller to retry).
	if err := c.root.deleteNode(ctx, c.cfg.ClusterID, node); err != nil && !errors.Is(err, api.ErrNotFound) {
		return err
	}
	rc, cancel := c.rctx(ctx)
	defer cancel()
	if err := c.store.deleteNode(rc, node); err != nil {
		return nodeErr(err, node)
	}
	c.wake(node)
	writeJSON(ctx, 200, api.NodeRef{NodeID: node})
	return nil
}

// node returns the registered node.
func (c *Cluster) node(ctx context.Context, node string) (nodeRecord, error) {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	rec, err := c.store.node(rc, node)
	return rec, nodeErr(err, node)
}

// nodeErr names the node a store error is about.
func nodeErr(err error, node string) error {
	if errors.Is(err, errNoNode) {
		return notFoundf("node_id: %q is not registered", node)
	}
	return err
}

// nodeParam is the query parameter node_id.
func (c *Cluster) nodeParam(ctx *fasthttp.RequestCtx) (string, error) {
	node := string(ctx.QueryArgs().Peek("node_id"))
	if node == "" {
		return "", badf(api.CodeMissingField, "node_id: missing query parameter")
	}
	return node, validID("node_id", node)
}

func (c *Cluster) addInterest(ctx context.Context, node, job string) error {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	return c.store.addInterest(rc, node, job)
}

func (c *Cluster) dropLocalInterest(ctx context.Context, node, job string) {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	_, _ = c.store.dropInterest(rc, node, job)
}

// DELETE /api/node/interest/{job_name}?node_id=: the node stops getting
// the service's changes.
func (c *Cluster) dropInterest(ctx *fasthttp.RequestCtx, p []string) error {
	job, err := normJob("job_name", p[0])
	if err != nil {
		return err
	}
	node, err := c.nodeParam(ctx)
	if err != nil {
		return err
	}
	if _, err := c.node(ctx, node); err != nil {
		return err
	}
	rc, cancel := c.rctx(ctx)
	left, err := c.store.dropInterest(rc, node, job)
	cancel()
	if err != nil {
		return err
	}
	if left == 0 {
		// No node of this cluster cares any more: stop root's pushes and
		// the cache entry (Oakestra does the same).
		if err := c.uncache(ctx, job); err != nil {
			return err
		}
		if err := c.root.dropInterest(ctx, job, c.cfg.ClusterID); err != nil && !errors.Is(err, api.ErrNotFound) {
			c.log.Warn("drop interest at root", "job", job, "err", err)
		}
	}
	writeJSON(ctx, 200, api.NodeInterest{JobName: job, NodeID: node})
	return nil
}

// POST /api/node/instance/deployed: an instance runs on the node; root
// hears of it (net_deploy_status).
func (c *Cluster) instanceDeployed(ctx *fasthttp.RequestCtx, _ []string) error {
	return c.instanceReport(ctx, false)
}

// POST /api/node/instance/undeployed: the instance stopped on this node.
// It is not deleted at root (its instance IPs survive a migration; the
// orchestrator deletes instances with DELETE /api/net/{_id}/{n}); root
// clears its location if it is still this node.
func (c *Cluster) instanceUndeployed(ctx *fasthttp.RequestCtx, _ []string) error {
	return c.instanceReport(ctx, true)
}

func (c *Cluster) instanceReport(ctx *fasthttp.RequestCtx, undeploy bool) error {
	var in api.InstanceReport
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	job, st, err := c.reportIn(ctx, &in, undeploy)
	if err != nil {
		return err
	}
	e, err := c.cached(ctx, job)
	if err != nil {
		return err
	}
	if !undeploy {
		// A node running an instance needs the service's entry (its own
		// instance IPs rewrite its containers' source addresses), so it is
		// interested from now on; the change root announces next reaches
		// it through its watch. Should root fail below, the interest stays:
		// it only means pushes the node may not need.
		if err := c.addInterest(ctx, in.NodeID, job); err != nil {
			return err
		}
	}
	if err := c.root.deployStatus(ctx, undeploy, e.ID, st); err != nil {
		return err
	}
	writeJSON(ctx, 200, api.InstanceRef{InstanceNumber: st.InstanceNumber, JobName: job})
	return nil
}

// reportIn validates an instance report of a registered node; it returns
// the job and the status to report to root (host: the node's endpoint).
func (c *Cluster) reportIn(ctx context.Context, in *api.InstanceReport, undeploy bool) (string, api.InstanceStatus, error) {
	var st api.InstanceStatus
	if err := validID("node_id", in.NodeID); err != nil {
		return "", st, err
	}
	job, err := normJob("job_name", in.JobName)
	if err != nil {
		return "", st, err
	}
	if in.InstanceNumber < 0 {
		return "", st, badf(api.CodeBadInstanceNumber, "instance_number: %d is negative", in.InstanceNumber)
	}
	rec, err := c.node(ctx, in.NodeID)
	if err != nil {
		return "", st, err
	}
	host, hostPort := rec.tunnelTo()
	st = api.InstanceStatus{InstanceNumber: in.InstanceNumber, HostIP: host, HostPort: api.Int(hostPort)}
	if undeploy {
		return job, st, nil
	}
	if st.NamespaceIP, err = addrIn("namespace_ip", in.NamespaceIP, 4); err != nil {
		return "", st, err
	}
	if err := inPool("namespace_ip", st.NamespaceIP, "node's subnet", rec.Subnet); err != nil {
		return "", st, err
	}
	if in.NamespaceIPv6.IsValid() {
		if st.NamespaceIPv6, err = addrIn("namespace_ip_v6", in.NamespaceIPv6, 6); err != nil {
			return "", st, err
		}
		if err := inPool("namespace_ip_v6", st.NamespaceIPv6, "node's subnet", rec.SubnetV6); err != nil {
			return "", st, err
		}
	}
	return job, st, nil
}

// GET /api/node/peers?node_id=: the node's peer set.
func (c *Cluster) peers(ctx *fasthttp.RequestCtx, _ []string) error {
	node, err := c.nodeParam(ctx)
	if err != nil {
		return err
	}
	epoch, err := c.epoch(ctx)
	if err != nil {
		return err
	}
	rc, cancel := c.rctx(ctx)
	defer cancel()
	v, err := c.store.version(rc, node)
	if err != nil {
		return nodeErr(err, node)
	}
	peers, err := c.store.peerList(rc, node)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, api.PeersResponse{Peers: peers, Epoch: epoch, Version: v})
	return nil
}
