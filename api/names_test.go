package api

import (
	"strings"
	"testing"
)

func TestParseJob(t *testing.T) {
	for in, want := range map[string]string{
		"a.b.c.d":                          "a.b.c.d",
		"app_ns_svc_sns":                   "app.ns.svc.sns",
		"A1.b2.C3.d4":                      "A1.b2.C3.d4",
		"a.b.c":                            "",
		"a.b.c.d.e":                        "",
		"a.b-x.c.d":                        "",
		"a..c.d":                           "",
		"":                                 "",
		strings.Repeat("a", 31) + ".b.c.d": "",
		strings.Repeat(strings.Repeat("a", 30)+".", 4)[:123]: strings.Repeat(strings.Repeat("a", 30)+".", 4)[:123],
		strings.Repeat("a", 124):                             "",
	} {
		got, err := ParseJob(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("ParseJob(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestValidID(t *testing.T) {
	for in, want := range map[string]bool{
		"n1": true, "a.b_c-d:e": true, strings.Repeat("x", MaxIDLen): true,
		"": false, "a b": false, "a/b": false, strings.Repeat("x", MaxIDLen+1): false,
	} {
		if ValidID(in) != want {
			t.Errorf("ValidID(%q) = %v", in, !want)
		}
	}
}
