package policy

import (
	"strings"
	"sync/atomic"
)

// ID identifies a balancing policy: its index in pickers. In the address
// plan it is the policy's kind, ipam.Kind(id), which selects the IPv6 range
// of its service IPs (fdff:k000::/21). ID 0 is not a policy: kind 0 holds
// the instance IPs, which name their instance.
type ID uint8

// The built-in policies. A policy needs a constant here only if code names
// it; a new policy is known by its position in pickers and its Name.
const (
	Closest ID = 1
	RR      ID = 2
)

// builtin is every policy Oakwire ships, indexed by ID. Adding a policy is
// one file with a type implementing Picker and one line here: the control
// plane then allocates a service IP pair per service for it, nodes accept
// its IpType, and the data path picks with it.
var builtin = [...]Picker{
	Closest: closest{},
	RR:      rr{},
}

// pickers is builtin, plus the test-only policy in a build with the tag
// policytest (testpolicy.go). It is never written after initialisation.
var pickers = append(builtin[:len(builtin):len(builtin)], testOnly...)

// Picker is one balancing policy: it chooses an instance of a service for
// a new flow.
type Picker interface {
	// Name is the policy's stable name: IpType in service_ip_list.
	Name() string
	// Prepare returns the Indexes of the instances Pick chooses among, for
	// one service in one table snapshot, given this node's location (nil
	// if unknown). It runs when a table is built, off the packet path.
	Prepare(node *Location, insts []Instance) []int32
	// Pick returns the Index of the instance for a new flow with flow hash
	// hash, or false when there is none. It runs on the packet path: it
	// must not allocate or block, and is called concurrently.
	Pick(st *State, hash uint32) (int32, bool)
}

// Instance is what a policy sees of one instance of a service.
type Instance struct {
	Index  int32     // the caller's index, returned by Prepare and Pick
	Number uint32    // the instance number
	Local  bool      // runs on this node
	Loc    *Location // its node's location; nil if unknown
}

// State is one policy's state for one service in one table snapshot. It is
// built with the table and only read on the packet path (Counter is an
// atomic).
type State struct {
	// Counter is shared by every snapshot of the same service and policy,
	// so a round-robin position survives table swaps.
	Counter *atomic.Uint64
	// Set is what Prepare returned.
	Set []int32
}

// Count is the number of IDs: policies are 1..Count-1.
func Count() int { return len(pickers) }

// Valid reports whether id is a policy.
func (id ID) Valid() bool { return id > 0 && int(id) < len(pickers) }

// String returns the policy's name ("" for an ID that is not a policy).
func (id ID) String() string {
	if !id.Valid() {
		return ""
	}
	return pickers[id].Name()
}

// Prepare runs the policy's Prepare; see Picker.
func (id ID) Prepare(node *Location, insts []Instance) []int32 {
	return pickers[id].Prepare(node, insts)
}

// Pick runs the policy's Pick; see Picker. id must be Valid.
func (id ID) Pick(st *State, hash uint32) (int32, bool) { return pickers[id].Pick(st, hash) }

// All returns every policy in ID order.
func All() []ID {
	ids := make([]ID, 0, len(pickers)-1)
	for i := 1; i < len(pickers); i++ {
		ids = append(ids, ID(i))
	}
	return ids
}

// Parse returns the policy named name, compared case-insensitively (IpType
// as Oakestra writes it), or false.
func Parse(name string) (ID, bool) {
	for i := 1; i < len(pickers); i++ {
		if strings.EqualFold(pickers[i].Name(), name) {
			return ID(i), true
		}
	}
	return 0, false
}

// roundRobin picks the next of st.Set.
func roundRobin(st *State) (int32, bool) {
	n := uint64(len(st.Set))
	if n == 0 {
		return 0, false
	}
	return st.Set[(st.Counter.Add(1)-1)%n], true
}
