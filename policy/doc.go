// Package policy is the one definition of Oakwire's balancing policies
// (SPEC §7.4): their identity (ID, a small enum whose value is also the
// policy's ipam kind), their names (IpType on the wire) and their pickers,
// which choose an instance for a new flow.
//
// The control plane allocates one service IP pair per policy per service
// and writes Name as IpType; a node maps IpType back with Parse; the fast
// path keeps a typed State per service and policy in its table (Prepare
// at build time) and calls Pick on the packet path.
//
// The list of policies is fixed when the program is compiled (builtin,
// policy.go). Adding a policy is one file with a Picker and one line in
// that list; nothing else in the tree names it. A build with the tag
// policytest adds a test-only policy, "Lowest" (testpolicy.go), after the
// built-in ones, so tests prove that with no registry to mutate.
package policy
