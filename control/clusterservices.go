package control

import (
	"context"
	"errors"
	"net/netip"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// A cluster's service cache: entries fetched from root (which records the
// cluster's interest there), kept current by root's job updates and the
// refresher, pushed to the interested nodes; Oakestra's deployment
// endpoints, and the nodes' resolve.

// cache stores e and pushes it to interested nodes.
func (c *Cluster) cache(ctx context.Context, e api.ServiceEntry) error {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	nodes, err := c.store.cacheSet(rc, e)
	c.wakeAll(nodes)
	return err
}

// uncache drops job's entry and pushes its removal to interested nodes.
func (c *Cluster) uncache(ctx context.Context, job string) error {
	rc, cancel := c.rctx(ctx)
	defer cancel()
	nodes, err := c.store.cacheRemove(rc, job)
	c.wakeAll(nodes)
	return err
}

// refresh fetches job from root (keeping the cluster's interest there) and
// caches it; a service root no longer knows is removed (api.ErrNotFound).
func (c *Cluster) refresh(ctx context.Context, job string) (api.ServiceEntry, error) {
	e, err := c.root.serviceByJob(ctx, job, c.cfg.ClusterID)
	if errors.Is(err, api.ErrNotFound) {
		if rerr := c.uncache(ctx, job); rerr != nil {
			return e, rerr
		}
		return e, err
	}
	if err != nil {
		return e, err
	}
	return e, c.cache(ctx, e)
}

// cached returns the cached entry of job, fetching it from root if absent.
func (c *Cluster) cached(ctx context.Context, job string) (api.ServiceEntry, error) {
	rc, cancel := c.rctx(ctx)
	e, ok, err := c.store.cached(rc, job)
	cancel()
	if err != nil || ok {
		return e, err
	}
	return c.refresh(ctx, job)
}

// POST /api/net/deployment: fetch a service from root and cache it.
func (c *Cluster) deployment(ctx *fasthttp.RequestCtx, _ []string) error {
	var in api.Deployment
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	job, err := normJob("job_name", in.JobName)
	if err != nil {
		return err
	}
	e, err := c.refresh(ctx, job)
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, e)
	return nil
}

// DELETE /api/net/deployment/{job_name}: drop the cached entry and the
// cluster's interest at root.
func (c *Cluster) deleteDeployment(ctx *fasthttp.RequestCtx, p []string) error {
	job, err := normJob("job_name", p[0])
	if err != nil {
		return err
	}
	if err := c.uncache(ctx, job); err != nil {
		return err
	}
	if err := c.root.dropInterest(ctx, job, c.cfg.ClusterID); err != nil && !errors.Is(err, api.ErrNotFound) {
		return err
	}
	writeJSON(ctx, 200, api.JobRef{JobName: job})
	return nil
}

// POST /api/net/job/update: root's notification; the entry is fetched
// again and pushed to the nodes if it changed.
func (c *Cluster) jobUpdate(ctx *fasthttp.RequestCtx, _ []string) error {
	var in api.JobUpdate
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	job, err := normJob("job_name", in.JobName)
	if err != nil {
		return err
	}
	if in.Type != "" && in.Type != api.TypeDeployment && in.Type != api.TypeUndeployment {
		return badf(api.CodeBadType, "type: %q, want DEPLOYMENT or UNDEPLOYMENT", in.Type)
	}
	if _, err := c.refresh(ctx, job); err != nil && !errors.Is(err, api.ErrNotFound) {
		return err
	}
	writeJSON(ctx, 200, api.JobRef{JobName: job})
	return nil
}

// GET /api/node/resolve?node_id=&ip= or &job=: the service entry, from
// the cache or root; the node is interested in it from now on.
func (c *Cluster) resolve(ctx *fasthttp.RequestCtx, _ []string) error {
	node, err := c.nodeParam(ctx)
	if err != nil {
		return err
	}
	ipS := string(ctx.QueryArgs().Peek("ip"))
	jobS := string(ctx.QueryArgs().Peek("job"))
	if (ipS == "") == (jobS == "") {
		return badf(api.CodeMissingField, "ip, job: give exactly one")
	}
	var job string
	var ip netip.Addr
	if jobS != "" {
		if job, err = normJob("job", jobS); err != nil {
			return err
		}
	} else if ip, err = parseAddr("ip", ipS, 0); err != nil {
		return err
	}
	if _, err := c.node(ctx, node); err != nil {
		return err
	}
	if job == "" {
		rc, cancel := c.rctx(ctx)
		j, ok, err := c.store.jobOf(rc, ip)
		cancel()
		if err != nil {
			return err
		}
		if !ok {
			return c.resolveAtRoot(ctx, node, ip)
		}
		job = j
	}
	if err := c.addInterest(ctx, node, job); err != nil {
		return err
	}
	e, err := c.cached(ctx, job)
	if errors.Is(err, api.ErrNotFound) {
		c.dropLocalInterest(ctx, node, job)
	}
	if err != nil {
		return err
	}
	writeJSON(ctx, 200, e)
	return nil
}

// resolveAtRoot answers a resolve of an address the cache holds no entry
// for: root's entry, cached, and the node's interest in it.
func (c *Cluster) resolveAtRoot(ctx *fasthttp.RequestCtx, node string, ip netip.Addr) error {
	e, err := c.root.serviceByIP(ctx, ip, c.cfg.ClusterID)
	if err != nil {
		return err
	}
	if err := c.addInterest(ctx, node, e.JobName); err != nil {
		return err
	}
	if err := c.cache(ctx, e); err != nil {
		return err
	}
	writeJSON(ctx, 200, e)
	return nil
}
