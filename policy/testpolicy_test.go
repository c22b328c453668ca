//go:build policytest

package policy

import "testing"

// TestTestOnlyPolicy: the policy of testpolicy.go comes after the built-in
// ones and is known by its name alone.
func TestTestOnlyPolicy(t *testing.T) {
	id, ok := Parse("Lowest")
	if !ok || int(id) != len(builtin) || id.String() != "Lowest" || Count() != len(builtin)+1 {
		t.Fatalf("Lowest: ID %d %v, Count %d", id, ok, Count())
	}
	insts := []Instance{{Index: 5, Number: 2}, {Index: 6, Number: 0}, {Index: 7, Number: 1}}
	if set := id.Prepare(nil, insts); len(set) != 1 || set[0] != 6 {
		t.Fatalf("Lowest prepared %v", set)
	}
}
