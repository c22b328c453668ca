package policy

import "math"

// closest picks the instance nearest this node: instances on this node
// first; else those at the smallest great-circle distance between the
// nodes' reported locations (instances without a location rank last).
// Ties are broken round robin.
type closest struct{}

func (closest) Name() string { return "Closest" }

func (closest) Prepare(node *Location, insts []Instance) []int32 {
	var local, best []int32
	bestD := math.Inf(1)
	for _, in := range insts {
		if in.Local {
			local = append(local, in.Index)
			continue
		}
		d := Distance(node, in.Loc)
		switch {
		case d < bestD-1e-6:
			bestD, best = d, append(best[:0], in.Index)
		case d <= bestD+1e-6 || (math.IsInf(d, 1) && math.IsInf(bestD, 1)):
			best = append(best, in.Index)
		}
	}
	if len(local) > 0 {
		return local
	}
	return best
}

func (closest) Pick(st *State, _ uint32) (int32, bool) { return roundRobin(st) }

// Location is a node's reported position in degrees.
type Location struct{ Lat, Long float64 }

// Distance returns the great-circle distance in km between two locations
// (haversine), or +Inf when either is unknown.
func Distance(a, b *Location) float64 {
	if a == nil || b == nil {
		return math.Inf(1)
	}
	const r = 6371.0
	rad := math.Pi / 180
	dlat := (b.Lat - a.Lat) * rad
	dlon := (b.Long - a.Long) * rad
	h := math.Sin(dlat/2)*math.Sin(dlat/2) + math.Cos(a.Lat*rad)*math.Cos(b.Lat*rad)*math.Sin(dlon/2)*math.Sin(dlon/2)
	return 2 * r * math.Asin(math.Min(1, math.Sqrt(h)))
}
