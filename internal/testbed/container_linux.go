package testbed

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Container returns the container named name, or nil.
func (n *Node) Container(name string) *Container {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.containers[name]
}

// AddContainer adds a container namespace to node n with eth0 addressed and
// routed per cfg; the host-side veth is up, without addresses unless
// cfg.HostAddrs says so.
func (n *Node) AddContainer(name string, cfg ContainerConfig) (*Container, error) {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return nil, fmt.Errorf("add container %q: bad name", name)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1450
	}
	if cfg.HostIf == "" {
		cfg.HostIf = "c" + name
	}
	if len(cfg.HostIf) > unix.IFNAMSIZ-1 {
		return nil, fmt.Errorf("add container %q: host interface name %q longer than %d", name, cfg.HostIf, unix.IFNAMSIZ-1)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.containers[name]; ok {
		return nil, fmt.Errorf("add container %q on %s: exists", name, n.Name)
	}
	b := n.Bed
	b.mu.Lock()
	ns, err := b.newNSLocked(n.Name + "-" + name)
	b.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("add container %q: %w", name, err)
	}
	c := &Container{Node: n, Name: name, NS: ns, IfName: "eth0", HostIf: cfg.HostIf, V4: cfg.V4, V6: cfg.V6}
	n.containers[name] = c
	err = withHandle(n.NS, func(h *netlink.Handle) error {
		if err := addVeth(h, c.HostIf, ns, c.IfName, cfg.MTU, 1); err != nil {
			return err
		}
		l, err := h.LinkByName(c.HostIf)
		if err != nil {
			return err
		}
		for _, a := range cfg.HostAddrs {
			if err := addAddr(h, l, a); err != nil {
				return err
			}
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		return nil, fmt.Errorf("add container %q: %w", name, err)
	}
	err = withHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.IfName)
		if err != nil {
			return err
		}
		for _, p := range []netip.Prefix{cfg.V4, cfg.V6} {
			if p.IsValid() {
				if err := addAddr(h, l, p); err != nil {
					return err
				}
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		for _, gw := range []netip.Addr{cfg.GW4, cfg.GW6} {
			if !gw.IsValid() {
				continue
			}
			r := &netlink.Route{
				LinkIndex: l.Attrs().Index,
				Gw:        gw.AsSlice(),
				Flags:     int(netlink.FLAG_ONLINK),
			}
			if err := h.RouteAdd(r); err != nil {
				return fmt.Errorf("default route via %v: %w", gw, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("add container %q: %w", name, err)
	}
	return c, nil
}

// HostIndex returns the ifindex of the host-side veth inside the node
// namespace.
func (c *Container) HostIndex() (int, error) {
	var idx int
	err := withHandle(c.Node.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.HostIf)
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		return nil
	})
	return idx, err
}
