package control

import (
	"net/netip"

	"github.com/oakwire/oakwire/api"
)

// Validation of request fields beyond their JSON types. Each error names
// the field; the rules themselves (names, ids) are package api's.

// validID checks an id: 1–128 characters of [A-Za-z0-9._:-].
func validID(field, s string) error {
	switch {
	case s == "":
		return missing(field)
	case len(s) > api.MaxIDLen:
		return badf(api.CodeBadID, "%s: longer than %d characters", field, api.MaxIDLen)
	case !api.ValidID(s):
		return badf(api.CodeBadID, "%s: %q may only contain letters, digits and . _ - :", field, s)
	}
	return nil
}

// normJob validates a job name written with '.' or '_' between its four
// parts and returns it in the canonical dotted form.
func normJob(field, s string) (string, error) {
	job, err := api.ParseJob(s)
	if err != nil {
		return "", badf(api.CodeBadName, "%s: %v", field, err)
	}
	return job, nil
}

// parseAddr parses an IP of the wanted family (4 or 6; 0 = any) from a path
// or query parameter.
func parseAddr(field, s string, family int) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, badf(api.CodeBadAddress, "%s: %q is not an IP address", field, s)
	}
	return addrIn(field, a, family)
}

// addrIn checks a decoded address: set, without a zone, of the wanted
// family (4 or 6; 0 = any). An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
// is refused in every field: it is neither family's plain form, and an
// IPv4 field that accepted it would store one address under two
// spellings.
func addrIn(field string, a netip.Addr, family int) (netip.Addr, error) {
	switch {
	case !a.IsValid():
		return a, missing(field)
	case a.Zone() != "":
		return netip.Addr{}, badf(api.CodeBadAddress, "%s: %q is not an IP address", field, a)
	case a.Is4In6():
		return netip.Addr{}, badf(api.CodeBadAddress, "%s: %q is an IPv4-mapped IPv6 address; write %s", field, a, a.Unmap())
	}
	if family == 4 && !a.Is4() {
		return netip.Addr{}, badf(api.CodeBadAddress, "%s: %q is not an IPv4 address", field, a)
	}
	if family == 6 && !a.Is6() {
		return netip.Addr{}, badf(api.CodeBadAddress, "%s: %q is not an IPv6 address", field, a)
	}
	return a, nil
}

// portIn checks a UDP or TCP port number.
func portIn(field string, p int) error {
	if p < 1 || p > 65535 {
		return badf(api.CodeBadPort, "%s: %d not in 1..65535", field, p)
	}
	return nil
}

// inPool checks that a lies in pool, named what in the error.
func inPool(field string, a netip.Addr, what string, pool netip.Prefix) error {
	if !pool.Contains(a) {
		return badf(api.CodeOutOfPool, "%s: %s outside the %s %s", field, a, what, pool)
	}
	return nil
}
