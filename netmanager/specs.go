package netmanager

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/policy"
)

// The table the data plane executes, made from the view's entries: what
// the cluster sends, converted to the engine's specs, with what could not
// be converted counted rather than lost silently.

// SpecSet is the data plane's view of a set of service entries.
type SpecSet struct {
	Services  []fastpath.ServiceSpec
	Instances []fastpath.InstanceSpec
}

// ConvertStats counts what ConvertEntries skipped.
type ConvertStats struct {
	IgnoredIPTypes int // service IPs of a policy the data plane does not know
	BadAddresses   int // unparsable addresses, or addresses already used by another entry
	NotRunning     int // instances without namespace IP or node
}

// ConvertEntries turns service entries into fastpath specs, sorted by job
// and instance number. IpType maps to a registered policy name
// (policy.Parse, case-insensitively; unknown types are skipped and
// counted). An instance runs when it has a host IP and at least one
// namespace IP; others are omitted. Node is host_ip:host_port; Local and
// Port stay zero (the data plane marks its own instances). An address
// claimed twice keeps its first owner in job order (fastpath.Builder
// rejects duplicates).
func ConvertEntries(entries []api.ServiceEntry) (SpecSet, ConvertStats) {
	var set SpecSet
	var st ConvertStats
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b api.ServiceEntry) int { return strings.Compare(a.JobName, b.JobName) })
	used := map[netip.Addr]bool{}
	// addr is a table key: an unset address is none; an address already
	// used is counted and dropped.
	addr := func(a netip.Addr) netip.Addr {
		if !a.IsValid() {
			return a
		}
		if a = a.Unmap(); used[a] {
			st.BadAddresses++
			return netip.Addr{}
		}
		used[a] = true
		return a
	}
	for i, e := range sorted {
		if e.JobName == "" || (i > 0 && sorted[i-1].JobName == e.JobName) {
			continue
		}
		svc := fastpath.ServiceSpec{Job: e.JobName}
		for _, sip := range e.ServiceIPList {
			pol, ok := policy.Parse(sip.IpType)
			if !ok {
				st.IgnoredIPTypes++
				continue
			}
			pip := fastpath.PolicyIP{Policy: pol.String(), V4: addr(sip.Address), V6: addr(sip.AddressV6)}
			if pip.V4.IsValid() || pip.V6.IsValid() {
				svc.IPs = append(svc.IPs, pip)
			}
		}
		set.Services = append(set.Services, svc)
		insts := slices.Clone(e.InstanceList)
		slices.SortStableFunc(insts, func(a, b api.Instance) int { return cmp.Compare(a.InstanceNumber, b.InstanceNumber) })
		for j, in := range insts {
			if in.InstanceNumber < 0 || (j > 0 && insts[j-1].InstanceNumber == in.InstanceNumber) {
				st.BadAddresses++
				continue
			}
			n4, n6, host := in.NamespaceIP.Unmap(), in.NamespaceIPv6.Unmap(), in.HostIP
			port := in.HostPort
			if port == 0 {
				port = api.DefaultTunnelPort
			}
			if !host.IsValid() || (!n4.IsValid() && !n6.IsValid()) || port < 0 || port > 65535 {
				st.NotRunning++
				continue
			}
			set.Instances = append(set.Instances, fastpath.InstanceSpec{
				Job: e.JobName, Number: uint32(in.InstanceNumber),
				IP4: addr(in.InstanceIP), IP6: addr(in.InstanceIPv6),
				NS4: n4, NS6: n6,
				Node: netip.AddrPortFrom(host.Unmap(), uint16(port)),
			})
		}
	}
	return set, st
}

// ConvertPeers turns the cluster's peer list into tunnel endpoints (port
// 0 means api.DefaultTunnelPort), dropping and counting bad ones. A peer
// with a public address (a node behind a NAT) is accepted from there too.
func ConvertPeers(peers []api.Peer) (out []netip.AddrPort, bad int) {
	out = make([]netip.AddrPort, 0, len(peers))
	add := func(a netip.Addr, port int) {
		if port == 0 {
			port = api.DefaultTunnelPort
		}
		if !a.IsValid() || port < 0 || port > 65535 {
			bad++
			return
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(port)))
	}
	for _, p := range peers {
		add(p.IP, p.Port)
		if p.PublicIP.IsValid() {
			add(p.PublicIP, p.PublicPort)
		}
	}
	return out, bad
}
