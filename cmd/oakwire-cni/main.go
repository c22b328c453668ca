// Command oakwire-cni is Oakwire's CNI plugin (CNI spec 1.0 and 1.1:
// ADD, DEL, CHECK, STATUS, GC, VERSION, through the containernetworking
// library's skel). It attaches a container through the node's netmanager
// (its local API on the unix socket), so containers of any CNI runtime
// (podman, containerd and nerdctl, CRI runtimes, Nomad) join the overlay
// like Oakestra's node engine's do.
//
// Network configuration (configs/oakwire.conflist):
//
//	{"cniVersion": "1.0.0", "name": "oakwire", "plugins": [{
//	   "type": "oakwire-cni",
//	   "socket": "/etc/netmanager/netmanager.sock",  // default
//	   "timeout": "30s",                             // bound of each call to netmanager
//	   "service": "", "instance": null,              // identity for every container of the network
//	   "capabilities": {"portMappings": true, "io.kubernetes.cri.pod-annotations": true, "oakwire": true}}]}
//
// Which service instance a container is, first found wins:
//
//  1. CNI_ARGS OAKWIRE_SERVICE=app.ns.svc.sns;OAKWIRE_INSTANCE=N (podman
//     passes the CNI_ARGS of its own environment through);
//  2. runtimeConfig "oakwire": {"service": "...", "instance": N}
//     (capability "oakwire"; cnitool's CAP_ARGS);
//  3. pod annotations oakwire.io/service and oakwire.io/instance
//     (capability io.kubernetes.cri.pod-annotations: containerd, CRI-O);
//  4. the network configuration's "service" and "instance".
//
// A container given none is client-only: netmanager places it as a new
// instance of its node's client service (docs/api.md), so it gets
// namespace IPs and reaches service IPs. Port mappings come from the
// portMappings capability (`podman run -p 8080:80`), on the node's own
// addresses (hostIP is ignored).
//
// Error codes: the spec's (4 invalid CNI_ARGS, 6 undecodable config, 7
// invalid config, 3 unknown container, 8 bad netns, 11 try again later:
// netmanager or its cluster not reachable, 50 STATUS: not available), and
// 100 (netmanager refused the attach: its message and code follow), 101
// (CHECK: the attachment differs from the previous result).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/oakwire/oakwire/netmanager/localapi"
)

// Error codes of our own (the spec leaves 100 and up to plugins).
const (
	errRefused         uint = 100
	errCheckMismatch   uint = 101
	errNotAvailable    uint = 50 // spec 1.1 STATUS
	defaultTimeout          = 30 * time.Second
	annotationService       = "oakwire.io/service"
	annotationInstance      = "oakwire.io/instance"
)

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.PluginConf
	// Socket is netmanager's unix socket (default localapi.DefaultSocket).
	Socket string `json:"socket,omitempty"`
	// Timeout bounds each call to netmanager (Go duration, default 30s).
	Timeout string `json:"timeout,omitempty"`
	// Service and Instance name the service instance of every container
	// of this network (the last source consulted).
	Service  string `json:"service,omitempty"`
	Instance *int   `json:"instance,omitempty"`

	RuntimeConfig struct {
		Oakwire        *Identity         `json:"oakwire,omitempty"`
		PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
		PortMappings   []PortMapEntry    `json:"portMappings,omitempty"`
	} `json:"runtimeConfig"`

	timeout time.Duration
}

// Identity is a service instance (runtimeConfig "oakwire").
type Identity struct {
	Service  string `json:"service"`
	Instance *int   `json:"instance"`
}

// PortMapEntry is one entry of the portMappings capability.
type PortMapEntry struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// cniArgs are the CNI_ARGS keys the plugin reads (others are ignored).
type cniArgs struct {
	types.CommonArgs
	OAKWIRE_SERVICE  types.UnmarshallableString
	OAKWIRE_INSTANCE types.UnmarshallableString
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus, GC: cmdGC},
		version.PluginSupports("1.0.0", "1.1.0"), "oakwire-cni: attaches containers to the Oakwire overlay through the node's netmanager")
}

func loadConf(stdin []byte) (*NetConf, error) {
	c := &NetConf{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "network configuration: "+err.Error(), "")
	}
	c.timeout = defaultTimeout
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 || d > 10*time.Minute {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("timeout: %q: want a Go duration in (0, 10m]", c.Timeout), "")
		}
		c.timeout = d
	}
	if c.Socket != "" && !strings.HasPrefix(c.Socket, "/") {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("socket: %q: want an absolute path", c.Socket), "")
	}
	if c.Instance != nil && *c.Instance < 0 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("instance: %d is negative", *c.Instance), "")
	}
	if (c.Service == "") != (c.Instance == nil) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "service and instance: give both or neither", "")
	}
	return c, nil
}

func (c *NetConf) client() *localapi.Client { return localapi.New(c.Socket, c.timeout) }

// identity is the container's service instance (service "" is a
// client-only container) and where it came from.
func identity(args *skel.CmdArgs, c *NetConf) (svc string, inst int, err error) {
	var a cniArgs
	a.IgnoreUnknown = true
	if err := types.LoadArgs(args.Args, &a); err != nil {
		return "", 0, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS: "+err.Error(), "")
	}
	pick := func(where, s, n string, ok bool) (string, int, error) {
		if !ok && s == "" {
			return "", -1, nil
		}
		if s == "" || !ok {
			return "", 0, types.NewError(types.ErrInvalidEnvironmentVariables, where+": give a service and an instance number, or neither", "")
		}
		i, err := strconv.Atoi(n)
		if err != nil || i < 0 {
			return "", 0, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("%s: instance %q: want a number ≥ 0", where, n), "")
		}
		return s, i, nil
	}
	sources := []func() (string, int, error){
		func() (string, int, error) {
			return pick("CNI_ARGS OAKWIRE_SERVICE/OAKWIRE_INSTANCE", string(a.OAKWIRE_SERVICE), string(a.OAKWIRE_INSTANCE), a.OAKWIRE_INSTANCE != "")
		},
		func() (string, int, error) {
			o := c.RuntimeConfig.Oakwire
			if o == nil {
				return "", -1, nil
			}
			n := ""
			if o.Instance != nil {
				n = strconv.Itoa(*o.Instance)
			}
			return pick(`runtimeConfig "oakwire"`, o.Service, n, o.Instance != nil)
		},
		func() (string, int, error) {
			n, ok := c.RuntimeConfig.PodAnnotations[annotationInstance]
			return pick("pod annotations "+annotationService+"/"+annotationInstance, c.RuntimeConfig.PodAnnotations[annotationService], n, ok)
		},
		func() (string, int, error) {
			if c.Instance == nil {
				return "", -1, nil
			}
			return c.Service, *c.Instance, nil
		},
	}
	for _, src := range sources {
		s, i, err := src()
		if err != nil || i >= 0 {
			return s, i, err
		}
	}
	return "", 0, nil
}

// portMappings turns the portMappings capability into netmanager's
// "8080:80/tcp;..." (hostIP ignored: netmanager maps on the node's own
// addresses).
func portMappings(ms []PortMapEntry) (string, error) {
	var out []string
	for _, m := range ms {
		p := strings.ToLower(m.Protocol)
		if p == "" {
			p = "tcp"
		}
		if m.HostPort < 1 || m.HostPort > 65535 || m.ContainerPort < 1 || m.ContainerPort > 65535 || (p != "tcp" && p != "udp") {
			return "", types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("runtimeConfig portMappings: %+v: want ports 1-65535 and tcp or udp", m), "")
		}
		out = append(out, fmt.Sprintf("%d:%d/%s", m.HostPort, m.ContainerPort, p))
	}
	return strings.Join(out, ";"), nil
}

func cmdAdd(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	svc, inst, err := identity(args, c)
	if err != nil {
		return err
	}
	pm, err := portMappings(c.RuntimeConfig.PortMappings)
	if err != nil {
		return err
	}
	req := localapi.DeployRequest{ServiceName: svc, InstanceNumber: inst, Client: svc == "", PortMappings: pm,
		ContainerID: args.ContainerID, IfName: args.IfName, Network: c.Name}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	resp, err := deployNetns(ctx, c.client(), args.Netns, req)
	if err != nil {
		return apiErr("attach", c, err)
	}
	res, err := result(resp, args.Netns)
	if err != nil {
		return types.NewError(types.ErrInternal, "netmanager's answer: "+err.Error(), "")
	}
	return types.PrintResult(res, c.CNIVersion)
}

// result is the CNI result of an attach: the host-side veth, the
// container's interface, its namespace IPs (/32 and /128) with the
// gateway, and the default routes via the gateway.
func result(r *localapi.DeployResponse, netns string) (*types100.Result, error) {
	ns4, ns6 := net.ParseIP(r.NsAddress), net.ParseIP(r.NsAddressV6)
	gw4, gw6 := net.ParseIP(r.Gateway), net.ParseIP(r.GatewayV6)
	if ns4 == nil || ns6 == nil || gw4 == nil || gw6 == nil {
		return nil, fmt.Errorf("addresses %q %q, gateways %q %q", r.NsAddress, r.NsAddressV6, r.Gateway, r.GatewayV6)
	}
	ctr := 1
	return &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: r.HostIf, Mac: r.HostMAC, Mtu: r.MTU},
			{Name: r.IfName, Mac: r.MAC, Mtu: r.MTU, Sandbox: netns},
		},
		IPs: []*types100.IPConfig{
			{Interface: &ctr, Address: net.IPNet{IP: ns4.To4(), Mask: net.CIDRMask(32, 32)}, Gateway: gw4.To4()},
			{Interface: &ctr, Address: net.IPNet{IP: ns6, Mask: net.CIDRMask(128, 128)}, Gateway: gw6},
		},
		Routes: []*types.Route{
			{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw4.To4()},
			{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: gw6},
		},
	}, nil
}

func cmdDel(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	err = c.client().Undeploy(ctx, localapi.UndeployRequest{ContainerID: args.ContainerID, IfName: args.IfName})
	if ae, ok := errors.AsType[*localapi.Error](err); ok && ae.Code == "not_deployed" {
		return nil // DEL is idempotent: nothing (left) to detach
	}
	if err != nil {
		return apiErr("detach", c, err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if c.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK: no prevResult", "")
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	prev, err := types100.NewResultFromResult(c.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	st, err := c.client().Status(ctx)
	if err != nil {
		return apiErr("check", c, err)
	}
	var ctr *localapi.ContainerInfo
	for i := range st.Containers {
		if x := &st.Containers[i]; x.ContainerID == args.ContainerID && x.ContIf == args.IfName {
			ctr = x
		}
	}
	if ctr == nil {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("container %s interface %s: not attached on this node", args.ContainerID, args.IfName), "")
	}
	want := map[string]bool{ctr.NSIP4: true, ctr.NSIP6: true}
	for _, ip := range prev.IPs {
		if !want[ip.Address.IP.String()] {
			return types.NewError(errCheckMismatch, fmt.Sprintf("prevResult address %s: netmanager attached %s and %s", ip.Address.IP, ctr.NSIP4, ctr.NSIP6), "")
		}
		delete(want, ip.Address.IP.String())
	}
	if len(want) > 0 {
		return types.NewError(errCheckMismatch, fmt.Sprintf("prevResult lacks the attached addresses %v", keys(want)), "")
	}
	if err := checkNetns(args.Netns, args.IfName, ctr); err != nil {
		return types.NewError(errCheckMismatch, err.Error(), "")
	}
	return nil
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func cmdStatus(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	st, err := c.client().Status(ctx)
	if err != nil {
		return types.NewError(errNotAvailable, err.Error(), "")
	}
	if !st.Registered || !st.Confirmed {
		msg := "netmanager at " + c.client().Socket() + ": not registered with its cluster yet"
		if st.LastError != "" {
			msg += " (last error: " + st.LastError + ")"
		}
		return types.NewError(errNotAvailable, msg, "")
	}
	return nil
}

// cmdGC detaches this network's attachments the runtime no longer has
// (CNI 1.1): those netmanager holds with a container id of this network
// that are not among cni.dev/valid-attachments.
func cmdGC(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[types.GCAttachment]bool{}
	for _, a := range c.ValidAttachments {
		valid[a] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	cl := c.client()
	st, err := cl.Status(ctx)
	if err != nil {
		return apiErr("gc", c, err)
	}
	var errs []error
	for _, x := range st.Containers {
		if x.ContainerID == "" || x.Network != c.Name || valid[types.GCAttachment{ContainerID: x.ContainerID, IfName: x.ContIf}] {
			continue
		}
		err := cl.Undeploy(ctx, localapi.UndeployRequest{ContainerID: x.ContainerID, IfName: x.ContIf})
		if ae, ok := errors.AsType[*localapi.Error](err); err != nil && !(ok && ae.Code == "not_deployed") {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return apiErr("gc", c, err)
	}
	return nil
}

// apiErr turns a failed call into a CNI error: netmanager unreachable
// (or its cluster) is 11, try again later; its refusals keep its message
// and code.
func apiErr(what string, c *NetConf, err error) error {
	if te, ok := errors.AsType[*types.Error](err); ok {
		return te
	}
	if errors.Is(err, localapi.ErrUnreachable) || errors.Is(err, context.DeadlineExceeded) {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: netmanager not reachable at %s within %v: %v (is the netmanager daemon running on this node?)",
			what, c.client().Socket(), c.timeout, err), "")
	}
	ae, ok := errors.AsType[*localapi.Error](err)
	if !ok {
		return types.NewError(types.ErrInternal, what+": "+err.Error(), "")
	}
	msg := fmt.Sprintf("%s: netmanager: %s (%s)", what, ae.Message, ae.Code)
	switch {
	case ae.Code == "not_deployed":
		return types.NewError(types.ErrUnknownContainer, msg, "")
	case ae.Code == "unknown_netns" || ae.Code == "bad_netns" || ae.Code == "netns_busy":
		return types.NewError(types.ErrInvalidNetNS, msg, "")
	case ae.Status == 400:
		return types.NewError(types.ErrInvalidNetworkConfig, msg, "")
	case ae.Status == 502 || ae.Status == 503:
		return types.NewError(types.ErrTryAgainLater, msg, "")
	case ae.Status/100 == 4:
		return types.NewError(errRefused, msg, "")
	}
	return types.NewError(types.ErrInternal, msg, "")
}
