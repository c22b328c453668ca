package control

import (
	"net/netip"
	"strings"
)

// maxIDLen bounds ids (service _id, cluster_id, node_id).
const maxIDLen = 128

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// validPart reports whether s matches ^[a-zA-Z0-9]{1,30}$ (SPEC §3).
func validPart(s string) bool {
	if len(s) < 1 || len(s) > 30 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAlnum(s[i]) {
			return false
		}
	}
	return true
}

// normJob validates a job name written with '.' or '_' between its four
// parts and returns it in the canonical dotted form.
func normJob(field, s string) (string, error) {
	if len(s) > 4*31 {
		return "", badf("bad_name", "%s: job name longer than 123 characters", field)
	}
	s = strings.ReplaceAll(s, "_", ".")
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return "", badf("bad_name", "%s: job name %q must have 4 parts app.appns.service.servicens", field, s)
	}
	for _, p := range parts {
		if !validPart(p) {
			return "", badf("bad_name", "%s: job name part %q must match ^[a-zA-Z0-9]{1,30}$", field, p)
		}
	}
	return s, nil
}

// validID checks an opaque id: 1–128 characters of [A-Za-z0-9._:-].
func validID(field, s string) error {
	if s == "" {
		return badf("missing_field", "%s: missing", field)
	}
	if len(s) > maxIDLen {
		return badf("bad_id", "%s: longer than %d characters", field, maxIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' && c != ':' {
			return badf("bad_id", "%s: %q may only contain letters, digits and . _ - :", field, s)
		}
	}
	return nil
}

// parseAddr parses an IP of the wanted family (4 or 6; 0 = any).
func parseAddr(field, s string, family int) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, badf("bad_address", "%s: %q is not an IP address", field, s)
	}
	a = a.Unmap()
	if family == 4 && !a.Is4() {
		return netip.Addr{}, badf("bad_address", "%s: %q is not an IPv4 address", field, s)
	}
	if family == 6 && !a.Is6() {
		return netip.Addr{}, badf("bad_address", "%s: %q is not an IPv6 address", field, s)
	}
	return a, nil
}
