package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/policy"
	"github.com/valyala/fasthttp"
)

// What root does for callers that are Oakestra's own components (issue
// 12; docs/api.md "Oakestra compatibility"): the calling cluster known by
// its address, IPs written with underscores, and the user-facing
// /api/pubnet/ endpoints with Oakestra's shapes.

// callerCluster is the cluster a table query or interest drop is for: the
// query's cluster_id, else (Oakestra's cluster service manager sends none,
// or the string "None" when it does not know its own id) the one
// registered cluster whose cluster_address is the caller's source address.
// "" when there is no such cluster, or more than one. The request still
// needed a valid token to get here.
func (r *Root) callerCluster(ctx *fasthttp.RequestCtx) (string, error) {
	cid := string(ctx.QueryArgs().Peek("cluster_id"))
	if cid != "" && cid != "None" {
		return cid, validID("cluster_id", cid)
	}
	src, ok := netip.AddrFromSlice(ctx.RemoteIP())
	if !ok {
		return "", nil
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	all, err := r.store.clusters(c)
	if err != nil {
		return "", err
	}
	found := ""
	for _, ci := range all {
		if a, ok := clusterHostAddr(ci.ClusterAddress); ok && a == src.Unmap() {
			if found != "" {
				return "", nil // ambiguous: two clusters behind one address
			}
			found = ci.ClusterID
		}
	}
	return found, nil
}

// clusterHostAddr is the IP address a cluster_address names (a host, IP
// or URL); false for a host name (no lookups here).
func clusterHostAddr(s string) (netip.Addr, bool) {
	host := s
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return netip.Addr{}, false
		}
		host = u.Hostname()
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.WithZone("").Unmap(), true
}

// clusters returns every registered cluster (read only).
func (s *rootStore) clusters(c context.Context) ([]api.Cluster, error) {
	all, err := s.rdb.HGetAll(c, s.kClusters()).Result()
	if err != nil {
		return nil, redisErr("read clusters", err)
	}
	out := make([]api.Cluster, 0, len(all))
	for _, b := range all {
		var ci api.Cluster
		if json.Unmarshal([]byte(b), &ci) == nil {
			out = append(out, ci)
		}
	}
	return out, nil
}

// pathIP reads an IP path parameter, also in Oakestra's notation with
// '_' for '.' (10_30_0_2). IPv6 addresses are written as they are.
func pathIP(field, s string) (netip.Addr, error) {
	if !strings.Contains(s, ":") {
		s = strings.ReplaceAll(s, "_", ".")
	}
	return parseAddr(field, s, 0)
}

// GET /api/pubnet/service/netinfo/{service_name}: the service's network
// information, for users (no interest is recorded).
func (r *Root) netinfoByName(ctx *fasthttp.RequestCtx, p []string) error {
	job, err := normJob("service_name", p[0])
	if err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	e, _, err := r.store.serviceByJob(c, job, "")
	return answerNetInfo(ctx, e, err, notFoundf("service_name: no service %s", job))
}

// GET /api/pubnet/service/netinfo/ip/{service_ip}: the same, by any
// service or instance IP.
func (r *Root) netinfoByIP(ctx *fasthttp.RequestCtx, p []string) error {
	a, err := pathIP("service_ip", p[0])
	if err != nil {
		return err
	}
	if err := r.inServicePools("service_ip", a); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	free := notFoundf("service_ip: %s belongs to no service or instance", a)
	e, _, err := r.entryByIP(c, a, "", free)
	return answerNetInfo(ctx, e, err, free)
}

func answerNetInfo(ctx *fasthttp.RequestCtx, e api.ServiceEntry, err error, noService error) error {
	if isNoService(err) {
		return noService
	} else if err != nil {
		return err
	}
	parts := strings.Split(e.JobName, ".")
	if len(parts) != 4 {
		return fmt.Errorf("netinfo: stored job name %q", e.JobName)
	}
	ni := api.NetInfo{SystemJobID: e.ID, ServiceJobID: e.ID, AppName: parts[0], AppNS: parts[1], ServiceName: parts[2],
		ServiceNS: parts[3], ServiceIPList: e.ServiceIPList, InstanceList: []api.NetInfoInstance{}}
	for _, in := range e.InstanceList {
		ni.InstanceList = append(ni.InstanceList, api.NetInfoInstance{ClusterID: in.ClusterID, InstanceNumber: in.InstanceNumber,
			InstanceIP: in.InstanceIP, InstanceIPv6: in.InstanceIPv6})
	}
	writeJSON(ctx, 200, ni)
	return nil
}

// GET /api/pubnet/service/netinfo/available-ip/{x}?v=4|6: the next free
// service IP of each family asked for (both without v), as Oakestra
// answers it. Read only. The allocator previews one address per family,
// so x must be 1.
func (r *Root) availableIPs(ctx *fasthttp.RequestCtx, p []string) error {
	if x, err := strconv.Atoi(p[0]); err != nil || x != 1 {
		return badf(api.CodeBadParam, "x: %q: only 1 (the next free address) can be previewed", p[0])
	}
	fams := []int{4, 6}
	switch v := string(ctx.QueryArgs().Peek("v")); v {
	case "":
	case "4":
		fams = []int{4}
	case "6":
		fams = []int{6}
	default:
		return badf(api.CodeBadParam, "v: %q, want 4 or 6", v)
	}
	// Oakestra previews its round-robin range; the v4 pool is shared.
	kind := ipam.Kind(r.policies[0])
	if slices.Contains(r.policies, policy.RR) {
		kind = ipam.Kind(policy.RR)
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	out := api.AvailableServiceIPs{AvailableServiceIPs: []api.AvailableServiceIP{}}
	for _, fam := range fams {
		a, err := r.store.alloc.Peek(c, kind, fam)
		if err != nil {
			return fmt.Errorf("preview: %w", err)
		}
		if fam == 4 {
			out.AvailableServiceIPs = append(out.AvailableServiceIPs, api.AvailableServiceIP{Address: &a, IpType: "IPv4"})
		} else {
			out.AvailableServiceIPs = append(out.AvailableServiceIPs, api.AvailableServiceIP{AddressV6: &a, IpType: "IPv6"})
		}
	}
	writeJSON(ctx, 200, out)
	return nil
}
