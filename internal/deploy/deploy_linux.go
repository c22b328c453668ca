package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/internal/testbed"
)

// Ports of the control services on the control node. Cluster i (from 0)
// listens on ClusterPort+i.
const (
	RootPort    = 10100
	ClusterPort = 10110
	redisPort   = 6379
)

// Deployment is a running emulated deployment. Methods are safe for
// concurrent use unless noted.
type Deployment struct {
	Bed *testbed.Bed
	// Ctl is the control node (redis, root, cluster).
	Ctl *testbed.Node
	// Nodes are the worker nodes, each with a netmanager.
	Nodes []*Node
	// Token is the OAKWIRE_TOKEN of every process.
	Token string
	// RootURL and ClusterURL are reachable from the control node's and the
	// worker nodes' namespaces (not from the root namespace: use RootCall).
	// ClusterURL and ClusterID are the first cluster's.
	RootURL, ClusterURL string
	ClusterID           string
	// Clusters are the cluster service managers, in order (Options.ClusterNodes).
	Clusters []*Cluster
	// WorkDir holds logs (*.log), sockets and state.
	WorkDir string
	// BPFDir is a bpffs the deployment mounted (in WorkDir) for the
	// netmanagers' pinned kernel-tier objects: /sys/fs/bpf is not a bpffs
	// inside `ip netns exec`, and a mount made there would go with the
	// process; this one outlives restarts. Unmounted by Close.
	BPFDir string

	opts    Options
	bin     string // directory of the binaries
	ownWork bool
	ownBed  bool            // Close closes Bed (Up made it)
	tbNodes []*testbed.Node // the worker nodes' testbed nodes
	ctlHTTP *http.Client
	log     io.Writer

	// mu guards the fields below.
	mu        sync.Mutex
	procs     []*proc
	services  map[string]*Service
	instances map[instKey]*Instance
	ctrNS     []string // container namespaces made and not yet deleted
	podmans   []*Podman
	clientN   int
	closed    bool
}

// Cluster is one cluster service manager on the control node.
type Cluster struct {
	ID  string
	URL string
	// Prefix is its Redis key prefix (every cluster has its own).
	Prefix string
	port   int
	log    string
	mu     sync.Mutex // guards proc
	proc   *proc
}

// Node is a worker node running a netmanager.
type Node struct {
	Name string
	TB   *testbed.Node
	// Cluster is the cluster the node registers with.
	Cluster *Cluster
	// Socket is the netmanager's unix socket; StateDir its state directory.
	Socket, StateDir, LogPath string
	// Subnet and Subnet6 are the node's container subnets (from /status).
	Subnet, Subnet6 netip.Prefix

	args []string
	http *http.Client
	mu   sync.Mutex // guards proc
	proc *proc
}

// IP is the node's underlay address.
func (n *Node) IP() netip.Addr { return n.TB.IP }

type instKey struct {
	id string
	n  int
}

// Instance is one instance of a service running in a container on a node.
type Instance struct {
	Service *Service
	Number  int
	// IP is the instance IP pair (stable across moves).
	IP IPPair
	// Node, NS, NSIP: where it runs now (NS is the container's netns name).
	Node *Node
	NS   string
	NSIP IPPair
	// PortMappings are its netmanager port mappings ("" for none).
	PortMappings string
	// ExternalNS is the namespace it was deployed into when the caller
	// made it (DeployInstanceIn); the deployment then never deletes it.
	ExternalNS string

	servers []serverSpec
}

// Tag is what the instance's owload servers put into their replies:
// "<service>/<instance>@<node>".
func (i *Instance) Tag() string {
	return fmt.Sprintf("%s/%d@%s", shortName(i.Service.Job), i.Number, i.Node.Name)
}

// Name is "<service>/<instance>" (the tag without the node).
func (i *Instance) Name() string { return fmt.Sprintf("%s/%d", shortName(i.Service.Job), i.Number) }

func shortName(job string) string {
	p := strings.Split(job, ".")
	if len(p) == 4 {
		return p[2]
	}
	return job
}

type serverSpec struct {
	kind string // udpecho, tcpecho
	port int
}

// Up starts a deployment. On error everything it started is gone again and
// the error carries the tails of the process logs.
func Up(ctx context.Context, o Options) (d *Deployment, err error) {
	if err := o.withDefaults(); err != nil {
		return nil, err
	}
	if d, err = newDeployment(o); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			var tails strings.Builder
			d.DumpLogs(&tails, 15)
			fmt.Fprint(d.log, tails.String())
			err = fmt.Errorf("%w\n%s", err, tails.String())
			_ = d.Close()
			d = nil
		}
	}()
	if err := d.mountBPFFS(); err != nil {
		return d, err
	}
	if err := d.findBinaries(ctx); err != nil {
		return d, err
	}
	if err := d.makeNodes(o); err != nil {
		return d, err
	}
	if err := d.layout(o); err != nil {
		return d, err
	}
	if err := d.startControl(ctx); err != nil {
		return d, err
	}
	if err := d.startNetManagers(ctx); err != nil {
		return d, err
	}
	return d, nil
}

// withDefaults fills o's zero fields and checks the node counts.
func (o *Options) withDefaults() error {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Nodes < 1 || o.Nodes > 26 {
		return fmt.Errorf("deploy: Nodes %d: want 1..26", o.Nodes)
	}
	if o.Dataplane == "" {
		o.Dataplane = "xdp"
	}
	if o.ClusterID == "" {
		o.ClusterID = "cluster1"
	}
	if len(o.ClusterNodes) == 0 {
		o.ClusterNodes = []int{o.Nodes}
	}
	total := 0
	for _, k := range o.ClusterNodes {
		if k < 1 {
			return fmt.Errorf("deploy: ClusterNodes %v: every cluster needs a node", o.ClusterNodes)
		}
		total += k
	}
	if total != o.Nodes {
		return fmt.Errorf("deploy: ClusterNodes %v: %d nodes, want Nodes = %d", o.ClusterNodes, total, o.Nodes)
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 20 * time.Second
	}
	return nil
}

// newDeployment makes the Deployment with its token and work directory.
func newDeployment(o Options) (*Deployment, error) {
	d := &Deployment{opts: o, ClusterID: o.ClusterID, log: o.Log,
		services: map[string]*Service{}, instances: map[instKey]*Instance{}}
	if d.log == nil {
		d.log = io.Discard
	}
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, fmt.Errorf("deploy: token: %w", err)
	}
	d.Token = hex.EncodeToString(tok[:])
	if o.WorkDir == "" {
		var err error
		if d.WorkDir, err = os.MkdirTemp("", "oakwire-deploy-"); err != nil {
			return nil, fmt.Errorf("deploy: %w", err)
		}
		d.ownWork = !o.KeepWorkDir
	} else {
		d.WorkDir = o.WorkDir
		if err := os.MkdirAll(d.WorkDir, 0o755); err != nil {
			return nil, fmt.Errorf("deploy: %w", err)
		}
	}
	return d, nil
}

// findBinaries builds the binaries into the work directory unless
// Options.BinDir has them, and checks that redis-server is on PATH.
func (d *Deployment) findBinaries(ctx context.Context) error {
	d.bin = d.opts.BinDir
	if d.bin == "" {
		d.bin = filepath.Join(d.WorkDir, "bin")
		d.logf("building servicemanager, netmanager, owload, oakwire-cni")
		if err := Build(ctx, d.bin); err != nil {
			return err
		}
	}
	for _, b := range []string{"servicemanager", "netmanager", "owload"} {
		if _, err := os.Stat(filepath.Join(d.bin, b)); err != nil {
			return fmt.Errorf("deploy: binary: %w", err)
		}
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return fmt.Errorf("deploy: %w (make deps installs it)", err)
	}
	return nil
}

// layout makes the Node and Cluster values: the nodes' directories and
// sockets, the clusters' ports and which nodes each serves.
func (d *Deployment) layout(o Options) error {
	for i, tn := range d.tbNodes {
		name := tn.Name
		if o.Bed == nil {
			name = string(rune('a' + i))
		}
		dir := filepath.Join(d.WorkDir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("deploy: %w", err)
		}
		n := &Node{Name: name, TB: tn, Socket: filepath.Join(dir, "nm.sock"),
			StateDir: filepath.Join(dir, "state"), LogPath: filepath.Join(d.WorkDir, "netmanager-"+name+".log")}
		n.http = unixClient(n.Socket)
		d.Nodes = append(d.Nodes, n)
	}
	ctlIP := d.Ctl.IP.String()
	d.RootURL = "http://" + net.JoinHostPort(ctlIP, strconv.Itoa(RootPort))
	next := 0
	for i, k := range o.ClusterNodes {
		id := o.ClusterID
		if i > 0 {
			id = "cluster" + strconv.Itoa(i+1)
		}
		port := ClusterPort + i
		cl := &Cluster{ID: id, URL: "http://" + net.JoinHostPort(ctlIP, strconv.Itoa(port)), port: port,
			Prefix: "oakwire-" + id + ":", log: filepath.Join(d.WorkDir, id+".log")}
		d.Clusters = append(d.Clusters, cl)
		for _, n := range d.Nodes[next : next+k] {
			n.Cluster = cl
		}
		next += k
	}
	d.ClusterURL, d.ClusterID = d.Clusters[0].URL, d.Clusters[0].ID
	d.ctlHTTP = nsClient(d.Ctl.NS)
	d.logf("testbed %s: workers %s, control node ctl %s", d.Bed.Prefix(), d.nodeList(), ctlIP)
	return nil
}

// startControl starts Redis, root and the clusters on the control node and
// waits until each answers.
func (d *Deployment) startControl(ctx context.Context) error {
	ctlIP := d.Ctl.IP.String()
	// Redis on the control node's loopback.
	redisDir := filepath.Join(d.WorkDir, "redis")
	if err := os.MkdirAll(redisDir, 0o755); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	rp, err := d.start("redis", d.Ctl.NS, filepath.Join(d.WorkDir, "redis.log"),
		"redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(redisPort), "--dir", redisDir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no", "--logfile", "")
	if err != nil {
		return err
	}
	if err := d.waitFor(ctx, rp, "redis PING", func() bool { return redisPing(d.Ctl.NS, redisPort) }); err != nil {
		return err
	}
	redisURL := fmt.Sprintf("redis://127.0.0.1:%d/0", redisPort)

	root, err := d.start("root", d.Ctl.NS, filepath.Join(d.WorkDir, "root.log"),
		filepath.Join(d.bin, "servicemanager"), "root", "--listen", net.JoinHostPort(ctlIP, strconv.Itoa(RootPort)),
		"--redis", redisURL)
	if err != nil {
		return err
	}
	if err := d.waitFor(ctx, root, "root /readyz", func() bool { return d.ready(d.RootURL) }); err != nil {
		return err
	}
	for _, cl := range d.Clusters {
		if err := d.startCluster(ctx, cl); err != nil {
			return err
		}
		// What an orchestrator does when a cluster joins (the cluster also
		// registers itself; this is idempotent).
		reg := map[string]any{"cluster_id": cl.ID, "cluster_address": ctlIP, "cluster_port": cl.port}
		if err := d.RootCall(ctx, "POST", "/api/net/cluster", reg, nil); err != nil {
			return err
		}
		d.logf("cluster %s up at %s (Redis prefix %s)", cl.ID, cl.URL, cl.Prefix)
	}
	d.logf("redis and root %s up in the ctl namespace", d.RootURL)
	return nil
}

// startNetManagers starts a netmanager on every worker node and waits until
// each has registered.
func (d *Deployment) startNetManagers(ctx context.Context) error {
	o := d.opts
	for i, n := range d.Nodes {
		n.args = []string{filepath.Join(d.bin, "netmanager"),
			"--node-id", n.Name, "--uplink", n.TB.Uplink, "--node-ip", n.TB.IP.String(),
			"--cluster", n.Cluster.URL, "--socket", n.Socket, "--state-dir", n.StateDir,
			"--root", d.RootURL, "--cluster-id", n.Cluster.ID,
			"--dataplane", o.Dataplane, "--bpf-dir", d.BPFDir}
		n.args = append(n.args, o.NetManagerArgs...)
		if i < len(o.NodeArgs) {
			n.args = append(n.args, o.NodeArgs[i]...)
		}
		if o.Offload != "" {
			n.args = append(n.args, "--offload", o.Offload)
		}
		if o.Workers > 0 {
			n.args = append(n.args, "--workers", strconv.Itoa(o.Workers))
		}
		if err := d.startNetManager(n); err != nil {
			return err
		}
	}
	for _, n := range d.Nodes {
		if err := d.waitNetManager(ctx, n); err != nil {
			return err
		}
	}
	d.logf("netmanagers (--dataplane %s) registered: %s", o.Dataplane, d.nodeList())
	return nil
}

// makeNodes makes the bed, its worker nodes and the control node, or takes
// them from o (Options.Bed).
func (d *Deployment) makeNodes(o Options) error {
	if o.Bed != nil {
		if len(o.Existing) != o.Nodes || o.Ctl == nil {
			return fmt.Errorf("deploy: Bed needs Existing (%d nodes, want Nodes = %d) and Ctl", len(o.Existing), o.Nodes)
		}
		d.Bed, d.tbNodes, d.Ctl = o.Bed, o.Existing, o.Ctl
		return nil
	}
	var err error
	if d.Bed, err = testbed.New("deploy", testbed.Options{Underlay: testbed.Bridge}); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	d.ownBed = true
	for i := range o.Nodes {
		tn, err := d.Bed.AddNode(string(rune('a' + i)))
		if err != nil {
			return fmt.Errorf("deploy: %w", err)
		}
		d.tbNodes = append(d.tbNodes, tn)
	}
	if d.Ctl, err = d.Bed.AddNode("ctl"); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	return nil
}

func (d *Deployment) nodeList() string {
	var s []string
	for _, n := range d.Nodes {
		c := ""
		if n.Cluster != nil && len(d.Clusters) > 1 {
			c = " (" + n.Cluster.ID + ")"
		}
		s = append(s, n.Name+" "+n.TB.IP.String()+c)
	}
	return strings.Join(s, ", ")
}

func (d *Deployment) logf(format string, args ...any) {
	fmt.Fprintf(d.log, "deploy: "+format+"\n", args...)
}

func (d *Deployment) startCluster(ctx context.Context, cl *Cluster) error {
	ctlIP := d.Ctl.IP.String()
	p, err := d.start(cl.ID, d.Ctl.NS, cl.log,
		filepath.Join(d.bin, "servicemanager"), "cluster",
		"--listen", net.JoinHostPort(ctlIP, strconv.Itoa(cl.port)),
		"--redis", fmt.Sprintf("redis://127.0.0.1:%d/0", redisPort), "--redis-prefix", cl.Prefix,
		"--root", d.RootURL, "--cluster-id", cl.ID)
	if err != nil {
		return err
	}
	cl.mu.Lock()
	cl.proc = p
	cl.mu.Unlock()
	return d.waitFor(ctx, p, cl.ID+" /readyz", func() bool { return d.ready(cl.URL) })
}

func (d *Deployment) startNetManager(n *Node) error {
	n.args = oakestraArgs(n.args, n.Cluster)
	p, err := d.start("netmanager-"+n.Name, n.TB.NS, n.LogPath, n.args...)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
	return nil
}

// waitNetManager waits until n's netmanager answers on its socket and is
// registered and confirmed by the cluster, then records its subnets.
func (d *Deployment) waitNetManager(ctx context.Context, n *Node) error {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if err := d.registerOakestra(ctx, n); err != nil {
		return err
	}
	var st *NodeStatus
	err := d.waitFor(ctx, p, "netmanager "+n.Name+" registered", func() bool {
		s, err := d.Status(ctx, n)
		if err != nil || !s.Registered || !s.Confirmed {
			return false
		}
		st = s
		return true
	})
	if err != nil {
		if p.Exited() {
			return fmt.Errorf("%w: node %s (--dataplane %s): %w", ErrNetManagerExited, n.Name, d.opts.Dataplane, err)
		}
		return err
	}
	n.Subnet, _ = netip.ParsePrefix(st.Subnet)
	n.Subnet6, _ = netip.ParsePrefix(st.SubnetV6)
	return nil
}

// Close stops every process (by PID), deletes the container namespaces
// and the testbed's namespaces (by exact name) and the work directory (if
// Up made it). Idempotent.
func (d *Deployment) Close() error {
	d.mu.Lock()
	pms := d.podmans
	d.podmans = nil
	d.mu.Unlock()
	var perrs []error
	for _, p := range pms { // their containers first (CNI DEL, while netmanagers run)
		perrs = append(perrs, p.Close())
	}
	d.mu.Lock()
	d.closed = true
	procs := d.procs
	d.procs = nil
	ctrs := d.ctrNS
	d.ctrNS = nil
	d.mu.Unlock()
	errs := perrs
	for _, p := range procs {
		if !p.Exited() {
			_ = p.Cmd.Process.Kill()
		}
	}
	for _, p := range procs {
		p.Stop(syscall.SIGKILL, 0) // waits for the exit
		if !p.Exited() {
			errs = append(errs, fmt.Errorf("deploy: %s (pid %d) did not exit", p.name, p.Pid()))
		}
	}
	for _, ns := range ctrs {
		if err := deleteNS(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if d.Bed != nil && d.ownBed {
		if err := d.Bed.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.BPFDir != "" {
		// The pins go with the mount (the nodes' interfaces went with
		// their namespaces already).
		if err := unix.Unmount(d.BPFDir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("deploy: unmount %s: %w", d.BPFDir, err))
		}
		d.BPFDir = ""
	}
	if d.ownWork && d.WorkDir != "" {
		if err := os.RemoveAll(d.WorkDir); err != nil {
			errs = append(errs, err)
		}
		d.ownWork = false
	}
	return errors.Join(errs...)
}

// CloseOnSignal makes SIGINT, SIGTERM and SIGHUP close the deployment and
// exit with 128+signal, for programs (the demo). stop undoes it.
func (d *Deployment) CloseOnSignal() (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	quit := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			if err := d.Close(); err != nil {
				fmt.Fprintf(os.Stderr, "deploy: close on %v: %v\n", s, err)
			}
			code := 1
			if sig, ok := s.(syscall.Signal); ok {
				code = 128 + int(sig)
			}
			os.Exit(code)
		case <-quit:
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { signal.Stop(ch); close(quit) }) }
}

// Node returns the worker node named name, or nil.
func (d *Deployment) Node(name string) *Node {
	for _, n := range d.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// RestartNetManager stops n's netmanager with SIGTERM (SIGKILL after 10 s),
// starts it again with the same flags and waits until it is registered.
func (d *Deployment) RestartNetManager(ctx context.Context, n *Node) error {
	return d.RestartNetManagerSig(ctx, n, syscall.SIGTERM)
}

// RestartNetManagerSig is RestartNetManager stopping the daemon with sig
// (SIGKILL: a crash).
func (d *Deployment) RestartNetManagerSig(ctx context.Context, n *Node, sig syscall.Signal) error {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	p.Stop(sig, 10*time.Second)
	if !p.Exited() {
		return fmt.Errorf("deploy: netmanager %s (pid %d) did not stop", n.Name, p.Pid())
	}
	if err := d.startNetManager(n); err != nil {
		return err
	}
	return d.waitNetManager(ctx, n)
}

// StopNetManager stops n's netmanager with SIGTERM (SIGKILL after 10 s).
func (d *Deployment) StopNetManager(n *Node) {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	p.Stop(syscall.SIGTERM, 10*time.Second)
}

// KillCluster kills the (first) cluster service manager (SIGKILL) and
// waits for it.
func (d *Deployment) KillCluster() error {
	cl := d.Clusters[0]
	cl.mu.Lock()
	p := cl.proc
	cl.mu.Unlock()
	if p == nil {
		return errors.New("deploy: no cluster process")
	}
	p.Stop(syscall.SIGKILL, 0)
	if !p.Exited() {
		return fmt.Errorf("deploy: cluster (pid %d) did not die", p.Pid())
	}
	return nil
}

// StartCluster starts the (first) cluster service manager again after
// KillCluster.
func (d *Deployment) StartCluster(ctx context.Context) error {
	return d.startCluster(ctx, d.Clusters[0])
}

// RemoveNode takes worker node n out of its cluster: its netmanager stops
// (SIGTERM) and the cluster deregisters it (DELETE /api/node/{id}), which
// frees its subnets and takes it out of every peer set.
func (d *Deployment) RemoveNode(ctx context.Context, n *Node) error {
	d.StopNetManager(n)
	if err := d.ClusterCallOn(ctx, n.Cluster, "DELETE", "/api/node/"+n.Name, nil, nil); err != nil {
		return fmt.Errorf("deploy: remove node %s: %w", n.Name, err)
	}
	return nil
}
