package policy

// rr is round robin over the service's instances, one step per new flow
// (the counter is kept across table swaps).
type rr struct{}

func (rr) Name() string { return "RR" }

func (rr) Prepare(_ *Location, insts []Instance) []int32 {
	set := make([]int32, len(insts))
	for i, in := range insts {
		set[i] = in.Index
	}
	return set
}

func (rr) Pick(st *State, _ uint32) (int32, bool) { return roundRobin(st) }
