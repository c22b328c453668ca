package control

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// POST /api/net/instance/deploy: allocate an instance's IPs (idempotent:
// an existing instance keeps them; a new cluster_id is recorded).
func (r *Root) deployInstance(ctx *fasthttp.RequestCtx, _ []string) error {
	var in api.DeployInstance
	if err := decodeDeployInstance(ctx, &in); err != nil {
		return err
	}
	if in.ID == "" { // an older system manager's name of it
		in.ID = in.SystemJobID
	}
	if err := validID("_id", in.ID); err != nil {
		return err
	}
	if err := validID("cluster_id", in.ClusterID); err != nil {
		return err
	}
	if in.InstanceNumber < 0 {
		return badf(api.CodeBadInstanceNumber, "instance_number: %d is negative", in.InstanceNumber)
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	ch, err := r.store.deployInstance(c, in.ID, in.InstanceNumber, in.ClusterID)
	if errors.Is(err, errNoService) {
		return notFoundf("_id: no service %q", in.ID)
	} else if err != nil {
		return clusterErr(err, in.ClusterID)
	}
	r.instancesChanged(c, ch, in.ID, api.TypeDeployment)
	writeInstanceAnswer(ctx, &api.InstanceAnswer{JobName: ch.JobName, Instance: ch.Instance})
	return nil
}

// instancesChanged tells the interested clusters of what a deploy or
// delete of instances of service id changed, and hints the links a change
// of the clusters hosting it makes or ends.
func (r *Root) instancesChanged(c context.Context, ch instanceChange, id, typ string) {
	if ch.Rehost {
		r.rehost(c, id)
	}
	if !ch.Changed {
		return
	}
	if typ == api.TypeDeployment {
		r.notifyClusters(ch.Notify, ch.JobName, ch.Instance.InstanceNumber, typ)
	}
	for _, n := range ch.Removed {
		r.notifyClusters(ch.Notify, ch.JobName, n, typ)
	}
}

// DELETE /api/net/{_id}/{instance_number}: one instance, or all (-1).
func (r *Root) deleteInstance(ctx *fasthttp.RequestCtx, p []string) error {
	id, ns := p[0], p[1]
	if err := validID("_id", id); err != nil {
		return err
	}
	n, err := strconv.Atoi(ns)
	if err != nil || n < -1 {
		return badf(api.CodeBadInstanceNumber, "instance_number: %q is not an integer >= -1", ns)
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	ch, err := r.store.deleteInstances(c, id, n)
	// The records are gone whatever happened to the release: clusters
	// hear of it now.
	r.instancesChanged(c, ch, id, api.TypeUndeployment)
	switch {
	case errors.Is(err, errNoService):
		return notFoundf("_id: no service %q", id)
	case errors.Is(err, errNoInstance):
		return notFoundf("instance_number: service %q has no instance %d", id, n)
	case err != nil:
		return err
	}
	if ch.Removed == nil {
		ch.Removed = []int{}
	}
	writeJSON(ctx, 200, api.InstancesRemoved{ID: id, JobName: ch.JobName, Removed: ch.Removed})
	return nil
}

// POST /api/net/service/net_deploy_status: where instances run.
func (r *Root) netDeployStatus(ctx *fasthttp.RequestCtx, _ []string) error {
	return r.deployStatus(ctx, false)
}

// POST /api/net/service/net_undeploy_status, Oakwire's extension: the
// instances stopped at the given host; their location is cleared where it
// is still that host (a migration may already have moved them).
func (r *Root) netUndeployStatus(ctx *fasthttp.RequestCtx, _ []string) error {
	return r.deployStatus(ctx, true)
}

func (r *Root) deployStatus(ctx *fasthttp.RequestCtx, undeploy bool) error {
	var in api.DeployStatus
	if err := decodeBody(ctx, &in); err != nil {
		return err
	}
	list, err := r.statusIn(&in, undeploy)
	if err != nil {
		return err
	}
	id := in.JobID
	c, cancel := r.ctx(ctx)
	defer cancel()
	job, n, to, err := r.store.setStatus(c, id, list, undeploy)
	if err != nil {
		return statusErr(err, id)
	}
	typ := api.TypeDeployment
	if undeploy {
		typ = api.TypeUndeployment
	}
	for _, st := range list {
		r.notifyClusters(to, job, st.Number, typ)
	}
	writeJSON(ctx, 200, api.StatusAnswer{JobID: id, JobName: job, Updated: n})
	return nil
}

// statusErr names the fields of a deploy status's store error.
func statusErr(err error, id string) error {
	var ni *noInstanceError
	switch {
	case errors.Is(err, errNoService):
		return notFoundf("job_id: no service %q", id)
	case errors.As(err, &ni):
		return notFoundf("instances: service %q has no instance %s", id, ni.Number)
	}
	return err
}

// statusIn validates a deploy (or undeploy) status.
func (r *Root) statusIn(in *api.DeployStatus, undeploy bool) ([]instanceStatus, error) {
	if err := validID("job_id", in.JobID); err != nil {
		return nil, err
	}
	if len(in.Instances) == 0 {
		return nil, badf(api.CodeMissingField, "instances: missing or empty")
	}
	list := make([]instanceStatus, 0, len(in.Instances))
	seen := map[int]bool{}
	for i, s := range in.Instances {
		f := func(name string) string { return fmt.Sprintf("instances[%d].%s", i, name) }
		if s.InstanceNumber < 0 {
			return nil, badf(api.CodeBadInstanceNumber, "%s: %d is negative", f("instance_number"), s.InstanceNumber)
		}
		if seen[s.InstanceNumber] {
			return nil, badf(api.CodeDuplicate, "%s: %d listed twice", f("instance_number"), s.InstanceNumber)
		}
		seen[s.InstanceNumber] = true
		host, err := addrIn(f("host_ip"), s.HostIP, 0)
		if err != nil {
			return nil, err
		}
		if err := portIn(f("host_port"), int(s.HostPort)); err != nil {
			return nil, err
		}
		st := instanceStatus{Number: s.InstanceNumber, HostIP: host.String(), HostPort: int(s.HostPort)}
		if !undeploy {
			ns4, err := r.workerAddr(f("namespace_ip"), s.NamespaceIP, 4)
			if err != nil {
				return nil, err
			}
			st.NS4 = ns4.String()
			if s.NamespaceIPv6.IsValid() {
				ns6, err := r.workerAddr(f("namespace_ip_v6"), s.NamespaceIPv6, 6)
				if err != nil {
					return nil, err
				}
				st.NS6 = ns6.String()
			}
		}
		list = append(list, st)
	}
	return list, nil
}

// workerAddr checks a namespace IP: of family fam, in the worker subnets.
func (r *Root) workerAddr(field string, a netip.Addr, fam int) (netip.Addr, error) {
	a, err := addrIn(field, a, fam)
	if err != nil {
		return a, err
	}
	lo, hi := r.workerV4Lo, r.workerV4Hi
	if fam == 6 {
		lo, hi = r.workerV6Lo, r.workerV6Hi
	}
	if a.Less(lo) || hi.Less(a) {
		return a, badf(api.CodeOutOfPool, "%s: %s outside the worker subnets %s–%s", field, a, lo, hi)
	}
	return a, nil
}
