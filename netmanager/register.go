package netmanager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
)

// DefaultClusterPort is the port of a cluster_address given without one:
// the cluster service manager's default (configs/cluster.yaml), as
// Oakestra's NetManager takes the port from its own configuration when
// its node engine registers with a bare host.
const DefaultClusterPort = 10110

// clusterTarget normalises a cluster address as POST /register or the
// cluster key gives it: a URL (http or https) stays as it is, without a
// trailing slash; a host or IP, with or without a port, becomes host:port,
// defPort when it has none. Anything else is an error saying why.
func clusterTarget(addr string, defPort int) (string, error) {
	s := strings.TrimSpace(addr)
	if s == "" {
		return "", fmt.Errorf("empty")
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil ||
			u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "" {
			return "", fmt.Errorf("%q: want http://host[:port] (or https)", addr)
		}
		if p := u.Port(); p != "" {
			if _, err := portOf(p); err != nil {
				return "", fmt.Errorf("%q: %w", addr, err)
			}
		}
		if !validHost(u.Hostname()) {
			return "", fmt.Errorf("%q: %q is not a host name or IP address", addr, u.Hostname())
		}
		return u.Scheme + "://" + u.Host, nil
	}
	host, port := s, defPort
	if h, p, err := net.SplitHostPort(s); err == nil {
		n, perr := portOf(p)
		if perr != nil {
			return "", fmt.Errorf("%q: %w", addr, perr)
		}
		host, port = h, n
	} else if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		host = s[1 : len(s)-1]
	}
	if !validHost(host) {
		return "", fmt.Errorf("%q: not a host name, IP address or URL", addr)
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

func portOf(p string) (int, error) {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q not in 1-65535", p)
	}
	return n, nil
}

// validHost accepts an IP address (no zone, not IPv4-mapped) or a DNS name.
func validHost(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == "" && !a.Is4In6() && !a.IsUnspecified()
	}
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// registerLoop registers with the cluster, retrying with backoff, until it
// answers or ctx ends.
func (d *Daemon) registerLoop(ctx context.Context, id, addr string) {
	backoff := time.Second
	for {
		err := d.Register(ctx, id, addr)
		if err == nil || errors.Is(err, ErrConflict) || errors.Is(err, ErrBadRequest) {
			if err != nil {
				d.log.Error("registration refused; not retrying", "cluster", addr, "err", err)
			}
			return
		}
		d.log.Warn("registration failed; retrying", "cluster", addr, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// Register registers the node id with the cluster at addr (POST
// /register). Same id again: no-op. Another id: ErrConflict.
func (d *Daemon) Register(ctx context.Context, id, addr string) error {
	if !api.ValidID(id) {
		return badRequest("bad_client_id", "client_id: %q: 1-128 characters of letters, digits and . _ - :", id)
	}
	if strings.TrimSpace(addr) == "" {
		return badRequest("missing_field", "cluster_address: missing")
	}
	target, err := clusterTarget(addr, d.cfg.ClusterPort)
	if err != nil {
		return badRequest("bad_cluster_address", "cluster_address: %v", err)
	}
	// regMu serialises registrations; d.mu is not held during the cluster
	// call so /status and deploys (with known subnets) go on meanwhile.
	d.regMu.Lock()
	defer d.regMu.Unlock()
	d.mu.Lock()
	if d.nodeID != "" && d.nodeID != id {
		d.mu.Unlock()
		return conflict("node_id", "client_id: this node is registered as %q, not %q", d.nodeID, id)
	}
	// The node has one cluster: the configured one, or the one it
	// registered with. Another address is refused, not ignored.
	if cur := d.clusterAddressLocked(); cur != "" && (d.confirmed || d.cfg.Cluster != "") {
		if ct, _ := clusterTarget(cur, d.cfg.ClusterPort); ct != target {
			d.mu.Unlock()
			return conflict("cluster_changed", "cluster_address: this node belongs to the cluster at %s, not %s (run `netmanager teardown` to move it)", ct, target)
		}
	}
	if d.confirmed {
		d.mu.Unlock()
		return nil
	}
	cl := d.cluster
	if cl == nil || d.clusterAddressLocked() != target {
		if cl, err = d.newCluster(target, id); err != nil {
			d.mu.Unlock()
			return badRequest("bad_cluster_address", "cluster_address: %v", err)
		}
	}
	d.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	reg, err := cl.Register(rctx, d.cfg.endpoint())
	cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.lastErr = err.Error()
		return fmt.Errorf("register with cluster %s: %w: %w", addr, ErrCluster, err)
	}
	if d.nodeID != "" && d.nodeID != id {
		return conflict("node_id", "client_id: this node is registered as %q, not %q", d.nodeID, id)
	}
	st := d.st
	if st.Subnets != nil && st.Subnets.Subnet() != reg.Subnets {
		return conflict("subnet_changed", "cluster %s gave subnets %s %s but this node holds %s %s: run `netmanager teardown`",
			addr, reg.Subnets.V4, reg.Subnets.V6, st.Subnets.Subnet().V4, st.Subnets.Subnet().V6)
	}
	fresh := st.Subnets == nil
	if fresh {
		ns, err := ipam.NewNodeSubnet(reg.Subnets)
		if err != nil {
			return fmt.Errorf("cluster %s: %w", addr, err)
		}
		st.Subnets = ns
	}
	if d.cluster != nil && d.cluster != cl {
		_ = d.cluster.Close()
	}
	d.cluster = cl
	d.nodeID = id
	st.NodeID = id
	if d.cfg.Cluster == "" {
		st.ClusterAddress = target
	}
	if err := d.setupNodeLocked(); err != nil {
		// Registered, but the node cannot carry traffic: say so in the
		// log and in /status (last_error) and the 409s of deploys, not
		// only as a retry.
		d.lastErr = err.Error()
		d.log.Error("node setup failed after registering", "cluster", addr, "err", err)
		if fresh { // undo the half-made node setup
			st.Subnets = nil
			if terr := teardownNode(st.Sysctls); terr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: %w", terr))
			}
			st.Sysctls = map[string]string{}
		}
		return err
	}
	if err := d.saveLocked(); err != nil {
		return err
	}
	d.confirmed = true
	d.lastErr = ""
	d.log.Info("registered", "node_id", id, "cluster", addr, "subnet", reg.Subnets.V4, "subnet_v6", reg.Subnets.V6)
	return nil
}
