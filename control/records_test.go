package control

import (
	"testing"

	"github.com/oakwire/oakwire/internal/golden"
)

// TestRecordsGolden: the records root and a cluster keep in Redis marshal
// exactly as before their fields became net/netip (testdata/records.golden
// was recorded from the string-typed records): what an older replica
// wrote reads back, and the scripts, which compare and decode these JSON
// strings, see the same bytes. A full value read from records.in and
// written again, and the zero value.
func TestRecordsGolden(t *testing.T) {
	types := map[string]func() any{
		"serviceMeta":    func() any { return new(serviceMeta) },
		"storedInstance": func() any { return new(storedInstance) },
		"nodeRecord":     func() any { return new(nodeRecord) },
	}
	golden.Check(t, "testdata/records.in", "testdata/records.golden", types)
}
