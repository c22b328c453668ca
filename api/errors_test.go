package api

import (
	"errors"
	"fmt"
	"testing"
)

// TestStatusTable: every class maps to its status and back; a class that
// wraps another keeps its own status; errors of no class are 500.
func TestStatusTable(t *testing.T) {
	for _, s := range statuses {
		wrapped := fmt.Errorf("context: %w", s.class)
		if st, code := Status(wrapped); st != s.status || code != s.code {
			t.Errorf("%v: %d %s, want %d %s", s.class, st, code, s.status, s.code)
		}
		if ErrorFor(s.status) != s.class {
			t.Errorf("ErrorFor(%d) = %v, want %v", s.status, ErrorFor(s.status), s.class)
		}
	}
	if st, _ := Status(ErrTooLarge); st != 413 || !errors.Is(ErrTooLarge, ErrBadRequest) {
		t.Error("a body too large is a 413 and a bad request")
	}
	if st, _ := Status(ErrUpstream); st != 502 || !errors.Is(ErrUpstream, ErrUnavailable) {
		t.Error("an upstream failure is a 502 and unavailable")
	}
	if st, code := Status(errors.New("x")); st != 500 || code != CodeInternal {
		t.Errorf("no class: %d %s", st, code)
	}
	if ErrorFor(418) != ErrServer || ErrorFor(507) != ErrExhausted {
		t.Error("ErrorFor: 418 is a server error, 507 exhausted")
	}
}
