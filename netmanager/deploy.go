package netmanager

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/netmanager/localapi"
)

// pendingDeploy is a deploy between its local set-up and its commit.
type pendingDeploy struct {
	c    *Container
	undo []func() // in order of set-up; undone in reverse
	// saves is d.saves when the deploy let go of d.mu.
	saves uint64
}

// DeployRequest is POST /container/deploy (Oakestra's fields plus ours:
// netns, containerId, ifName, client).
type DeployRequest = localapi.DeployRequest

// DeployResponse is its answer.
type DeployResponse = localapi.DeployResponse

// Deploy attaches a container. On any error nothing is left behind.
//
// The local set-up (nsIPs, veth, port mappings, data plane port) runs
// under d.mu; the report to the cluster, which may take its full timeout
// when the cluster is down, does not, so /status, metrics and other
// deploys go on meanwhile. The instance and its host ports are reserved
// (d.deploying) across the call; once the cluster answered, the deploy is
// committed to the state file, or rolled back completely, under d.mu.
func (d *Daemon) Deploy(ctx context.Context, r DeployRequest) (resp DeployResponse, err error) {
	if r.Client {
		return d.deployClient(ctx, r)
	}
	return d.deploy(ctx, r, false)
}

// deploy is Deploy of a named instance; client marks an instance of the
// node's client service (deployClient).
func (d *Daemon) deploy(ctx context.Context, r DeployRequest, client bool) (resp DeployResponse, err error) {
	job, err := normJob(r.ServiceName)
	if err != nil {
		return resp, badRequest("bad_name", "%v", err)
	}
	if r.InstanceNumber < 0 {
		return resp, badRequest("bad_instance", "instanceNumber: %d is negative", r.InstanceNumber)
	}
	switch {
	case r.PID < 0:
		return resp, badRequest("bad_pid", "pid: %d is negative", r.PID)
	case r.PID > 0 && r.Netns != "":
		return resp, badRequest("bad_request", "pid and netns: give one, not both")
	case r.PID == 0 && r.Netns == "":
		return resp, badRequest("missing_field", "pid: missing (or netns)")
	}
	maps, err := ParsePortMappings(r.PortMappings)
	if err != nil {
		return resp, badRequest("bad_port_mappings", "%v", err)
	}
	if r.IfName != "" && !validIfName(r.IfName) {
		return resp, badRequest("bad_if_name", "ifName: %q is not an interface name", r.IfName)
	}
	if r.ContainerID != "" && !validContainerID(r.ContainerID) {
		return resp, badRequest("bad_container_id", "containerId: %q: 1-256 characters of letters, digits and . _ -, starting with a letter or digit", r.ContainerID)
	}
	owner := ownerOf(job, r.InstanceNumber)

	d.mu.Lock()
	p, err := d.setUpDeployLocked(job, owner, r, maps, client)
	cl := d.cluster
	d.mu.Unlock()
	if err != nil {
		return resp, err
	}
	c := p.c
	var rerr error
	if cl != nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		rerr = cl.ReportDeployed(rctx, job, r.InstanceNumber, c.NSIP4, c.NSIP6)
		cancel()
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.deploying, owner)
	if rerr != nil {
		err = fmt.Errorf("report deploy of %s to cluster: %w: %w", owner, ErrCluster, rerr)
	} else {
		st := d.st
		st.Containers = append(st.Containers, c)
		p.undo = append(p.undo, func() {
			st.Containers = slices.DeleteFunc(st.Containers, func(o *Container) bool { return o == c })
		})
		err = d.saveLocked()
	}
	if err != nil {
		d.rollBackLocked(p)
		if d.saves != p.saves {
			// Another change saved the state while this deploy was out of
			// the lock, so the file holds its nsIPs: write it again, as if
			// this deploy had never been.
			if serr := d.saveLocked(); serr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: %w", serr))
			}
		}
		return resp, err
	}
	d.metrics.deploys.Inc()
	d.log.Info("deployed", "service", job, "instance", r.InstanceNumber, "veth", c.HostIf,
		"ns_ip", c.NSIP4, "ns_ip6", c.NSIP6, "ports", r.PortMappings, "container_id", c.ContainerID)
	gw := d.st.Subnets.Gateway()
	resp = DeployResponse{ServiceName: job, NsAddress: c.NSIP4.String(), NsAddressV6: c.NSIP6.String(),
		InstanceNumber: c.Instance, IfName: c.ContIf, MAC: net.HardwareAddr(c.ContMAC).String(),
		HostIf: c.HostIf, HostMAC: net.HardwareAddr(c.HostMAC).String(),
		Gateway: gw.V4.String(), GatewayV6: gw.V6.String(), MTU: c.MTU}
	if svcs := d.svcs.Load(); svcs != nil {
		if a, ok := svcs.View.InstanceIP(job, c.Instance, false); ok {
			resp.InstanceIP = a.String()
		}
		if a, ok := svcs.View.InstanceIP(job, c.Instance, true); ok {
			resp.InstanceIPv6 = a.String()
		}
	}
	return resp, nil
}

// rollBackLocked undoes a deploy's set-up in reverse order. d.mu held.
func (d *Daemon) rollBackLocked(p *pendingDeploy) {
	for i := len(p.undo) - 1; i >= 0; i-- {
		p.undo[i]()
	}
	d.syncLocalJobsLocked()
	d.metrics.deployErrors.Inc()
}

// setUpDeployLocked checks that the instance and its host ports are free,
// sets the container up on the node (nsIPs, veth, port mappings, data
// plane port) and reserves it in d.deploying. On error it has undone
// everything. d.mu held.
func (d *Daemon) setUpDeployLocked(job, owner string, r DeployRequest, maps []PortMapping, client bool) (_ *pendingDeploy, err error) {
	st := d.st
	if st.Subnets == nil {
		return nil, d.notRegisteredLocked()
	}
	if c := d.findLocked(job, r.InstanceNumber); c != nil {
		return nil, conflict("already_deployed", "serviceName %s instance %d: already deployed (%s)", job, r.InstanceNumber, c.NSIP4)
	}
	if _, ok := d.deploying[owner]; ok {
		return nil, conflict("deploy_in_progress", "serviceName %s instance %d: a deploy of it is in progress", job, r.InstanceNumber)
	}
	if d.undeploying[owner] {
		return nil, conflict("undeploy_in_progress", "serviceName %s instance %d: its undeploy is still reporting to the cluster", job, r.InstanceNumber)
	}
	ifName := cmp.Or(r.IfName, d.cfg.ContainerIf)
	if r.ContainerID != "" {
		for _, c := range d.nftContainersLocked() {
			if c.ContainerID == r.ContainerID && c.ContIf == ifName {
				return nil, conflict("already_deployed", "containerId %s ifName %s: already attached as %s", r.ContainerID, ifName, ownerOf(c.Job, c.Instance))
			}
		}
	}
	for _, m := range maps {
		for _, c := range d.nftContainersLocked() {
			if slices.ContainsFunc(c.PortMappings, func(o PortMapping) bool { return o.HostPort == m.HostPort && o.Proto == m.Proto }) {
				return nil, conflict("port_in_use", "portMappings: host port %d/%s is used by %s", m.HostPort, m.Proto, ownerOf(c.Job, c.Instance))
			}
		}
	}
	nsh, err := openNetns(r.PID, r.Netns, r.NetnsInode)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()

	p := &pendingDeploy{}
	defer func() {
		if err != nil {
			d.rollBackLocked(p)
		}
	}()
	pair, err := st.Subnets.Alloc(owner)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			return nil, conflict("exhausted", "node subnet %s: no free namespace IP", st.Subnets.Subnet().V4)
		}
		return nil, err
	}
	p.undo = append(p.undo, func() { _ = st.Subnets.Release(owner) })
	c := &Container{
		Job: job, Instance: r.InstanceNumber, PID: r.PID, Netns: netnsName(r.Netns),
		ContainerID: r.ContainerID, Network: r.Network, Client: client,
		HostIf: hostIfName(job, r.InstanceNumber), HostMAC: macJSON(hostMAC(pair.V4)),
		ContIf: ifName, ContMAC: macJSON(containerMAC(pair.V4)),
		NSIP4: pair.V4, NSIP6: pair.V6, MTU: d.cfg.MTU, PortMappings: maps,
		Deployed: time.Now().UTC(),
	}
	p.c = c
	// Reserved, and in the nft table (its port mappings, and its veth in
	// the ports set that isolation lets through) before the veth exists.
	d.deploying[owner] = p
	p.undo = append(p.undo, func() {
		delete(d.deploying, owner)
		_ = d.applyNftLocked()
	})
	if err := d.applyNftLocked(); err != nil {
		return nil, fmt.Errorf("nft %s: %w", owner, err)
	}
	// Offloads go off only where the AF_XDP workers carry every packet.
	keepOffloads := d.cfg.Dataplane != "xdp" || d.cfg.Offload == "on"
	if err := attach(c, nsh, st.Subnets.Gateway(), keepOffloads); err != nil {
		return nil, fmt.Errorf("attach %s: %w", owner, err)
	}
	p.undo = append(p.undo, func() { _ = detach(c) })
	if err := d.dp.AddPort(c.port()); err != nil {
		return nil, fmt.Errorf("data plane add port %s: %w", c.HostIf, err)
	}
	p.undo = append(p.undo, func() { _ = d.dp.RemovePort(c.port()) })
	d.syncLocalJobsLocked()
	p.saves = d.saves
	return p, nil
}

// netnsName is how the state and /status name a netns path: a caller's
// descriptor (/proc/PID/fd/N, gone with the call) by its namespace
// ("net:[4026532345]").
func netnsName(path string) string {
	if strings.HasPrefix(path, "/proc/") && strings.Contains(path, "/fd/") {
		if l, err := os.Readlink(path); err == nil {
			return l
		}
	}
	return path
}

// notRegisteredLocked is the error of a deploy before registration.
// d.mu held.
func (d *Daemon) notRegisteredLocked() error {
	msg := "node not registered with a cluster: POST /register first"
	if d.lastErr != "" {
		msg += " (last attempt: " + d.lastErr + ")"
	}
	return &apiError{kind: ErrNotRegistered, code: "not_registered", msg: msg}
}

func (d *Daemon) findLocked(job string, instance int) *Container {
	for _, c := range d.st.Containers {
		if c.Job == job && c.Instance == instance {
			return c
		}
	}
	return nil
}

// UndeployRequest is POST /container/undeploy and /docker/undeploy.
type UndeployRequest = localapi.UndeployRequest

// Undeploy detaches a container: data plane, veth, port mappings, nsIPs
// (into quarantine), state, then tells the cluster. Like Deploy's, the
// report goes out without d.mu; the instance stays reserved
// (d.undeploying) until it is done, so a new deploy of it cannot report
// "deployed" to the cluster ahead of this "undeployed".
func (d *Daemon) Undeploy(ctx context.Context, r UndeployRequest) error {
	var job string
	var err error
	d.mu.Lock()
	switch {
	case r.ServiceName == "" && r.ContainerID != "":
		job, r.InstanceNumber, err = d.byContainerLocked(r.ContainerID, r.IfName)
	default:
		job, err = normJob(r.ServiceName)
		if err != nil {
			err = badRequest("bad_name", "%v", err)
		}
	}
	if err != nil {
		d.mu.Unlock()
		return err
	}
	owner := ownerOf(job, r.InstanceNumber)
	var client bool
	if c := d.findLocked(job, r.InstanceNumber); c != nil {
		client = c.Client
	}
	errs, err := d.undeployLocked(job, owner, r.InstanceNumber)
	cl := d.cluster
	if err == nil && cl != nil {
		d.undeploying[owner] = true
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if cl != nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := cl.ReportUndeployed(rctx, job, r.InstanceNumber); err != nil {
			d.metrics.reportErrors.Inc()
			d.log.Warn("report undeploy to cluster", "service", job, "instance", r.InstanceNumber, "err", err)
		}
		cancel()
		d.mu.Lock()
		delete(d.undeploying, owner)
		d.mu.Unlock()
	}
	if client {
		d.releaseClient(ctx, r.InstanceNumber)
	}
	return errors.Join(errs...)
}

// byContainerLocked finds the attachment of a runtime's container (any
// interface when ifName is empty). d.mu held.
func (d *Daemon) byContainerLocked(id, ifName string) (string, int, error) {
	if d.st == nil {
		return "", 0, &apiError{kind: ErrNotFound, code: "not_deployed", msg: "containerId " + id + ": not attached on this node"}
	}
	for _, c := range d.nftContainersLocked() {
		if c.ContainerID == id && (ifName == "" || c.ContIf == ifName) {
			return c.Job, c.Instance, nil
		}
	}
	return "", 0, &apiError{kind: ErrNotFound, code: "not_deployed",
		msg: fmt.Sprintf("containerId %s ifName %q: not attached on this node", id, ifName)}
}

// undeployLocked is Undeploy's local part. err: nothing was undeployed;
// errs: it was, with these problems. d.mu held.
func (d *Daemon) undeployLocked(job, owner string, instance int) (errs []error, err error) {
	st := d.st
	c := d.findLocked(job, instance)
	if c == nil && d.deploying[owner] != nil {
		return nil, conflict("deploy_in_progress", "serviceName %s instance %d: its deploy is in progress", job, instance)
	}
	if c == nil {
		return nil, &apiError{kind: ErrNotFound, code: "not_deployed", msg: fmt.Sprintf("serviceName %s instance %d: not deployed on this node", job, instance)}
	}
	if err := d.dp.RemovePort(c.port()); err != nil {
		errs = append(errs, fmt.Errorf("data plane remove port %s: %w", c.HostIf, err))
	}
	if err := detach(c); err != nil {
		return nil, errors.Join(append(errs, err)...)
	}
	st.Containers = slices.DeleteFunc(st.Containers, func(o *Container) bool { return o == c })
	d.syncLocalJobsLocked()
	if err := d.applyNftLocked(); err != nil {
		errs = append(errs, err)
	}
	d.releaseLocked(owner, c.NSIP4)
	if err := d.saveLocked(); err != nil {
		errs = append(errs, err)
	}
	d.metrics.undeploys.Inc()
	d.log.Info("undeployed", "service", job, "instance", instance, "veth", c.HostIf, "ns_ip", c.NSIP4)
	return errs, nil
}

// quarantinePrefix starts the placeholder owners of quarantined nsIPs.
const quarantinePrefix = "quarantine/"

func quarantineOwner(a netip.Addr) string { return quarantinePrefix + a.String() }

// releaseLocked frees owner's nsIPs; with a quarantine they stay held by a
// placeholder owner until it expires. d.mu held.
func (d *Daemon) releaseLocked(owner string, v4 netip.Addr) {
	_ = d.st.Subnets.Release(owner)
	if d.cfg.Quarantine <= 0 {
		return
	}
	if _, err := d.st.Subnets.Adopt(quarantineOwner(v4), v4); err == nil {
		d.st.Quarantine[v4] = time.Now().Add(d.cfg.Quarantine).UTC()
	}
}

// expireQuarantine frees quarantined nsIPs whose time has come.
func (d *Daemon) expireQuarantine() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st == nil || d.st.Subnets == nil || len(d.st.Quarantine) == 0 {
		return
	}
	now := time.Now()
	changed := false
	for a, until := range d.st.Quarantine {
		if now.Before(until) {
			continue
		}
		_ = d.st.Subnets.Release(quarantineOwner(a))
		delete(d.st.Quarantine, a)
		changed = true
	}
	if changed {
		if err := d.saveLocked(); err != nil {
			d.log.Error("save state", "err", err)
		}
	}
}
