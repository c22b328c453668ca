package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/internal/loadtool"
	"github.com/oakwire/oakwire/internal/testbed"
)

// Default ports of the owload servers StartEcho starts.
const (
	EchoUDPPort = 7000
	EchoTCPPort = 7001
	SinkPort    = 7002
)

// ClientServiceID is the _id of the service client containers belong to
// (AddClient), job "oakwire.demo.client.default".
const ClientServiceID = "owclient"

// DeployService creates service id with job name job
// ("app.appns.service.servicens") through root (POST
// /api/net/service/deploy) and returns its service IPs, one pair per policy.
func (d *Deployment) DeployService(ctx context.Context, id, job string) (*Service, error) {
	p := strings.Split(job, ".")
	if len(p) != 4 {
		return nil, fmt.Errorf("deploy service %s: job %q: want app.appns.service.servicens", id, job)
	}
	body := map[string]any{"_id": id, "deployment_descriptor": map[string]any{
		"app_name": p[0], "app_ns": p[1], "microservice_name": p[2], "microservice_namespace": p[3]}}
	var ans struct {
		JobName string          `json:"job_name"`
		IPs     []api.ServiceIP `json:"service_ip_list"`
	}
	if err := d.RootCall(ctx, "POST", "/api/net/service/deploy", body, &ans); err != nil {
		return nil, fmt.Errorf("deploy service %s: %w", id, err)
	}
	s := &Service{ID: id, Job: ans.JobName, IPs: map[string]IPPair{}}
	for _, ip := range ans.IPs {
		s.IPs[ip.IpType] = IPPair{ip.Address, ip.AddressV6}
	}
	d.mu.Lock()
	d.services[id] = s
	d.mu.Unlock()
	return s, nil
}

// Service returns a service deployed through d, or nil.
func (d *Deployment) Service(id string) *Service {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.services[id]
}

// Instance returns instance n of service id, or nil.
func (d *Deployment) Instance(id string, n int) *Instance {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.instances[instKey{id, n}]
}

// ServiceEntry is root's entry of a service (GET
// /api/net/service/{job}/instances).
func (d *Deployment) ServiceEntry(ctx context.Context, job string) (*api.ServiceEntry, error) {
	var e api.ServiceEntry
	if err := d.RootCall(ctx, "GET", "/api/net/service/"+job+"/instances", nil, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// DeployInstance places instance n of service id on node: root allocates
// its instance IPs (POST /api/net/instance/deploy), the harness creates an
// empty container namespace, and the node's netmanager attaches it (POST
// /container/deploy with netns), which gives it namespace IPs.
func (d *Deployment) DeployInstance(ctx context.Context, id string, n int, node *Node) (*Instance, error) {
	return d.DeployInstanceMapped(ctx, id, n, node, "")
}

// DeployInstanceMapped is DeployInstance with port mappings (netmanager's
// portMappings, "8080:80/tcp;5353:53/udp": host port on the node's own
// addresses → container port).
func (d *Deployment) DeployInstanceMapped(ctx context.Context, id string, n int, node *Node, portMappings string) (*Instance, error) {
	return d.deployInstance(ctx, id, n, node, portMappings, "")
}

// deployInstance is DeployInstanceMapped into namespace ns, or into a new
// one of its own when ns is "".
func (d *Deployment) deployInstance(ctx context.Context, id string, n int, node *Node, portMappings, ns string) (*Instance, error) {
	s := d.Service(id)
	if s == nil {
		return nil, fmt.Errorf("deploy instance %s/%d: service not deployed through this deployment", id, n)
	}
	if d.Instance(id, n) != nil {
		return nil, fmt.Errorf("deploy instance %s/%d: already deployed", id, n)
	}
	ip, err := d.rootInstance(ctx, id, n, node.Cluster.ID)
	if err != nil {
		return nil, err
	}
	inst := &Instance{Service: s, Number: n, IP: ip, PortMappings: portMappings, ExternalNS: ns}
	if err := d.attach(ctx, inst, node); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.instances[instKey{id, n}] = inst
	d.mu.Unlock()
	return inst, nil
}

// rootInstance places instance n of service id in cluster cid at root
// (POST /api/net/instance/deploy) and returns its instance IPs.
func (d *Deployment) rootInstance(ctx context.Context, id string, n int, cid string) (IPPair, error) {
	var ans struct {
		IP  string `json:"instance_ip"`
		IP6 string `json:"instance_ip_v6"`
	}
	body := map[string]any{"_id": id, "instance_number": n, "cluster_id": cid}
	if err := d.RootCall(ctx, "POST", "/api/net/instance/deploy", body, &ans); err != nil {
		return IPPair{}, fmt.Errorf("deploy instance %s/%d: %w", id, n, err)
	}
	v4, err4 := netip.ParseAddr(ans.IP)
	v6, err6 := netip.ParseAddr(ans.IP6)
	if err := errors.Join(err4, err6); err != nil {
		return IPPair{}, fmt.Errorf("deploy instance %s/%d: instance IPs: %w", id, n, err)
	}
	return IPPair{v4, v6}, nil
}

// attach creates inst's container namespace on node, has the netmanager
// attach it and starts inst's servers there.
func (d *Deployment) attach(ctx context.Context, inst *Instance, node *Node) error {
	ns := inst.ExternalNS
	if ns == "" {
		ns = fmt.Sprintf("%s-%s-%s%d", d.Bed.Prefix(), node.Name, shortName(inst.Service.Job), inst.Number)
		if err := d.newNS(ns); err != nil {
			return fmt.Errorf("deploy instance %s on %s: %w", inst.Name(), node.Name, err)
		}
	}
	req := map[string]any{"serviceName": inst.Service.Job, "instanceNumber": inst.Number,
		"portMappings": inst.PortMappings, "netns": "/run/netns/" + ns}
	var ans struct {
		NsAddress   string `json:"nsAddress"`
		NsAddressV6 string `json:"nsAddressv6"`
	}
	if err := d.NodeCall(ctx, node, "POST", "/container/deploy", req, &ans); err != nil {
		return errors.Join(fmt.Errorf("deploy instance %s on %s: %w", inst.Name(), node.Name, err), d.dropOwnNS(inst, ns))
	}
	v4, err4 := netip.ParseAddr(ans.NsAddress)
	v6, err6 := netip.ParseAddr(ans.NsAddressV6)
	if err := errors.Join(err4, err6); err != nil {
		return fmt.Errorf("deploy instance %s on %s: nsIPs: %w", inst.Name(), node.Name, err)
	}
	inst.Node, inst.NS, inst.NSIP = node, ns, IPPair{v4, v6}
	for _, sv := range inst.servers {
		if err := d.startServer(ctx, inst, sv); err != nil {
			return err
		}
	}
	return nil
}

// detach stops inst's servers, has the netmanager detach it (POST
// /container/undeploy) and deletes its namespace.
func (d *Deployment) detach(ctx context.Context, inst *Instance) error {
	d.stopServers(inst)
	req := map[string]any{"serviceName": inst.Service.Job, "instanceNumber": inst.Number}
	err := d.NodeCall(ctx, inst.Node, "POST", "/container/undeploy", req, nil)
	if err != nil {
		err = fmt.Errorf("undeploy instance %s on %s: %w", inst.Name(), inst.Node.Name, err)
	}
	return errors.Join(err, d.dropOwnNS(inst, inst.NS))
}

// dropOwnNS deletes ns unless it is the instance's external namespace.
func (d *Deployment) dropOwnNS(inst *Instance, ns string) error {
	if inst.ExternalNS != "" {
		return nil
	}
	return d.dropNS(ns)
}

// DeployInstanceIn is DeployInstance into an existing network namespace ns
// (named, in /run/netns) that the deployment neither makes nor deletes.
func (d *Deployment) DeployInstanceIn(ctx context.Context, id string, n int, node *Node, ns string) (*Instance, error) {
	return d.deployInstance(ctx, id, n, node, "", ns)
}

// AddClientIn is AddClient into an existing network namespace ns.
func (d *Deployment) AddClientIn(ctx context.Context, node *Node, ns string) (*Instance, error) {
	n, err := d.nextClient(ctx)
	if err != nil {
		return nil, err
	}
	return d.deployInstance(ctx, ClientServiceID, n, node, "", ns)
}

// UndeployInstance removes instance n of service id: the netmanager
// detaches its container, then root deletes the instance (DELETE
// /api/net/{id}/{n}), which frees its instance IPs.
func (d *Deployment) UndeployInstance(ctx context.Context, id string, n int) error {
	inst := d.Instance(id, n)
	if inst == nil {
		return fmt.Errorf("undeploy instance %s/%d: not deployed", id, n)
	}
	err := d.detach(ctx, inst)
	d.mu.Lock()
	delete(d.instances, instKey{id, n})
	d.mu.Unlock()
	if rerr := d.RootCall(ctx, "DELETE", fmt.Sprintf("/api/net/%s/%d", id, n), nil, nil); rerr != nil {
		err = errors.Join(err, fmt.Errorf("undeploy instance %s/%d: %w", id, n, rerr))
	}
	return err
}

// MoveInstance migrates instance n of service id to node to, which may be
// in another cluster: detached on its node, placed again at root in to's
// cluster (same instance number: it keeps its instance IPs) and attached
// on to, with its servers restarted there. It updates the *Instance in
// place (Node, NS, NSIP): do not read those fields concurrently with a
// move.
func (d *Deployment) MoveInstance(ctx context.Context, id string, n int, to *Node) (*Instance, error) {
	inst := d.Instance(id, n)
	if inst == nil {
		return nil, fmt.Errorf("move instance %s/%d: not deployed", id, n)
	}
	if err := d.detach(ctx, inst); err != nil {
		return nil, err
	}
	ip, err := d.rootInstance(ctx, id, n, to.Cluster.ID)
	if err != nil {
		return nil, err
	}
	if ip != inst.IP {
		return nil, fmt.Errorf("move instance %s/%d: root changed its instance IPs from %v to %v", id, n, inst.IP, ip)
	}
	if err := d.attach(ctx, inst, to); err != nil {
		return nil, err
	}
	return inst, nil
}

// AddClient deploys a client container on node: a new instance of the
// client service (created on first use), so the data plane can translate
// its source to its own instance IP.
func (d *Deployment) AddClient(ctx context.Context, node *Node) (*Instance, error) {
	n, err := d.nextClient(ctx)
	if err != nil {
		return nil, err
	}
	return d.DeployInstance(ctx, ClientServiceID, n, node)
}

// nextClient deploys the client service on first use and returns the next
// client instance number.
func (d *Deployment) nextClient(ctx context.Context) (int, error) {
	if d.Service(ClientServiceID) == nil {
		if _, err := d.DeployService(ctx, ClientServiceID, "oakwire.demo.client.default"); err != nil {
			return 0, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.clientN
	d.clientN++
	return n, nil
}

// Bin returns the path of one of the deployment's binaries.
func (d *Deployment) Bin(name string) string { return filepath.Join(d.bin, name) }

// Command returns a command running argv in inst's container ("owload" as
// argv[0] means the deployment's owload binary). Not tracked: bound it
// with ctx.
func (d *Deployment) Command(ctx context.Context, inst *Instance, argv ...string) *exec.Cmd {
	if len(argv) > 0 && argv[0] == "owload" {
		argv = append([]string{d.Bin("owload")}, argv[1:]...)
	}
	return testbed.Command(ctx, inst.NS, argv...)
}

// Exec runs argv in inst's container (see Command), bounded by timeout,
// and returns its standard output.
func (d *Deployment) Exec(ctx context.Context, timeout time.Duration, inst *Instance, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return output(d.Command(ctx, inst, argv...), strings.Join(argv, " ")+" in "+inst.NS)
}

// output runs cmd and returns its standard output; its error names what
// and carries the standard error.
func output(cmd *exec.Cmd, what string) ([]byte, error) {
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", what, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// StartEcho starts owload udpecho (EchoUDPPort) and tcpecho (EchoTCPPort)
// in inst's container, tagged inst.Tag(), and waits until they listen. They
// move with the instance (MoveInstance) and stop with it.
func (d *Deployment) StartEcho(ctx context.Context, inst *Instance) error {
	for _, sv := range []serverSpec{{"udpecho", EchoUDPPort}, {"tcpecho", EchoTCPPort}} {
		inst.servers = append(inst.servers, sv)
		if err := d.startServer(ctx, inst, sv); err != nil {
			return err
		}
	}
	return nil
}

func (d *Deployment) serverLog(inst *Instance, kind string) string {
	return filepath.Join(d.WorkDir, fmt.Sprintf("%s-%s-%d-%s.log", kind, shortName(inst.Service.Job), inst.Number, inst.Node.Name))
}

func (d *Deployment) startServer(ctx context.Context, inst *Instance, sv serverSpec) error {
	logPath := d.serverLog(inst, sv.kind)
	_ = os.Remove(logPath)
	p, err := d.start(sv.kind+" "+inst.Tag(), inst.NS, logPath, d.Bin("owload"), sv.kind,
		"--listen", ":"+strconv.Itoa(sv.port), "--tag", inst.Tag(), "--max-seconds", "1800")
	if err != nil {
		return err
	}
	return d.waitFor(ctx, p, sv.kind+" "+inst.Tag()+" listening", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), loadtool.ReadyPrefix)
	})
}

// stopServers kills the processes running in inst's container.
func (d *Deployment) stopServers(inst *Instance) {
	prefix := inst.Tag()
	d.mu.Lock()
	var ps []*proc
	for _, p := range d.procs {
		if strings.HasSuffix(p.name, " "+prefix) {
			ps = append(ps, p)
		}
	}
	d.mu.Unlock()
	for _, p := range ps {
		p.Stop(9, 0)
	}
}

// Ask runs owload udpask or tcpask (proto "udp" or "tcp") in from's
// container against dst: flows flows (a new socket each) of perFlow
// requests, each waiting up to timeout for its reply. After 5 failed
// requests in a row the rest are reported as failed without being sent, so
// a dead path costs seconds, not minutes.
func (d *Deployment) Ask(ctx context.Context, from *Instance, proto string, dst netip.AddrPort, flows, perFlow int, timeout time.Duration) (*AskResult, error) {
	bound := time.Duration(flows*perFlow)*timeout + 10*time.Second
	out, err := d.Exec(ctx, bound, from, "owload", proto+"ask", "--addr", dst.String(),
		"--flows", strconv.Itoa(flows), "--per-flow", strconv.Itoa(perFlow), "--timeout", timeout.String(), "--max-fail", "5")
	if err != nil {
		return nil, err
	}
	var r AskResult
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("%sask: %w: %q", proto, err, out)
	}
	return &r, nil
}

// Ping sends up to count echo requests from inst's container to dst and
// returns nil at the first reply (testbed.Ping).
func (d *Deployment) Ping(from *Instance, dst netip.Addr, count int, wait time.Duration) error {
	return testbed.Ping(from.NS, dst, count, wait)
}

// Rate measures the UDP packet rate from from's container to to's instance
// IP (v4): a udpsink in to's container, a udpflood of 64-byte payloads for
// the given time (at most 10 s) from from's.
func (d *Deployment) Rate(ctx context.Context, from, to *Instance, dur time.Duration) (*FloodResult, *SinkResult, error) {
	dur = min(dur, 10*time.Second)
	secs := strconv.FormatFloat(dur.Seconds(), 'f', 3, 64)
	logPath := d.serverLog(to, "udpsink")
	_ = os.Remove(logPath)
	sink, err := d.start("udpsink "+to.Tag(), to.NS, logPath, d.Bin("owload"), "udpsink",
		"--listen", ":"+strconv.Itoa(SinkPort), "--seconds", strconv.FormatFloat(dur.Seconds()+5, 'f', 3, 64), "--idle", "1s")
	if err != nil {
		return nil, nil, err
	}
	defer sink.Stop(9, 0)
	if err := d.waitFor(ctx, sink, "udpsink listening", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), loadtool.ReadyPrefix)
	}); err != nil {
		return nil, nil, err
	}
	dst := netip.AddrPortFrom(to.IP.V4, SinkPort)
	out, err := d.Exec(ctx, dur+10*time.Second, from, "owload", "udpflood", "--addr", dst.String(), "--seconds", secs, "--size", "64")
	if err != nil {
		return nil, nil, err
	}
	var f FloodResult
	if err := json.Unmarshal(out, &f); err != nil {
		return nil, nil, fmt.Errorf("udpflood: %w: %q", err, out)
	}
	select {
	case <-sink.Done():
	case <-time.After(dur + 10*time.Second):
		return &f, nil, errors.New("udpsink did not finish")
	}
	b, _ := os.ReadFile(logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var s SinkResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		return &f, nil, fmt.Errorf("udpsink: %w: %q", err, b)
	}
	return &f, &s, nil
}

// NewNetns creates an empty named network namespace "<prefix>-<name>"
// (lo up) for a container the test attaches itself (through a CNI
// runtime), and returns its path; Close deletes it if DeleteNetns did not.
func (d *Deployment) NewNetns(name string) (string, error) {
	ns := d.Bed.Prefix() + "-" + name
	if err := d.newNS(ns); err != nil {
		return "", err
	}
	return "/run/netns/" + ns, nil
}

// DeleteNetns deletes a namespace NewNetns made (by its path).
func (d *Deployment) DeleteNetns(path string) error {
	return d.dropNS(filepath.Base(path))
}

// PlaceInstance places instance n of service id in node's cluster at
// root (its instance IPs) without attaching anything: what an orchestrator
// does before a runtime starts the container (through CNI).
func (d *Deployment) PlaceInstance(ctx context.Context, id string, n int, node *Node) (IPPair, error) {
	return d.rootInstance(ctx, id, n, node.Cluster.ID)
}

// NetManagerCLI runs `netmanager ARGS --socket <n's socket>` (status,
// flows, drops, services: the operator's view of node n) and returns its
// standard output.
func (d *Deployment) NetManagerCLI(ctx context.Context, n *Node, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.Bin("netmanager"), append(args, "--socket", n.Socket)...)
	return output(cmd, "netmanager "+strings.Join(args, " ")+" on "+n.Name)
}
