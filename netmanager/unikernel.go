package netmanager

import (
	"context"
	"errors"
	"net/http"
	"strconv"
)

// Unikernels and VMs (Oakestra's POST /unikernel/deploy and
// /unikernel/undeploy): the node engine starts the VM inside a network
// namespace the NetManager makes, named after the instance, so the daemon
// creates that namespace, attaches it like a container's, and gives the
// VM its side inside it (unikernel_linux.go): a tap device tap0 on a
// bridge virbr0 at 192.168.1.1/30, the guest at 192.168.1.2 with its
// traffic translated to and from the namespace IP. Those names and
// addresses are what Oakestra's node engine configures its VMs with.

// Guest-side addresses inside a unikernel namespace (Oakestra's).
const (
	vmBridge  = "virbr0"
	vmTap     = "tap0"
	vmGateway = "192.168.1.1/30"
	vmGuest   = "192.168.1.2"
)

// unikernelNetns is the name of the namespace of instance n of job:
// Oakestra's "<service>.instance.<n>".
func unikernelNetns(job string, n int) string {
	return job + ".instance." + strconv.Itoa(n)
}

// handleUnikernelDeploy is POST /unikernel/deploy {serviceName,
// instanceNumber, portMappings}: the namespace is made here, then
// attached as POST /container/deploy would; the answer is the same.
func (d *Daemon) handleUnikernelDeploy(w http.ResponseWriter, r *http.Request) {
	var req DeployRequest
	if err := decodeBody(w, r, &req); err != nil {
		d.metrics.deployErrors.Inc()
		writeError(w, err)
		return
	}
	resp, err := d.DeployUnikernel(r.Context(), req)
	if err != nil {
		d.log.Warn("unikernel deploy", "service", req.ServiceName, "instance", req.InstanceNumber, "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// DeployUnikernel makes instance req's namespace, attaches it and sets up
// the VM's side in it. On error nothing is left behind (a namespace that
// existed before, of an instance deployed here, is left alone).
func (d *Daemon) DeployUnikernel(ctx context.Context, req DeployRequest) (DeployResponse, error) {
	if req.PID > 0 || req.Netns != "" {
		return DeployResponse{}, badRequest("bad_request", "pid, netns: the daemon makes a unikernel's namespace; give neither")
	}
	if req.Client || req.ContainerID != "" {
		return DeployResponse{}, badRequest("bad_request", "client, containerId: not for unikernels")
	}
	job, err := normJob(req.ServiceName)
	if err != nil {
		return DeployResponse{}, badRequest("bad_name", "%v", err)
	}
	if req.InstanceNumber < 0 {
		return DeployResponse{}, badRequest("bad_instance", "instanceNumber: %d is negative", req.InstanceNumber)
	}
	d.mu.Lock()
	var pre error
	switch {
	case d.st == nil || d.st.Subnets == nil:
		pre = d.notRegisteredLocked()
	case d.findLocked(job, req.InstanceNumber) != nil:
		pre = conflict("already_deployed", "serviceName %s instance %d: already deployed on this node", job, req.InstanceNumber)
	}
	d.mu.Unlock()
	if pre != nil {
		return DeployResponse{}, pre
	}
	name := unikernelNetns(job, req.InstanceNumber)
	path, created, err := createNetns(name)
	if err != nil {
		return DeployResponse{}, err
	}
	req.ServiceName, req.Netns, req.PID = job, path, 0
	resp, err := d.Deploy(ctx, req)
	if err == nil {
		if err = setupVMNet(name, resp.IfName, resp.NsAddress); err != nil {
			if uerr := d.Undeploy(ctx, UndeployRequest{ServiceName: job, InstanceNumber: req.InstanceNumber}); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
	}
	if err != nil {
		if created && !errors.Is(err, ErrConflict) {
			if derr := deleteNetns(name); derr != nil {
				err = errors.Join(err, derr)
			}
		}
		return DeployResponse{}, err
	}
	return resp, nil
}

// handleUnikernelUndeploy is POST /unikernel/undeploy {serviceName,
// instanceNumber}: detached as /container/undeploy does, and the
// namespace deleted.
func (d *Daemon) handleUnikernelUndeploy(w http.ResponseWriter, r *http.Request) {
	var req UndeployRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	job, err := normJob(req.ServiceName)
	if err != nil {
		writeError(w, badRequest("bad_name", "%v", err))
		return
	}
	if req.InstanceNumber < 0 {
		writeError(w, badRequest("bad_instance", "instanceNumber: %d is negative", req.InstanceNumber))
		return
	}
	req.ServiceName, req.ContainerID = job, ""
	uerr := d.Undeploy(r.Context(), req)
	if uerr != nil && !errors.Is(uerr, ErrNotFound) {
		d.log.Warn("unikernel undeploy", "service", job, "instance", req.InstanceNumber, "err", uerr)
		writeError(w, uerr)
		return
	}
	// Detached (or never attached): the namespace goes either way.
	if err := deleteNetns(unikernelNetns(job, req.InstanceNumber)); err != nil {
		writeError(w, err)
		return
	}
	if uerr != nil {
		writeError(w, uerr)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"serviceName": job, "instanceNumber": req.InstanceNumber})
}
