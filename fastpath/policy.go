package fastpath

import (
	"fmt"
	"sync"
)

// Policy chooses an instance of a service for a new flow.
//
// Adding a policy is one new file with a type implementing Policy plus one
// line in the registered list below. The position in that list is the
// policy's kind number (ipam.Kind): kind 0 is the implicit instance-IP
// policy, registered policies count from 1. The control plane allocates one
// service IP per registered policy (see Policies).
type Policy interface {
	// Name is the policy's stable name (it appears in ServiceSpec.IPs).
	Name() string
	// Prepare runs once per service per table snapshot at Build time, off
	// the packet path; its result is PolicyState.Data. It may return nil.
	Prepare(t *Table, s *Service) any
	// Pick returns the index into t.Instances of the instance for a new
	// flow, or ok=false when none can be chosen. from is the sending port;
	// hash is the flow hash. Pick runs on the packet path: it must not
	// allocate or block, and may be called concurrently.
	Pick(t *Table, s *Service, st *PolicyState, from *LocalPort, hash uint32) (inst int32, ok bool)
}

// registered lists the built-in policies in kind order (Closest = 1,
// RR = 2, matching ipam.KindClosest and ipam.KindRR).
var registered = []Policy{
	closestPolicy{},
	rrPolicy{},
}

var regMu sync.Mutex

// Register appends a policy to the registry (kind = its position + 1). It
// is meant for init functions and tests; tables built afterwards know it.
// It panics on a duplicate name.
func Register(p Policy) {
	regMu.Lock()
	defer regMu.Unlock()
	for _, q := range registered {
		if q.Name() == p.Name() {
			panic(fmt.Sprintf("fastpath: policy %q registered twice", p.Name()))
		}
	}
	registered = append(registered[:len(registered):len(registered)], p)
}

// Policies returns the registered policies in kind order (index i has kind
// i+1).
func Policies() []Policy {
	regMu.Lock()
	defer regMu.Unlock()
	return registered[:len(registered):len(registered)]
}

// PolicyNames returns the registered policy names in kind order: the
// control plane allocates one service IP per name, name i with kind i+1.
func PolicyNames() []string {
	ps := Policies()
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name()
	}
	return names
}

// PolicyKind returns the kind number of a registered policy name (≥ 1), or
// 0 and false.
func PolicyKind(name string) (int, bool) {
	for i, p := range Policies() {
		if p.Name() == name {
			return i + 1, true
		}
	}
	return 0, false
}
