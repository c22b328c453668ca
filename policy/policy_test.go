package policy

import (
	"slices"
	"sync/atomic"
	"testing"
)

func TestBuiltin(t *testing.T) {
	for id, name := range map[ID]string{Closest: "Closest", RR: "RR"} {
		if !id.Valid() || id.String() != name {
			t.Errorf("ID %d: %q, valid %v; want %q", id, id.String(), id.Valid(), name)
		}
		if got, ok := Parse(name); !ok || got != id {
			t.Errorf("Parse(%q) = %d, %v", name, got, ok)
		}
	}
	if got, ok := Parse("rr"); !ok || got != RR {
		t.Errorf("Parse is not case-insensitive: %d %v", got, ok)
	}
	if _, ok := Parse("Nope"); ok {
		t.Error("Parse(Nope) ok")
	}
	if ID(0).Valid() || ID(0).String() != "" || ID(Count()).Valid() {
		t.Error("0 and Count are not policies")
	}
	ids := All()
	if len(ids) != Count()-1 || !slices.IsSorted(ids) || ids[0] != Closest || ids[1] != RR {
		t.Errorf("All() = %v, Count() = %d", ids, Count())
	}
	for _, id := range ids {
		if pickers[id] == nil || id.String() == "" {
			t.Errorf("ID %d has no picker or no name", id)
		}
		if again, _ := Parse(id.String()); again != id {
			t.Errorf("%s named twice", id)
		}
	}
}

func TestPickers(t *testing.T) {
	madrid, munich := &Location{Lat: 40.4, Long: -3.7}, &Location{Lat: 48.1, Long: 11.6}
	berlin := &Location{Lat: 52.52, Long: 13.405}
	insts := []Instance{
		{Index: 10, Number: 3, Loc: madrid},
		{Index: 11, Number: 1, Loc: munich},
		{Index: 12, Number: 2, Loc: munich}, // a tie with 11
		{Index: 13, Number: 4},              // no location: last
	}
	pick := func(id ID, set []int32, n int) []int32 {
		st := State{Counter: new(atomic.Uint64), Set: set}
		var got []int32
		for range n {
			i, ok := id.Pick(&st, 0)
			if !ok {
				return append(got, -1)
			}
			got = append(got, i)
		}
		return got
	}
	if got := pick(RR, RR.Prepare(berlin, insts), 5); !slices.Equal(got, []int32{10, 11, 12, 13, 10}) {
		t.Errorf("RR picked %v", got)
	}
	if got := pick(Closest, Closest.Prepare(berlin, insts), 4); !slices.Equal(got, []int32{11, 12, 11, 12}) {
		t.Errorf("Closest picked %v", got)
	}
	local := append(slices.Clone(insts), Instance{Index: 14, Number: 9, Local: true})
	if got := pick(Closest, Closest.Prepare(berlin, local), 2); !slices.Equal(got, []int32{14, 14}) {
		t.Errorf("Closest with a local instance picked %v", got)
	}
	if got := pick(Closest, Closest.Prepare(nil, insts[3:]), 1); !slices.Equal(got, []int32{13}) {
		t.Errorf("Closest with no locations picked %v", got)
	}
	for _, id := range All() {
		if got := pick(id, id.Prepare(berlin, nil), 1); !slices.Equal(got, []int32{-1}) {
			t.Errorf("%s picked %v from no instances", id, got)
		}
	}
	if d := Distance(berlin, &Location{48.137, 11.575}); d < 500 || d > 510 {
		t.Errorf("Berlin–Munich = %.1f km", d)
	}
}

// TestPickAllocs: Pick is on the packet path.
func TestPickAllocs(t *testing.T) {
	for _, id := range All() {
		st := State{Counter: new(atomic.Uint64), Set: []int32{1, 2, 3}}
		if n := testing.AllocsPerRun(100, func() { _, _ = id.Pick(&st, 7) }); n != 0 {
			t.Errorf("%s: %v allocations per Pick", id, n)
		}
	}
}
