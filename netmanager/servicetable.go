package netmanager

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/oakwire/oakwire/api"
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
			si.ServiceIPs = append(si.ServiceIPs, localapi.ServiceIP{Policy: s.IpType, V4: addrText(s.Address), V6: addrText(s.AddressV6)})
		}
		slices.SortFunc(si.ServiceIPs, func(a, b localapi.ServiceIP) int { return cmp.Compare(a.Policy, b.Policy) })
		for _, in := range e.InstanceList {
			ii := localapi.InstanceInfo{Number: in.InstanceNumber, IP: addrText(in.InstanceIP), IPv6: addrText(in.InstanceIPv6),
				NSIP: addrText(in.NamespaceIP), NSIPv6: addrText(in.NamespaceIPv6), Cluster: in.ClusterID}
			if in.HostIP.IsValid() {
				port := in.HostPort
				if port == 0 {
					port = api.DefaultTunnelPort
				}
				ii.Node = netip.AddrPortFrom(in.HostIP, uint16(port)).String()
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
	if in, ok := findInstance(v.entries[job], func(in api.Instance) bool {
		return in.InstanceIP.Unmap() == addr || in.InstanceIPv6.Unmap() == addr
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
	in, ok := findInstance(v.entries[job], func(in api.Instance) bool { return in.InstanceNumber == n })
	if !ok {
		return netip.Addr{}, false
	}
	a := in.InstanceIP
	if v6 {
		a = in.InstanceIPv6
	}
	return a.Unmap(), a.IsValid()
}

func findInstance(e api.ServiceEntry, match func(api.Instance) bool) (api.Instance, bool) {
	for _, in := range e.InstanceList {
		if match(in) {
			return in, true
		}
	}
	return api.Instance{}, false
}

// addrText is a's text, or "" for no address.
func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
