// Package golden checks that types marshal to the JSON recorded in a
// golden file: the wire types of package api and the records of package
// control, against what their string-typed predecessors marshalled.
//
// The input file has one line per type, "name<TAB>JSON"; the golden file
// "name<TAB>full<TAB>zero": the input read into the type and written
// again, and the type's zero value written.
package golden

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// Check reads every type of types (name → a new value) from the input
// file and compares its JSON with the golden file's; every type must have
// its lines.
func Check(t *testing.T, input, golden string, types map[string]func() any) {
	t.Helper()
	in, want := lines(t, input), lines(t, golden)
	for name, mk := range types {
		if len(in[name]) < 1 || len(want[name]) < 2 {
			t.Errorf("%s: no line in %s or %s", name, input, golden)
			continue
		}
		v := mk()
		if err := json.Unmarshal([]byte(in[name][0]), v); err != nil {
			t.Errorf("%s: read %s: %v", name, in[name][0], err)
			continue
		}
		full, _ := json.Marshal(v)
		zero, _ := json.Marshal(mk())
		if string(full) != want[name][0] {
			t.Errorf("%s:\n got %s\nwant %s", name, full, want[name][0])
		}
		if string(zero) != want[name][1] {
			t.Errorf("%s, zero value:\n got %s\nwant %s", name, zero, want[name][1])
		}
	}
}

func lines(t *testing.T, file string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Split(line, "\t")
		out[f[0]] = f[1:]
	}
	return out
}
