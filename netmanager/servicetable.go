package netmanager

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/netmanager/localapi"
)

// What the operator sees of the view (GET /services, netmanager services)
// and the lookups the flow listing and the per-service metrics need.

// setPosition records the watch's position in the cluster's change stream.
func (v *ServiceView) setPosition(epoch string, version uint64) {
	v.mu.Lock()
	v.posEpoch, v.posVersion = epoch, version
	v.mu.Unlock()
}

// Table is the view as GET /services shows it: every entry, sorted by job,
// with where it came from and the change-stream version it is at.
func (v *ServiceView) Table() localapi.Services {
	now := v.opt.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	out := localapi.Services{Epoch: v.posEpoch, Version: v.posVersion, Peers: len(v.peers),
		Services: make([]localapi.ServiceInfo, 0, len(v.entries))}
	for job, e := range v.entries {
		o := v.origin[job]
		si := localapi.ServiceInfo{Job: job, Version: o.version, Source: o.source, Local: v.local[job],
			IdleMS:     now.Sub(v.lastUsed[job]).Milliseconds(),
			ServiceIPs: make([]localapi.ServiceIP, 0, len(e.ServiceIPList)),
			Instances:  make([]localapi.InstanceInfo, 0, len(e.InstanceList))}
		if si.Local {
			si.IdleMS = 0
		}
		for _, s := range e.ServiceIPList {
			si.ServiceIPs = append(si.ServiceIPs, localapi.ServiceIP{Policy: s.IpType, V4: s.Address, V6: s.AddressV6})
		}
		slices.SortFunc(si.ServiceIPs, func(a, b localapi.ServiceIP) int { return cmp.Compare(a.Policy, b.Policy) })
		for _, in := range e.InstanceList {
			ii := localapi.InstanceInfo{Number: in.InstanceNumber, IP: in.InstanceIP, IPv6: in.InstanceIPv6,
				NSIP: in.NamespaceIP, NSIPv6: in.NamespaceIPv6, Cluster: in.ClusterID}
			if in.HostIP != "" {
				port := in.HostPort
				if port == 0 {
					port = DefaultTunnelPort
				}
				ii.Node = net.JoinHostPort(in.HostIP, strconv.Itoa(port))
			}
			si.Instances = append(si.Instances, ii)
		}
		slices.SortFunc(si.Instances, func(a, b localapi.InstanceInfo) int { return cmp.Compare(a.Number, b.Number) })
		out.Services = append(out.Services, si)
	}
	slices.SortFunc(out.Services, func(a, b localapi.ServiceInfo) int { return cmp.Compare(a.Job, b.Job) })
	return out
}

// InstanceAt returns the job and instance number owning instance IP addr
// (v4 or v6).
func (v *ServiceView) InstanceAt(addr netip.Addr) (job string, n int, ok bool) {
	addr = addr.Unmap()
	v.mu.Lock()
	defer v.mu.Unlock()
	job, ok = v.byAddr[addr]
	if !ok {
		return "", 0, false
	}
	if in, ok := findInstance(v.entries[job], func(in nodeclient.Instance) bool {
		return parsesTo(in.InstanceIP, addr) || parsesTo(in.InstanceIPv6, addr)
	}); ok {
		return job, in.InstanceNumber, true
	}
	return "", 0, false
}

// InstanceIP returns the instance IP of instance n of job in v6's family
// (v6: the IPv6 one).
func (v *ServiceView) InstanceIP(job string, n int, v6 bool) (netip.Addr, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	in, ok := findInstance(v.entries[job], func(in nodeclient.Instance) bool { return in.InstanceNumber == n })
	if !ok {
		return netip.Addr{}, false
	}
	s := in.InstanceIP
	if v6 {
		s = in.InstanceIPv6
	}
	a, err := netip.ParseAddr(s)
	return a.Unmap(), err == nil
}

func findInstance(e nodeclient.ServiceEntry, match func(nodeclient.Instance) bool) (nodeclient.Instance, bool) {
	for _, in := range e.InstanceList {
		if match(in) {
			return in, true
		}
	}
	return nodeclient.Instance{}, false
}

func parsesTo(s string, a netip.Addr) bool {
	b, err := netip.ParseAddr(s)
	return err == nil && b.Unmap() == a
}
