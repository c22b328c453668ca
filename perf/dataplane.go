//go:build linux

package perf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/oakwire/oakwire/internal/testbed"
)

// Dataplane is one way of carrying the client container's traffic to the
// server container. The suite builds a fresh Topology for every round and
// every dataplane, calls Setup, measures through Target, then calls
// Teardown and removes the topology's namespaces (which removes anything
// the dataplane made inside them).
//
// Ports: the server container runs the UDP sink on Topology.Ports.Flood,
// the UDP echo server on Ports.Echo and iperf3 on Ports.TCP (TCP). The
// client sends to Target().Addr() on the same port numbers: a dataplane
// that translates a service IP must map those ports 1:1. Target().Port()
// is Ports.Flood.
//
// A Dataplane may also implement Describer to put details (XDP mode,
// worker placement, ...) into the report.
type Dataplane interface {
	// Name is the dataplane's name in flags and reports ("oakwire").
	Name() string
	// Setup wires the dataplane into topo (nodes, containers and their
	// addresses exist; the host-side veths have no addresses). It must
	// leave nothing outside topo's namespaces, except processes it stops
	// in Teardown.
	Setup(ctx context.Context, topo *Topology) error
	// Target is the address the client sends to (the service IP for
	// dataplanes that translate one) and Ports.Flood.
	Target() netip.AddrPort
	// Teardown stops what Setup started. It is called also after a failed
	// Setup.
	Teardown() error
}

// Describer is optionally implemented by a Dataplane to report settings
// such as "xdp_mode" or "workers" (the report lists them).
type Describer interface {
	Describe() map[string]string
}

// ProcessOwner is optionally implemented by a Dataplane that runs
// processes of its own (Oakwire's daemons): the CPU-per-packet measure
// counts their CPU time.
type ProcessOwner interface {
	PIDs() []int
}

// Counterer is optionally implemented by a Dataplane to report its own
// counters (drop reasons, socket statistics) for a round; the suite calls
// Counters after Teardown and puts the result into the round's report.
type Counterer interface {
	Counters() map[string]uint64
}

// Dataplanes are the names the suite measures: routing without overlay,
// the kernel overlay (flannel VXLAN + kube-proxy), Oakwire with its kernel
// tier (netmanager's default) and Oakwire with the AF_XDP worker pool
// alone.
var Dataplanes = []string{"routed", "kernel", OakwireName, OakwireAFXDPName}

// isOakwire reports whether name is one of Oakwire's dataplanes.
func isOakwire(name string) bool { return name == OakwireName || name == OakwireAFXDPName }

// newDataplane returns a fresh dataplane of name (one of Dataplanes) for
// one round.
func newDataplane(name string, cfg *Config) Dataplane {
	switch name {
	case "routed":
		return &Routed{}
	case "kernel":
		return &Kernel{}
	}
	return &Oakwire{Offload: name == OakwireName, Settings: cfg.Oakwire, BinDir: cfg.BinDir}
}

// Ports are the server's ports, the same on the service IP.
type Ports struct {
	Flood, Echo, TCP uint16
}

// DefaultPorts are the ports the suite uses.
var DefaultPorts = Ports{Flood: 9000, Echo: 9001, TCP: 5201}

// Topology is the emulated setup every dataplane is measured on (DESIGN.md
// "Numbers to beat"): nodes A (198.18.0.1) and B (198.18.0.2) joined by one
// veth, a client container on A and a server container on B, addressed the
// way the NetManager addresses containers: /32 (and /128) on eth0, default
// route via the subnet's gateway (.1, ::1) on-link, a static neighbour entry
// for the gateway (the host-side veth's MAC), MTU 1450.
type Topology struct {
	Bed            *testbed.Bed
	unsignal       func() // undoes Bed.CloseOnSignal
	A, B           *testbed.Node
	Client, Server *testbed.Container

	// Node subnets (SPEC §2): A 10.18.0.0/26 + fc00::/120, B 10.18.0.64/26
	// + fc00::100/120.
	SubnetA, SubnetB   netip.Prefix
	SubnetA6, SubnetB6 netip.Prefix
	// Gateways of the containers on A and B (.1 and ::1 of the subnets).
	GwA, GwB, GwA6, GwB6 netip.Addr
	// Namespace IPs of client (on A) and server (on B).
	ClientIP, ServerIP   netip.Addr
	ClientIP6, ServerIP6 netip.Addr
	// ServiceIP is the service IP a translating dataplane maps to the
	// server (the first one a fresh root hands out, SPEC §2).
	ServiceIP, ServiceIP6 netip.Addr
	Ports                 Ports
	// MTU of the container interfaces.
	MTU int
}

// Fixed addresses of the topology.
var (
	subnetA   = netip.MustParsePrefix("10.18.0.0/26")
	subnetB   = netip.MustParsePrefix("10.18.0.64/26")
	subnetA6  = netip.MustParsePrefix("fc00::/120")
	subnetB6  = netip.MustParsePrefix("fc00::100/120")
	serviceV4 = netip.MustParseAddr("10.30.0.1")
	serviceV6 = netip.MustParseAddr("fdff:2000::1")
)

// nth returns the n-th address of p.
func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// NewTopology builds the topology in a new testbed bed. On error
// everything made so far is removed. The caller calls Close. From before
// the first namespace until Close, Ctrl-C removes the bed too
// (testbed.Bed.CloseOnSignal).
func NewTopology(label string) (*Topology, error) {
	bed, err := testbed.New(label, testbed.Options{Underlay: testbed.Direct})
	if err != nil {
		return nil, err
	}
	unsignal := bed.CloseOnSignal()
	t := &Topology{
		Bed:      bed,
		unsignal: unsignal,
		SubnetA:  subnetA, SubnetB: subnetB, SubnetA6: subnetA6, SubnetB6: subnetB6,
		GwA: nth(subnetA, 1), GwB: nth(subnetB, 1), GwA6: nth(subnetA6, 1), GwB6: nth(subnetB6, 1),
		ClientIP: nth(subnetA, 2), ServerIP: nth(subnetB, 2),
		ClientIP6: nth(subnetA6, 2), ServerIP6: nth(subnetB6, 2),
		ServiceIP: serviceV4, ServiceIP6: serviceV6,
		Ports: DefaultPorts,
		MTU:   1450,
	}
	if err := t.build(); err != nil {
		return nil, errors.Join(fmt.Errorf("topology: %w", err), t.Close())
	}
	return t, nil
}

// Close removes the topology (its bed) and its signal handler.
func (t *Topology) Close() error {
	err := t.Bed.Close()
	t.unsignal()
	return err
}

func (t *Topology) build() error {
	var err error
	if t.A, err = t.Bed.AddNode("a"); err != nil {
		return err
	}
	if t.B, err = t.Bed.AddNode("b"); err != nil {
		return err
	}
	if t.Client, err = t.A.AddContainer("cli", testbed.ContainerConfig{
		V4: netip.PrefixFrom(t.ClientIP, 32), V6: netip.PrefixFrom(t.ClientIP6, 128),
		GW4: t.GwA, GW6: t.GwA6, MTU: t.MTU, HostIf: "vcli",
	}); err != nil {
		return err
	}
	if t.Server, err = t.B.AddContainer("srv", testbed.ContainerConfig{
		V4: netip.PrefixFrom(t.ServerIP, 32), V6: netip.PrefixFrom(t.ServerIP6, 128),
		GW4: t.GwB, GW6: t.GwB6, MTU: t.MTU, HostIf: "vsrv",
	}); err != nil {
		return err
	}
	for _, c := range []struct {
		ctr     *testbed.Container
		gw, gw6 netip.Addr
	}{{t.Client, t.GwA, t.GwA6}, {t.Server, t.GwB, t.GwB6}} {
		if err := staticGatewayNeigh(c.ctr, c.gw, c.gw6); err != nil {
			return err
		}
	}
	return nil
}
