package api

import (
	"fmt"
	"strings"
)

// DefaultTunnelPort is a node's UDP tunnel port unless it reports another
// (SPEC §1); a peer or instance with port 0 means this one.
const DefaultTunnelPort = 50103

// MaxIDLen bounds ids: a service's _id, cluster_id, node_id.
const MaxIDLen = 128

// maxJobLen bounds a job name: four parts of 30 and three separators.
const maxJobLen = 4*30 + 3

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// ValidPart reports whether s is a valid part of a job name:
// ^[a-zA-Z0-9]{1,30}$ (SPEC §3).
func ValidPart(s string) bool {
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

// ParseJob checks a job name, app.appns.service.servicens, written with
// '.' or (in URL paths, as Oakestra does) '_' between its four parts, and
// returns it in the canonical dotted form. Its errors say what is wrong
// without naming a field: callers put the field first.
func ParseJob(s string) (string, error) {
	if len(s) > maxJobLen {
		return "", fmt.Errorf("job name longer than %d characters", maxJobLen)
	}
	s = strings.ReplaceAll(s, "_", ".")
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return "", fmt.Errorf("job name %q must have 4 parts app.appns.service.servicens", s)
	}
	for _, p := range parts {
		if !ValidPart(p) {
			return "", fmt.Errorf("job name part %q must match ^[a-zA-Z0-9]{1,30}$", p)
		}
	}
	return s, nil
}

// ValidID reports whether s is a valid id: 1 to MaxIDLen characters of
// [A-Za-z0-9._:-].
func ValidID(s string) bool {
	if s == "" || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' && c != ':' {
			return false
		}
	}
	return true
}
