//go:build policytest

package policy

// lowest exists only in a build with the tag policytest, to prove that a
// policy is one file plus one line (SPEC §7.4): it always picks the
// instance with the lowest number. Nothing outside this file names it; the
// tests that need it (fastpath, control/policytest) run with
// `go test -tags policytest` (make test does).
type lowest struct{}

func (lowest) Name() string { return "Lowest" }

func (lowest) Prepare(_ *Location, insts []Instance) []int32 {
	best := -1
	for i, in := range insts {
		if best < 0 || in.Number < insts[best].Number {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	return []int32{insts[best].Index}
}

func (lowest) Pick(st *State, _ uint32) (int32, bool) { return roundRobin(st) }

// testOnly is the one line: the test-only policy after the built-in ones.
var testOnly = []Picker{lowest{}}
