//go:build linux

package perf

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/internal/testbed"
)

// linkMAC returns the MAC of interface name in namespace ns.
func linkMAC(ns, name string) (net.HardwareAddr, error) {
	var mac net.HardwareAddr
	err := testbed.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, ns, err)
		}
		mac = l.Attrs().HardwareAddr
		return nil
	})
	return mac, err
}

// addNeigh adds permanent neighbour entries ip → mac on link in ns.
func addNeigh(ns, link string, mac net.HardwareAddr, ips ...netip.Addr) error {
	return testbed.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", link, ns, err)
		}
		for _, ip := range ips {
			if !ip.IsValid() {
				continue
			}
			fam := netlink.FAMILY_V4
			if ip.Is6() {
				fam = netlink.FAMILY_V6
			}
			n := &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT,
				IP: ip.AsSlice(), HardwareAddr: mac}
			if err := h.NeighSet(n); err != nil {
				return fmt.Errorf("neigh %v on %s in %s: %w", ip, link, ns, err)
			}
		}
		return nil
	})
}

// staticGatewayNeigh gives container c a permanent neighbour entry for its
// gateways, pointing at the host-side veth, as the NetManager does.
func staticGatewayNeigh(c *testbed.Container, gw, gw6 netip.Addr) error {
	mac, err := linkMAC(c.Node.NS, c.HostIf)
	if err != nil {
		return err
	}
	return addNeigh(c.NS, c.IfName, mac, gw, gw6)
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// enableForwarding turns on forwarding and turns off reverse-path filtering
// in a node namespace.
func enableForwarding(ns string) error {
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv6.conf.all.forwarding", "1"},
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
	} {
		if err := testbed.Sysctl(ns, kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// hostSide makes the node side of container c routable by the kernel: the
// gateway addresses on the host veth, host routes to the container's
// addresses through it and permanent neighbour entries for them.
func hostSide(c *testbed.Container, gw, gw6, ip, ip6 netip.Addr) error {
	mac, err := linkMAC(c.NS, c.IfName)
	if err != nil {
		return err
	}
	err = testbed.Handle(c.Node.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.HostIf)
		if err != nil {
			return err
		}
		for _, a := range []netip.Prefix{netip.PrefixFrom(gw, 32), netip.PrefixFrom(gw6, 128)} {
			na := &netlink.Addr{IPNet: ipnet(a)}
			if a.Addr().Is6() {
				na.Flags = unix.IFA_F_NODAD
			}
			if err := h.AddrAdd(l, na); err != nil {
				return fmt.Errorf("addr %v on %s: %w", a, c.HostIf, err)
			}
		}
		for _, a := range []netip.Prefix{netip.PrefixFrom(ip, 32), netip.PrefixFrom(ip6, 128)} {
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(a), Scope: netlink.SCOPE_LINK}
			if err := h.RouteReplace(r); err != nil {
				return fmt.Errorf("route %v dev %s: %w", a, c.HostIf, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("host side of %s: %w", c.Name, err)
	}
	return addNeigh(c.Node.NS, c.HostIf, mac, ip, ip6)
}

// nodesCommon does what both kernel peers need on both nodes.
func nodesCommon(t *Topology) error {
	for _, ns := range []string{t.A.NS, t.B.NS} {
		if err := enableForwarding(ns); err != nil {
			return err
		}
	}
	if err := hostSide(t.Client, t.GwA, t.GwA6, t.ClientIP, t.ClientIP6); err != nil {
		return err
	}
	return hostSide(t.Server, t.GwB, t.GwB6, t.ServerIP, t.ServerIP6)
}

// Routed is plain IP routing between the nodes: no overlay, no NAT (the
// limit). Node A routes B's subnet via B's underlay address and back; the
// client sends to the server's namespace IP directly. Routes exist only in
// the nodes' namespaces.
type Routed struct{ t *Topology }

// Name implements Dataplane.
func (*Routed) Name() string { return "routed" }

// Setup implements Dataplane.
func (r *Routed) Setup(_ context.Context, t *Topology) error {
	r.t = t
	if err := nodesCommon(t); err != nil {
		return fmt.Errorf("routed: %w", err)
	}
	for _, x := range []struct {
		node         *testbed.Node
		dst, dst6    netip.Prefix
		via, via6    netip.Addr
		peerUplinkNS string
	}{
		{t.A, t.SubnetB, t.SubnetB6, t.B.IP, t.B.IP6, t.B.NS},
		{t.B, t.SubnetA, t.SubnetA6, t.A.IP, t.A.IP6, t.A.NS},
	} {
		err := testbed.Handle(x.node.NS, func(h *netlink.Handle) error {
			for _, r := range []*netlink.Route{
				{Dst: ipnet(x.dst), Gw: x.via.AsSlice()},
				{Dst: ipnet(x.dst6), Gw: x.via6.AsSlice()},
			} {
				if err := h.RouteReplace(r); err != nil {
					return fmt.Errorf("route %v via %v: %w", r.Dst, r.Gw, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("routed: node %s: %w", x.node.Name, err)
		}
	}
	return nil
}

// Target implements Dataplane: the server's namespace IP.
func (r *Routed) Target() netip.AddrPort {
	return netip.AddrPortFrom(r.t.ServerIP, r.t.Ports.Flood)
}

// Teardown implements Dataplane; the namespaces take everything with them.
func (*Routed) Teardown() error { return nil }

// Kernel is what Kubernetes users run: a flannel-shaped VXLAN overlay
// (vxlan device "flannel.1" per node, VNI 1, UDP 8472, no learning, static
// neighbour and FDB entries for the peer's VTEP, the subnet's .0/32 on the
// device, MTU 1450 containers) and kube-proxy-shaped iptables nat chains
// (KUBE-SERVICES → KUBE-SVC-x → KUBE-SEP-x with DNAT of the service IP's
// ports to the server, masquerade marks, KUBE-POSTROUTING) on both nodes.
// IPv4 only. The client sends to the service IP.
type Kernel struct {
	// Backends is the number of KUBE-SEP entries per service port (all
	// pointing at the one server); 0 means 1. With more than one the
	// KUBE-SVC chain picks with -m statistic --mode random as kube-proxy
	// does.
	Backends int
	t        *Topology
}

// Name implements Dataplane.
func (*Kernel) Name() string { return "kernel" }

// VXLAN parameters (flannel's defaults).
const (
	vxlanName = "flannel.1"
	vxlanVNI  = 1
	vxlanPort = 8472
)

func vtepMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x0e, 0, 0, 0, 0, byte(i)} }

// Setup implements Dataplane.
func (k *Kernel) Setup(ctx context.Context, t *Topology) error {
	k.t = t
	if err := nodesCommon(t); err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	type side struct {
		node      *testbed.Node
		subnet    netip.Prefix
		peer      *testbed.Node
		peerSubnt netip.Prefix
	}
	for _, s := range []side{{t.A, t.SubnetA, t.B, t.SubnetB}, {t.B, t.SubnetB, t.A, t.SubnetA}} {
		err := testbed.Handle(s.node.NS, func(h *netlink.Handle) error {
			ul, err := h.LinkByName(s.node.Uplink)
			if err != nil {
				return err
			}
			vx := &netlink.Vxlan{
				LinkAttrs:    netlink.LinkAttrs{Name: vxlanName, MTU: t.MTU, HardwareAddr: vtepMAC(s.node.Index)},
				VxlanId:      vxlanVNI,
				VtepDevIndex: ul.Attrs().Index,
				SrcAddr:      s.node.IP.AsSlice(),
				Port:         vxlanPort,
				Learning:     false,
			}
			if err := h.LinkAdd(vx); err != nil {
				return fmt.Errorf("vxlan add: %w", err)
			}
			l, err := h.LinkByName(vxlanName)
			if err != nil {
				return err
			}
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(s.subnet.Addr(), 32))}); err != nil {
				return fmt.Errorf("vxlan addr: %w", err)
			}
			if err := h.LinkSetUp(l); err != nil {
				return err
			}
			peerVtep := s.peerSubnt.Addr() // flannel: the peer subnet's .0
			if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4,
				State: netlink.NUD_PERMANENT, IP: peerVtep.AsSlice(), HardwareAddr: vtepMAC(s.peer.Index)}); err != nil {
				return fmt.Errorf("vxlan neigh: %w", err)
			}
			if err := h.NeighAppend(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE,
				State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: s.peer.IP.AsSlice(),
				HardwareAddr: vtepMAC(s.peer.Index)}); err != nil {
				return fmt.Errorf("vxlan fdb: %w", err)
			}
			if err := h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(s.peerSubnt),
				Gw: peerVtep.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}); err != nil {
				return fmt.Errorf("route %v via %v: %w", s.peerSubnt, peerVtep, err)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("kernel: node %s: %w", s.node.Name, err)
		}
		if err := iptablesRestore(ctx, s.node.NS, kubeProxyRules(t, max(k.Backends, 1))); err != nil {
			return fmt.Errorf("kernel: node %s: %w", s.node.Name, err)
		}
	}
	return nil
}

// Target implements Dataplane: the service IP.
func (k *Kernel) Target() netip.AddrPort {
	return netip.AddrPortFrom(k.t.ServiceIP, k.t.Ports.Flood)
}

// Teardown implements Dataplane; the namespaces take everything with them.
func (*Kernel) Teardown() error { return nil }

func iptablesRestore(ctx context.Context, ns, rules string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := testbed.Command(ctx, ns, "iptables-restore", "-w", "5")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore in %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// kubeChain names a chain the way kube-proxy does: prefix + 16 characters
// of a hash.
func kubeChain(prefix string, parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "/")))
	return prefix + strings.ToUpper(hex.EncodeToString(sum[:])[:16])
}

// kubeProxyRules renders the nat and filter tables kube-proxy (iptables
// mode, masquerade bit 0x4000, cluster CIDR = the platform range) would
// write for one ClusterIP service with the topology's three ports and
// backends endpoints (all the server).
func kubeProxyRules(t *Topology, backends int) string {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	const clusterCIDR = "10.16.0.0/12"
	type svc struct {
		proto string
		port  uint16
	}
	svcs := []svc{{"udp", t.Ports.Flood}, {"udp", t.Ports.Echo}, {"tcp", t.Ports.TCP}}
	var chains, rules []string
	for _, s := range svcs {
		name := fmt.Sprintf("default/bench:%s-%d", s.proto, s.port)
		svcChain := kubeChain("KUBE-SVC-", name)
		chains = append(chains, svcChain)
		rules = append(rules,
			fmt.Sprintf(`-A KUBE-SERVICES -d %s/32 -p %s -m comment --comment "%s cluster IP" -m %s --dport %d -j %s`,
				t.ServiceIP, s.proto, name, s.proto, s.port, svcChain),
			fmt.Sprintf(`-A %s ! -s %s -d %s/32 -p %s -m comment --comment "%s cluster IP" -m %s --dport %d -j KUBE-MARK-MASQ`,
				svcChain, clusterCIDR, t.ServiceIP, s.proto, name, s.proto, s.port))
		for i := range backends {
			sep := kubeChain("KUBE-SEP-", name, fmt.Sprint(i))
			chains = append(chains, sep)
			jump := fmt.Sprintf(`-A %s -m comment --comment "%s -> %s:%d"`, svcChain, name, t.ServerIP, s.port)
			if left := backends - i; left > 1 {
				jump += fmt.Sprintf(" -m statistic --mode random --probability %.11f", 1/float64(left))
			}
			rules = append(rules, jump+" -j "+sep,
				fmt.Sprintf(`-A %s -s %s/32 -m comment --comment "%s" -j KUBE-MARK-MASQ`, sep, t.ServerIP, name),
				fmt.Sprintf(`-A %s -p %s -m comment --comment "%s" -m %s -j DNAT --to-destination %s:%d`,
					sep, s.proto, name, s.proto, t.ServerIP, s.port))
		}
	}
	w("*nat")
	for _, c := range []string{"PREROUTING ACCEPT", "INPUT ACCEPT", "OUTPUT ACCEPT", "POSTROUTING ACCEPT"} {
		w(":%s [0:0]", c)
	}
	for _, c := range append([]string{"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"}, chains...) {
		w(":%s - [0:0]", c)
	}
	w(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	w(`-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000`)
	w(`-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`)
	w(`-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0`)
	w(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for _, r := range rules {
		w("%s", r)
	}
	w("COMMIT")
	w("*filter")
	w(":INPUT ACCEPT [0:0]")
	w(":FORWARD ACCEPT [0:0]")
	w(":OUTPUT ACCEPT [0:0]")
	w(":KUBE-FORWARD - [0:0]")
	w(`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`)
	w(`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
	w("COMMIT")
	return b.String()
}
