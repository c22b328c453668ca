package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/netmanager/localapi"
)

// deployNetns attaches the container whose network namespace is path.
//
// netmanager opens the namespace itself, in its own mount namespace,
// where a runtime's netns file may not be mounted (podman under `ip netns
// exec`, a daemon with PrivateTmp). So the plugin holds the namespace open
// and names its descriptor, /proc/<pid>/fd/<n>, which resolves in any
// mount namespace, with the namespace's inode (netmanager refuses a path
// that is another namespace: a daemon in another PID namespace would read
// another process's descriptor). If netmanager cannot use the descriptor
// it gets the runtime's path.
func deployNetns(ctx context.Context, c *localapi.Client, path string, req localapi.DeployRequest) (*localapi.DeployResponse, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("netns %s: %v", path, err), "")
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("netns %s: %v", path, err), "")
	}
	if t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("netns %s: not a network namespace", path), "")
	}
	req.Netns, req.NetnsInode = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()), st.Ino
	resp, err := c.Deploy(ctx, req)
	if ae, ok := errors.AsType[*localapi.Error](err); ok && ae.Code == "unknown_netns" {
		req.Netns = path
		resp, err = c.Deploy(ctx, req)
	}
	return resp, err
}

// checkNetns checks that the container's interface ifName exists in the
// namespace at path with the addresses netmanager attached and default
// routes via the gateway.
func checkNetns(path, ifName string, ctr *localapi.ContainerInfo) error {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer nh.Close()
	l, err := nh.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("interface %s in %s: %w", ifName, path, err)
	}
	if mac := l.Attrs().HardwareAddr.String(); mac != ctr.ContMAC {
		return fmt.Errorf("interface %s: MAC %s, netmanager attached %s", ifName, mac, ctr.ContMAC)
	}
	addrs, err := nh.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("interface %s: addresses: %w", ifName, err)
	}
	for _, want := range []string{ctr.NSIP4, ctr.NSIP6} {
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.String() == want }) {
			return fmt.Errorf("interface %s: lacks address %s", ifName, want)
		}
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := nh.RouteList(l, fam)
		if err != nil {
			return fmt.Errorf("interface %s: routes: %w", ifName, err)
		}
		if !slices.ContainsFunc(rs, func(r netlink.Route) bool {
			return r.Gw != nil && (r.Dst == nil || isDefault(r.Dst))
		}) {
			return fmt.Errorf("interface %s: no default route (family %d) via the gateway", ifName, fam)
		}
	}
	return nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
