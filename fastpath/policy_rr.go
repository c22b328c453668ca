package fastpath

// rrPolicy is round robin over the service's instances, one step per new
// flow (an atomic counter per service, kept across table swaps).
type rrPolicy struct{}

func (rrPolicy) Name() string                     { return "RR" }
func (rrPolicy) Prepare(t *Table, s *Service) any { return nil }

func (rrPolicy) Pick(t *Table, s *Service, st *PolicyState, from *LocalPort, hash uint32) (int32, bool) {
	n := uint64(len(s.Instances))
	if n == 0 {
		return 0, false
	}
	return s.Instances[(st.Counter.Add(1)-1)%n], true
}
