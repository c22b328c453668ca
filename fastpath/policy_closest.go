package fastpath

import "math"

// closestPolicy picks the instance nearest this node: instances on this
// node first; else the smallest great-circle distance between the nodes'
// reported locations (instances without a location rank last). Ties are
// broken round robin. The nearest set is computed at Build time.
type closestPolicy struct{}

type closestSet []int32

func (closestPolicy) Name() string { return "Closest" }

func (closestPolicy) Prepare(t *Table, s *Service) any {
	var local, best closestSet
	bestD := math.Inf(1)
	for _, i := range s.Instances {
		in := &t.Instances[i]
		if in.Local {
			local = append(local, i)
			continue
		}
		d := Distance(t.Node.Loc, in.Loc)
		switch {
		case d < bestD-1e-6:
			bestD, best = d, append(best[:0], i)
		case d <= bestD+1e-6 || (math.IsInf(d, 1) && math.IsInf(bestD, 1)):
			best = append(best, i)
		}
	}
	if len(local) > 0 {
		return local
	}
	return best
}

func (closestPolicy) Pick(t *Table, s *Service, st *PolicyState, from *LocalPort, hash uint32) (int32, bool) {
	set, _ := st.Data.(closestSet)
	if len(set) == 0 {
		return 0, false
	}
	return set[(st.Counter.Add(1)-1)%uint64(len(set))], true
}
