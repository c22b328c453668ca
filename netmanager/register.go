package netmanager

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
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
