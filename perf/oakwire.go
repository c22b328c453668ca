//go:build linux

package perf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/testbed"
)

// Oakwire is the product on the suite's topology as an operator deploys
// it: Redis, `servicemanager root` and `servicemanager cluster` on node A,
// a `netmanager` on each node with its defaults, and the client and
// server containers attached by the netmanagers (POST /container/deploy)
// the way the node engine attaches them. The server is instance 0 of
// service "bench" (on B); the client is a client-service instance (on A),
// so its source becomes its instance IP on egress. Target is the service's
// round-robin IPv4 address, which the client's first packet resolves
// through the cluster.
//
// Offload selects the kernel tier ("oakwire", netmanager's default) or
// the AF_XDP worker pool alone ("oakwire-afxdp", --offload off).
type Oakwire struct {
	// Offload is netmanager's --offload.
	Offload bool
	// Settings are further netmanager flags; zero values keep its
	// defaults.
	Settings OakwireSettings
	// BinDir holds the binaries (deploy.Build); Run builds them once.
	BinDir string
	// Log receives the deployment's progress lines (nil: discarded).
	Log io.Writer

	t        *Topology
	d        *deploy.Deployment
	target   netip.AddrPort
	info     map[string]string
	counters map[string]uint64
}

// OakwireSettings are netmanager settings the oakwire dataplanes start
// their daemons with (netbench's --oakwire-* flags). Zero values leave
// netmanager's defaults, what an operator runs.
type OakwireSettings struct {
	// Mode is --xdp-mode (generic or native).
	Mode string `json:"xdp_mode,omitempty"`
	// Workers is --workers per node.
	Workers int `json:"workers,omitempty"`
	// CPUsA and CPUsB are node A's and node B's --worker-cpus. The client
	// (flood sender) runs on A, the server (sink) on B.
	CPUsA []int `json:"cpus_a,omitempty"`
	CPUsB []int `json:"cpus_b,omitempty"`
	// Yield is --worker-yield (os, go or none).
	Yield string `json:"yield,omitempty"`
	// Spin is --worker-spin: the cap of the adaptive post-packet spin.
	Spin time.Duration `json:"spin,omitempty"`
}

// Names the oakwire dataplanes are measured under; the report computes
// their ratios against the kernel overlay and routing.
const (
	OakwireName      = "oakwire"
	OakwireAFXDPName = "oakwire-afxdp"
)

// benchJob is the server's service.
const benchJob = "bench.perf.server.default"

// Name implements Dataplane.
func (o *Oakwire) Name() string {
	if o.Offload {
		return OakwireName
	}
	return OakwireAFXDPName
}

// Target implements Dataplane: the service's RR IPv4 address.
func (o *Oakwire) Target() netip.AddrPort { return o.target }

// Describe implements Describer: the settings and what the daemons
// report about themselves.
func (o *Oakwire) Describe() map[string]string { return o.info }

// Counters implements Counterer: both netmanagers' data-plane counters at
// the end of the round, non-zero ones, prefixed "a." and "b.".
func (o *Oakwire) Counters() map[string]uint64 { return o.counters }

// PIDs implements ProcessOwner: every process of the deployment.
func (o *Oakwire) PIDs() []int {
	if o.d == nil {
		return nil
	}
	return o.d.PIDs()
}

// args are the netmanager flags of o's settings: for every node, and per
// node (A, B).
func (o *Oakwire) args() (all []string, perNode [][]string) {
	s := o.Settings
	all = []string{"--offload", map[bool]string{true: "on", false: "off"}[o.Offload]}
	if s.Mode != "" {
		all = append(all, "--xdp-mode", s.Mode)
	}
	if s.Workers > 0 {
		all = append(all, "--workers", strconv.Itoa(s.Workers))
	}
	if s.Yield != "" {
		all = append(all, "--worker-yield", s.Yield)
	}
	if s.Spin > 0 {
		all = append(all, "--worker-spin", s.Spin.String())
	}
	for _, cpus := range [][]int{s.CPUsA, s.CPUsB} {
		var a []string
		if len(cpus) > 0 {
			a = []string{"--worker-cpus", cpuList(cpus)}
		}
		perNode = append(perNode, a)
	}
	return all, perNode
}

func cpuList(cpus []int) string {
	s := make([]string, len(cpus))
	for i, c := range cpus {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ",")
}

// Setup implements Dataplane.
func (o *Oakwire) Setup(ctx context.Context, t *Topology) error {
	o.t = t
	// The netmanagers make the containers' interfaces: drop the
	// topology's (the namespaces stay).
	for _, c := range []*testbed.Container{t.Client, t.Server} {
		if err := testbed.Handle(c.Node.NS, func(h *netlink.Handle) error {
			l, err := h.LinkByName(c.HostIf)
			if err != nil {
				return err
			}
			return h.LinkDel(l)
		}); err != nil {
			return fmt.Errorf("oakwire: remove %s's veth: %w", c.Name, err)
		}
	}
	all, perNode := o.args()
	d, err := deploy.Up(ctx, deploy.Options{Nodes: 2, Bed: t.Bed, Existing: []*testbed.Node{t.A, t.B}, Ctl: t.A,
		BinDir: o.BinDir, NetManagerArgs: all, NodeArgs: perNode, Log: o.Log})
	if err != nil {
		return fmt.Errorf("oakwire: %w", err)
	}
	o.d = d
	a, b := d.Nodes[0], d.Nodes[1]
	svc, err := d.DeployService(ctx, "bench", benchJob)
	if err != nil {
		return fmt.Errorf("oakwire: %w", err)
	}
	if _, err := d.DeployInstanceIn(ctx, "bench", 0, b, t.Server.NS); err != nil {
		return fmt.Errorf("oakwire: %w", err)
	}
	if _, err := d.AddClientIn(ctx, a, t.Client.NS); err != nil {
		return fmt.Errorf("oakwire: %w", err)
	}
	o.target = netip.AddrPortFrom(svc.RR().V4, t.Ports.Flood)
	o.info = o.describe(ctx)
	return nil
}

// describe is the report's settings line: the flags given and the mode
// node A's daemon reports.
func (o *Oakwire) describe(ctx context.Context) map[string]string {
	s := o.Settings
	info := map[string]string{
		"offload":          map[bool]string{true: "on", false: "off"}[o.Offload],
		"xdp_mode":         orDefault(s.Mode, "netmanager default"),
		"workers":          "netmanager default (half the CPUs)",
		"yield":            orDefault(s.Yield, "netmanager default (os)"),
		"spin":             "netmanager default (adaptive, cap 200µs)",
		"worker_placement": PlacementString(s.CPUsA, s.CPUsB),
	}
	if s.Workers > 0 {
		info["workers"] = strconv.Itoa(s.Workers) + " per node"
	}
	if s.Spin > 0 {
		info["spin"] = "adaptive, cap " + s.Spin.String()
	}
	if st, err := o.d.Status(ctx, o.d.Nodes[0]); err == nil {
		info["mode"] = st.Dataplane.Mode
	}
	return info
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Teardown implements Dataplane: collects the daemons' counters, then
// stops every process and removes what the deployment made (the topology's
// namespaces go with the topology).
func (o *Oakwire) Teardown() error {
	if o.d == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o.counters = map[string]uint64{}
	var errs []error
	for _, n := range o.d.Nodes {
		st, err := o.d.Status(ctx, n)
		if err != nil {
			errs = append(errs, fmt.Errorf("oakwire: status of %s: %w", n.Name, err))
			continue
		}
		for k, v := range st.Dataplane.Counters {
			if v != 0 {
				o.counters[n.Name+"."+k] = v
			}
		}
	}
	errs = append(errs, o.d.Close())
	o.d = nil
	return errors.Join(errs...)
}

// PlacementString renders a worker placement the way ParsePlacement
// reads it, with the nodes named: "node A unpinned / node B cpu 1".
func PlacementString(a, b []int) string {
	one := func(cpus []int) string {
		if len(cpus) == 0 {
			return "unpinned"
		}
		return "cpu " + cpuList(cpus)
	}
	return "node A " + one(a) + " / node B " + one(b)
}

// ParsePlacement parses a worker placement: "none" (unpinned), a
// comma-separated CPU list for both nodes' daemons ("1", "0,1"), or
// "A/B" with one such value per node ("1/0", "none/1").
func ParsePlacement(s string) (a, b []int, err error) {
	one := func(s string) ([]int, error) {
		s = strings.TrimSpace(s)
		if s == "" || s == "none" || s == "unpinned" {
			return nil, nil
		}
		var cpus []int
		for f := range strings.SplitSeq(s, ",") {
			c, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || c < 0 {
				return nil, fmt.Errorf("worker placement %q: want none, a CPU list like 0,1, or A/B (one per node)", s)
			}
			cpus = append(cpus, c)
		}
		return cpus, nil
	}
	sa, sb, split := strings.Cut(s, "/")
	if !split {
		sb = sa
	}
	if a, err = one(sa); err != nil {
		return nil, nil, err
	}
	if b, err = one(sb); err != nil {
		return nil, nil, err
	}
	return a, b, nil
}
