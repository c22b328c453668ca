package control

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/policy"
	"github.com/valyala/fasthttp"
)

// POST /api/net/service/deploy: create a service with one v4+v6 service
// IP per policy (idempotent per _id).
func (r *Root) deployService(ctx *fasthttp.RequestCtx, _ []string) error {
	var in api.DeployService
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	job, want, err := r.serviceIn(&in)
	if err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	meta, existed, err := r.store.deployService(c, in.ID, job, want)
	if err != nil {
		return deployServiceErr(err, in.ID, job)
	}
	if existed {
		if err := holdsCustom(meta, want); err != nil {
			return err
		}
	}
	writeJSON(ctx, 200, api.ServiceIPs{JobName: meta.JobName, ServiceIPList: meta.ServiceIPList})
	return nil
}

// serviceIn validates a service deploy: its job name and the service IPs
// it asks for, one entry per configured policy.
func (r *Root) serviceIn(in *api.DeployService) (string, []policyIPs, error) {
	if in.ID == "" { // an older system manager's name of it
		in.ID = in.SystemJobID
	}
	if err := validID("_id", in.ID); err != nil {
		return "", nil, err
	}
	dd := in.Descriptor
	// microservice_name/namespace are Oakestra's; service_name/service_ns
	// are accepted in their place.
	if dd.MicroserviceName == "" {
		dd.MicroserviceName = dd.ServiceName
	}
	if dd.MicroserviceNamespace == "" {
		dd.MicroserviceNamespace = dd.ServiceNS
	}
	parts := []struct{ name, v string }{
		{"app_name", dd.AppName}, {"app_ns", dd.AppNS},
		{"microservice_name", dd.MicroserviceName}, {"microservice_namespace", dd.MicroserviceNamespace},
	}
	for _, f := range parts {
		if f.v == "" {
			return "", nil, missing("deployment_descriptor." + f.name)
		}
		if !api.ValidPart(f.v) {
			return "", nil, badf(api.CodeBadName, "deployment_descriptor.%s: %q must match ^[a-zA-Z0-9]{1,30}$", f.name, f.v)
		}
	}
	job := strings.Join([]string{dd.AppName, dd.AppNS, dd.MicroserviceName, dd.MicroserviceNamespace}, ".")
	want := make([]policyIPs, len(r.policies))
	for i, pol := range r.policies {
		want[i].Policy = pol
		field, c4, c6 := customIPs(dd, pol)
		var err error
		if c4.IsValid() {
			if want[i].Custom4, err = addrIn("deployment_descriptor."+field, c4, 4); err != nil {
				return "", nil, err
			}
			if err := inPool("deployment_descriptor."+field, want[i].Custom4, "service pool", r.cfg.IPAM.ServiceV4); err != nil {
				return "", nil, err
			}
		}
		if c6.IsValid() {
			if want[i].Custom6, err = addrIn("deployment_descriptor."+field+"_v6", c6, 6); err != nil {
				return "", nil, err
			}
			kp, _ := r.cfg.IPAM.KindPrefix(ipam.Kind(pol))
			if err := inPool("deployment_descriptor."+field+"_v6", want[i].Custom6, pol.String()+" pool", kp); err != nil {
				return "", nil, err
			}
		}
	}
	return job, want, nil
}

// customIPs returns the addresses a deployment descriptor asks for the
// service IPs of policy pol, and the name of their field: Oakestra's
// descriptor has fields for RR and Closest only.
func customIPs(dd *api.DeploymentDescriptor, pol policy.ID) (field string, v4, v6 netip.Addr) {
	switch pol {
	case policy.RR:
		return "RR_ip", dd.RRIP, dd.RRIPv6
	case policy.Closest:
		return "closest_ip", dd.ClosestIP, dd.ClosestIPv6
	}
	return "", netip.Addr{}, netip.Addr{}
}

// deployServiceErr turns the store's errors of a service deploy into
// answers naming the field.
func deployServiceErr(err error, id, job string) error {
	var taken *takenError
	var custom *customTakenError
	switch {
	case errors.As(err, &taken) && taken.Holder != "":
		return conflictf("job_name: %s already belongs to service _id %q", job, taken.Holder)
	case errors.As(err, &taken):
		return conflictf("_id: %q already names service %s", id, taken.Job)
	case errors.As(err, &custom):
		field, _, _ := customIPs(&api.DeploymentDescriptor{}, custom.Policy)
		return newErr(ipam.ErrConflict, api.CodeAddressInUse, "deployment_descriptor.%s: requested address not free (%v)", field, custom.Err)
	}
	return err
}

// holdsCustom checks that an existing service holds the addresses a
// deploy of it asks for (else 409, as for any taken address).
func holdsCustom(meta serviceMeta, want []policyIPs) error {
	for _, w := range want {
		field, _, _ := customIPs(&api.DeploymentDescriptor{}, w.Policy)
		for _, ip := range meta.ServiceIPList {
			if ip.IpType != w.Policy.String() {
				continue
			}
			if w.Custom4.IsValid() && w.Custom4 != ip.Address {
				return newErr(ipam.ErrConflict, api.CodeAddressInUse, "deployment_descriptor.%s: service %s already holds %s", field, meta.JobName, ip.Address)
			}
			if w.Custom6.IsValid() && w.Custom6 != ip.AddressV6 {
				return newErr(ipam.ErrConflict, api.CodeAddressInUse, "deployment_descriptor.%s_v6: service %s already holds %s", field, meta.JobName, ip.AddressV6)
			}
		}
	}
	return nil
}

// DELETE /api/net/service/{_id}: a service with no instances.
func (r *Root) deleteService(ctx *fasthttp.RequestCtx, p []string) error {
	id := p[0]
	if err := validID("_id", id); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	m, err := r.store.deleteService(c, id)
	switch {
	case errors.Is(err, errNoService):
		return notFoundf("_id: no service %q", id)
	case errors.Is(err, errHasInstances):
		return conflictf("_id: service %q still has instances", id)
	case err != nil:
		return err
	}
	writeJSON(ctx, 200, api.ServiceRef{ID: id, JobName: m.JobName})
	return nil
}

// jobParams reads the path's job name and the calling cluster
// (callerCluster: cluster_id, else by source address).
func (r *Root) jobParams(ctx *fasthttp.RequestCtx, p []string) (job, cid string, err error) {
	if job, err = normJob("job_name", p[0]); err != nil {
		return "", "", err
	}
	cid, err = r.callerCluster(ctx)
	return job, cid, err
}

// GET /api/net/service/{job_name}/instances[?cluster_id=]: the service
// entry, recording the cluster's interest.
func (r *Root) serviceByJob(ctx *fasthttp.RequestCtx, p []string) error {
	job, cid, err := r.jobParams(ctx, p)
	if err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	e, hints, err := r.store.serviceByJob(c, job, cid)
	return r.answerEntry(ctx, e, hints, err, cid, notFoundf("job_name: no service %s", job))
}

// answerEntry answers a service lookup: the entry, after sending the
// hints the cluster's interest in it made; noService if there is none.
func (r *Root) answerEntry(ctx *fasthttp.RequestCtx, e api.ServiceEntry, hints []hint, err error, cid string, noService error) error {
	if errors.Is(err, errNoService) {
		return noService
	} else if err != nil {
		return clusterErr(err, cid)
	}
	r.sendHints(hints)
	e.SystemJobID = e.ID
	writeJSON(ctx, 200, e)
	return nil
}

// isNoService reports a lookup that found no service.
func isNoService(err error) bool { return errors.Is(err, errNoService) }

// GET /api/net/service/ip/{ip}/instances[?cluster_id=]: the same, by any
// service or instance IP (also written 10_30_0_2, as Oakestra does).
func (r *Root) serviceByIP(ctx *fasthttp.RequestCtx, p []string) error {
	a, err := pathIP("ip", p[0])
	if err != nil {
		return err
	}
	if err := r.inServicePools("ip", a); err != nil {
		return err
	}
	cid, err := r.callerCluster(ctx)
	if err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	free := notFoundf("ip: %s belongs to no service or instance", a)
	e, hints, err := r.entryByIP(c, a, cid, free)
	return r.answerEntry(ctx, e, hints, err, cid, free)
}

// inServicePools checks that a lies in the service or instance pools.
func (r *Root) inServicePools(field string, a netip.Addr) error {
	if a.Is4() && !r.cfg.IPAM.ServiceV4.Contains(a) || a.Is6() && !r.cfg.IPAM.ServiceV6Base.Contains(a) {
		return badf(api.CodeOutOfPool, "%s: %s is not in the service pools %s, %s", field, a, r.cfg.IPAM.ServiceV4, r.cfg.IPAM.ServiceV6Base)
	}
	return nil
}

// entryByIP is the entry of the service owning a (a service or instance
// IP), recording cluster cid's interest when set; errNoService (or free,
// for an address nobody holds).
func (r *Root) entryByIP(c context.Context, a netip.Addr, cid string, free error) (api.ServiceEntry, []hint, error) {
	owner, err := r.store.alloc.Owner(c, a)
	if errors.Is(err, ipam.ErrNotFound) {
		return api.ServiceEntry{}, nil, free
	} else if err != nil {
		return api.ServiceEntry{}, nil, fmt.Errorf("get service by ip: %w", err)
	}
	// owners are svc/<id>/<policy>[/<gen>] or inst/<id>/<n>[/<gen>]
	parts := strings.Split(owner, "/")
	if len(parts) < 3 {
		return api.ServiceEntry{}, nil, free
	}
	return r.store.service(c, parts[1], cid)
}

// DELETE /api/net/interest/{job_name}?cluster_id=: the cluster's interest
// goes.
func (r *Root) dropInterest(ctx *fasthttp.RequestCtx, p []string) error {
	job, cid, err := r.jobParams(ctx, p)
	if err != nil {
		return err
	}
	if cid == "" {
		return badf(api.CodeMissingField, "cluster_id: missing query parameter, and no one registered cluster has the caller's address %s", ctx.RemoteIP())
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	id, err := r.store.serviceID(c, job)
	if errors.Is(err, errNoService) {
		return notFoundf("job_name: no service %s", job)
	} else if err != nil {
		return err
	}
	hints, err := r.store.dropInterest(c, id, cid)
	if err != nil {
		return err
	}
	r.sendHints(hints)
	writeJSON(ctx, 200, api.ClusterInterest{ClusterID: cid, JobName: job})
	return nil
}
