package netmanager

import (
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/netmanager/localapi"
)

// normJob checks a job name (SPEC §3, api.ParseJob) and returns it
// dotted.
func normJob(s string) (string, error) {
	job, err := api.ParseJob(s)
	if err != nil {
		return "", fmt.Errorf("serviceName: %w", err)
	}
	return job, nil
}

// validIfName: an interface name the kernel takes (IFNAMSIZ, no '/',
// ':' or white space, not "." or "..").
func validIfName(s string) bool {
	return s != "" && len(s) <= 15 && s != "." && s != ".." && !strings.ContainsAny(s, "/: \t\n")
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// validContainerID: a runtime's container id as CNI allows it
// (^[a-zA-Z0-9][a-zA-Z0-9_.-]*$), at most 256 characters.
func validContainerID(s string) bool {
	if s == "" || len(s) > 256 || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// PortMapping is one host port forwarded to a container port.
type PortMapping = localapi.PortMapping

// ParsePortMappings parses Oakestra's "8080:80/tcp;5353:53/udp". A mapping
// without "/proto" is tcp; "80/udp" alone maps a port to itself. Empty is
// no mapping. Host ports may not repeat per protocol.
func ParsePortMappings(s string) ([]PortMapping, error) {
	var out []PortMapping
	seen := map[string]bool{}
	for item := range strings.SplitSeq(s, ";") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		ports, proto, hasProto := strings.Cut(item, "/")
		if !hasProto {
			proto = "tcp"
		}
		proto = strings.ToLower(proto)
		if proto != "tcp" && proto != "udp" {
			return nil, fmt.Errorf("portMappings %q: protocol %q: want tcp or udp", item, proto)
		}
		hs, cs, ok := strings.Cut(ports, ":")
		if !ok {
			cs = hs
		}
		h, err1 := parsePort(hs)
		c, err2 := parsePort(cs)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("portMappings %q: want HOSTPORT:CONTAINERPORT[/tcp|udp] with ports 1-65535", item)
		}
		key := fmt.Sprintf("%d/%s", h, proto)
		if seen[key] {
			return nil, fmt.Errorf("portMappings %q: host port %s given twice", item, key)
		}
		seen[key] = true
		out = append(out, PortMapping{HostPort: h, ContainerPort: c, Proto: proto})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return uint16(n), nil
}

// ownerOf is the NodeSubnet owner (and state key) of an instance.
func ownerOf(job string, instance int) string {
	return job + "/" + strconv.Itoa(instance)
}

// hostIfName derives the host-side veth name from job and instance: "ow"
// and 8 hex digits of FNV-1a, 10 bytes (IFNAMSIZ allows 15). The
// temporary name of the container end before it moves is hostIfName+"c".
func hostIfName(job string, instance int) string {
	h := fnv.New32a()
	h.Write([]byte(ownerOf(job, instance)))
	return fmt.Sprintf("ow%08x", h.Sum32())
}

// MACs are derived from the container's IPv4 nsIP so a re-adopt or a
// re-deploy reproduces them: 0a:58:<v4> for the container side (the
// Kubernetes scheme) and 0e:58:<v4> for the host side; both locally
// administered unicast.
func containerMAC(v4 netip.Addr) net.HardwareAddr { return macFrom(0x0a, v4) }
func hostMAC(v4 netip.Addr) net.HardwareAddr      { return macFrom(0x0e, v4) }

func macFrom(first byte, v4 netip.Addr) net.HardwareAddr {
	b := v4.As4()
	return net.HardwareAddr{first, 0x58, b[0], b[1], b[2], b[3]}
}
