package netmanager

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/internal/ethtool"
	"github.com/oakwire/oakwire/ipam"
)

// Everything here acts on the network namespace the daemon runs in (the
// node's), except where a container namespace handle is passed explicitly;
// no function changes the calling thread's namespace.

// gatewayDev is the dummy link holding the node subnet's gateway addresses
// (.1/26 and ::1/120). Why a dummy: the gateway must exist once per node,
// not per container, and a dummy is never up towards any network. Its
// connected routes swallow traffic to unallocated nsIPs; each container has
// a more specific host route through its own veth. Containers reach .1/::1
// through a permanent neighbour entry naming the host-side veth's MAC (so
// no proxy ARP / proxy NDP is needed; Linux would answer ARP for .1 on any
// interface anyway, but not NDP for ::1).
const gatewayDev = "ow0"

// forwardingSysctls are set to 1 by node setup and restored by teardown.
var forwardingSysctls = []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"}

func sysctlPath(k string) string { return filepath.Join("/proc/sys", k) }

// setupNode makes the gateway, forwarding and platform routes; idempotent.
// saved receives the previous sysctl values it changes (first time only).
func setupNode(cfg *Config, sub ipam.SubnetPair, gw ipam.Pair, saved map[string]string) error {
	for _, k := range forwardingSysctls {
		old, err := os.ReadFile(sysctlPath(k))
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", k, err)
		}
		if _, ok := saved[k]; !ok {
			saved[k] = strings.TrimSpace(string(old))
		}
		if err := os.WriteFile(sysctlPath(k), []byte("1"), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=1: %w", k, err)
		}
	}
	l, err := netlink.LinkByName(gatewayDev)
	if _, nf := errors.AsType[netlink.LinkNotFoundError](err); nf {
		// A dummy where the kernel has it, else a bridge without ports
		// (kernels built without CONFIG_DUMMY; a portless bridge is up and
		// never forwards anywhere).
		d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: gatewayDev, MTU: cfg.MTU}}
		aerr := netlink.LinkAdd(d)
		if errors.Is(aerr, unix.EOPNOTSUPP) {
			aerr = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: gatewayDev, MTU: cfg.MTU}})
		}
		if aerr != nil {
			return fmt.Errorf("gateway %s: add: %w", gatewayDev, aerr)
		}
		l, err = netlink.LinkByName(gatewayDev)
	}
	if err != nil {
		return fmt.Errorf("gateway %s: %w", gatewayDev, err)
	}
	if l.Type() != "dummy" && l.Type() != "bridge" {
		return fmt.Errorf("gateway %s: exists as a %s link, not dummy or bridge", gatewayDev, l.Type())
	}
	if br, ok := l.(*netlink.Bridge); ok {
		if ports, err := bridgePorts(br); err != nil || ports > 0 {
			return fmt.Errorf("gateway %s: a bridge with %d ports is not ours (%v)", gatewayDev, ports, err)
		}
	}
	for _, p := range []netip.Prefix{
		netip.PrefixFrom(gw.V4, sub.V4.Bits()),
		netip.PrefixFrom(gw.V6, sub.V6.Bits()),
	} {
		if err := netlink.AddrReplace(l, nlAddr(p)); err != nil {
			return fmt.Errorf("gateway %s: addr %s: %w", gatewayDev, p, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("gateway %s: up: %w", gatewayDev, err)
	}
	p4, p6 := cfg.platforms()
	for _, p := range []netip.Prefix{p4, p6} {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(p), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("platform route %s: %w", p, err)
		}
	}
	return nil
}

func bridgePorts(br *netlink.Bridge) (int, error) {
	ls, err := netlink.LinkList()
	n := 0
	for _, l := range ls {
		if l.Attrs().MasterIndex == br.Index {
			n++
		}
	}
	return n, err
}

// teardownNode deletes the gateway link (its addresses and routes go with
// it), the nftables table, and restores the forwarding sysctls.
func teardownNode(saved map[string]string) error {
	var errs []error
	if err := deleteLink(gatewayDev); err != nil {
		errs = append(errs, err)
	}
	if err := deleteNftTable(); err != nil {
		errs = append(errs, err)
	}
	for k, v := range saved {
		if err := os.WriteFile(sysctlPath(k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
		}
	}
	return errors.Join(errs...)
}

func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if _, nf := errors.AsType[netlink.LinkNotFoundError](err); nf {
		return nil
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

func applyNft(ruleset string) error {
	return runNft(ruleset, "-f", "-")
}

func deleteNftTable() error {
	err := runNft("", "delete", "table", "inet", nftTable)
	if err != nil && (strings.Contains(err.Error(), "No such file") || strings.Contains(err.Error(), "does not exist")) {
		return nil
	}
	return err
}

func runNft(stdin string, args ...string) error { return run(stdin, "nft", args...) }

// openNetns opens the container's network namespace by pid or by path and
// checks it is a network namespace other than the daemon's own, and, when
// inode is not 0, the one with that inode.
//
// A path is opened in the daemon's mount namespace. A runtime in another
// one (podman under `ip netns exec`, a unit with PrivateTmp, a runtime
// that mounts its netns files privately) makes netns files the daemon
// sees as empty files, or not at all: such a caller passes a descriptor
// of its own instead (/proc/PID/fd/N, which resolves in any mount
// namespace), with the inode it expects so a descriptor of another
// process (a caller in another PID namespace) is refused.
func openNetns(pid int, path string, inode uint64) (netns.NsHandle, error) {
	var h netns.NsHandle
	var err error
	var what string
	if pid > 0 {
		what = "pid " + strconv.Itoa(pid)
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d", pid)); serr != nil {
			return -1, badRequest("unknown_pid", "pid: no process %d", pid)
		}
		h, err = netns.GetFromPid(pid)
	} else {
		what = "netns " + path
		if !filepath.IsAbs(path) {
			return -1, badRequest("bad_netns", "netns: %q is not an absolute path", path)
		}
		h, err = netns.GetFromPath(path)
	}
	if err != nil {
		if pid > 0 {
			return -1, badRequest("unknown_pid", "pid: %d: network namespace: %v", pid, err)
		}
		return -1, badRequest("unknown_netns", "netns: %q: %v", path, err)
	}
	t, err := unix.IoctlRetInt(int(h), unix.NS_GET_NSTYPE)
	if err != nil || t != unix.CLONE_NEWNET {
		h.Close()
		return -1, badRequest("unknown_netns", "%s: not a network namespace (a netns file mounted where the daemon does not see it?)", what)
	}
	if inode != 0 {
		var st unix.Stat_t
		if err := unix.Fstat(int(h), &st); err != nil || st.Ino != inode {
			h.Close()
			return -1, badRequest("unknown_netns", "%s: not the network namespace with inode %d", what, inode)
		}
	}
	self, err := netns.Get()
	if err == nil {
		same := self.Equal(h)
		self.Close()
		if same {
			h.Close()
			return -1, badRequest("bad_netns", "%s: is the node's own network namespace", what)
		}
	}
	return h, nil
}

// attach creates c's veth pair and configures both ends (c's names, MACs
// and nsIPs are filled in). keepOffloads leaves the container's TX
// checksum offload, TSO and GSO on (the kernel tier keeps super-packets
// whole; its workers recompute checksums). On error everything it made is
// removed.
func attach(c *Container, nsh netns.NsHandle, gw ipam.Pair, keepOffloads bool) (err error) {
	ch, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in container netns: %w", err)
	}
	defer ch.Close()
	if _, err := ch.LinkByName(c.ContIf); err == nil {
		return conflict("netns_busy", "netns: container namespace already has an interface %q", c.ContIf)
	}
	if _, err := netlink.LinkByName(c.HostIf); err == nil {
		return conflict("link_exists", "interface %s already exists on the node", c.HostIf)
	}
	tmp := c.HostIf + "c"
	_ = deleteLink(tmp) // a leftover of a crash in the middle of an attach
	v := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: c.HostIf, MTU: c.MTU, HardwareAddr: net.HardwareAddr(c.HostMAC)},
		PeerName:         tmp,
		PeerHardwareAddr: net.HardwareAddr(c.ContMAC),
		PeerMTU:          uint32(c.MTU),
	}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s: %w", c.HostIf, err)
	}
	defer func() {
		if err != nil {
			if derr := deleteLink(c.HostIf); derr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: %w", derr))
			}
		}
	}()
	// Without the kernel tier, offloads off on the container end before it
	// moves (features move with the device): TX checksum offload, TSO and
	// GSO (DESIGN.md: a partial checksum cannot be patched incrementally,
	// and generic XDP stalls TCP while TSO/GSO are on).
	if !keepOffloads {
		for _, cmd := range []uint32{unix.ETHTOOL_STXCSUM, unix.ETHTOOL_STSO, unix.ETHTOOL_SGSO} {
			if err := ethtool.Set(tmp, cmd, 0); err != nil {
				return err
			}
		}
	}
	peer, err := netlink.LinkByName(tmp)
	if err != nil {
		return fmt.Errorf("veth peer %s: %w", tmp, err)
	}
	if err := netlink.LinkSetNsFd(peer, int(nsh)); err != nil {
		return fmt.Errorf("move %s to container netns: %w", tmp, err)
	}
	if err := configureContainerSide(ch, c, tmp, gw); err != nil {
		return err
	}
	host, err := netlink.LinkByName(c.HostIf)
	if err != nil {
		return fmt.Errorf("veth %s: %w", c.HostIf, err)
	}
	c.hostIndex = host.Attrs().Index
	return configureHostSide(host, c)
}

func configureContainerSide(ch *netlink.Handle, c *Container, tmp string, gw ipam.Pair) error {
	l, err := ch.LinkByName(tmp)
	if err != nil {
		return fmt.Errorf("container side %s: %w", tmp, err)
	}
	if err := ch.LinkSetName(l, c.ContIf); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, c.ContIf, err)
	}
	for _, p := range []netip.Prefix{netip.PrefixFrom(c.NSIP4, 32), netip.PrefixFrom(c.NSIP6, 128)} {
		if err := ch.AddrReplace(l, nlAddr(p)); err != nil {
			return fmt.Errorf("container addr %s: %w", p, err)
		}
	}
	if lo, err := ch.LinkByName("lo"); err == nil {
		_ = ch.LinkSetUp(lo)
	}
	if err := ch.LinkSetUp(l); err != nil {
		return fmt.Errorf("container %s up: %w", c.ContIf, err)
	}
	idx := l.Attrs().Index
	for _, g := range []netip.Addr{gw.V4, gw.V6} {
		n := &netlink.Neigh{LinkIndex: idx, IP: g.AsSlice(), HardwareAddr: net.HardwareAddr(c.HostMAC),
			State: netlink.NUD_PERMANENT, Family: family(g)}
		if err := ch.NeighSet(n); err != nil {
			return fmt.Errorf("container neighbour %s: %w", g, err)
		}
		r := &netlink.Route{LinkIndex: idx, Gw: g.AsSlice(), Flags: int(netlink.FLAG_ONLINK), Family: family(g)}
		if err := ch.RouteReplace(r); err != nil {
			return fmt.Errorf("container default route via %s: %w", g, err)
		}
	}
	return nil
}

// configureHostSide raises the host end and routes the nsIPs to it, with
// permanent neighbour entries for the container's MAC. Idempotent (also
// used on re-adopt).
func configureHostSide(host netlink.Link, c *Container) error {
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("veth %s up: %w", c.HostIf, err)
	}
	idx := host.Attrs().Index
	for _, a := range []netip.Addr{c.NSIP4, c.NSIP6} {
		n := &netlink.Neigh{LinkIndex: idx, IP: a.AsSlice(), HardwareAddr: net.HardwareAddr(c.ContMAC),
			State: netlink.NUD_PERMANENT, Family: family(a)}
		if err := netlink.NeighSet(n); err != nil {
			return fmt.Errorf("neighbour %s on %s: %w", a, c.HostIf, err)
		}
		r := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.PrefixFrom(a, a.BitLen())), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s dev %s: %w", a, c.HostIf, err)
		}
	}
	return nil
}

// detach deletes the host-side veth; the container end goes with it.
func detach(c *Container) error { return deleteLink(c.HostIf) }

// readopt checks that c's host-side veth still exists with the MAC we gave
// it and restores its host-side configuration. false: it is gone.
func readopt(c *Container) (bool, error) {
	l, err := netlink.LinkByName(c.HostIf)
	if _, nf := errors.AsType[netlink.LinkNotFoundError](err); nf {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("link %s: %w", c.HostIf, err)
	}
	if l.Type() != "veth" || !bytes.Equal(l.Attrs().HardwareAddr, c.HostMAC) {
		return false, nil
	}
	// A veth whose peer died with its namespace is deleted with it, so an
	// existing host side means the container side exists too.
	c.hostIndex = l.Attrs().Index
	return true, configureHostSide(l, c)
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// socketAnswers reports whether a daemon serves on the unix socket path.
func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
