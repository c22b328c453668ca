package netmanager

import (
	"errors"
	"fmt"
	"testing"
)

// TestHTTPStatus: the daemon's errors get the statuses of the control
// plane's one table; not-supported errors are errors.ErrUnsupported.
func TestHTTPStatus(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{&apiError{kind: ErrTooLarge, code: "body_too_large"}, 413, "body_too_large"},
		{badRequest("bad_name", "x"), 400, "bad_name"},
		{fmt.Errorf("deploy: %w", ErrNotRegistered), 409, "not_registered"},
		{conflict("node_id", "x"), 409, "node_id"},
		{&apiError{kind: ErrNotFound, code: "not_deployed"}, 404, "not_deployed"},
		{fmt.Errorf("register: %w: %w", ErrCluster, errors.New("refused")), 502, "cluster"},
		{ErrNotSupported, 500, "internal"},
	} {
		if st, code := httpStatus(c.err); st != c.status || code != c.code {
			t.Errorf("%v: %d %s, want %d %s", c.err, st, code, c.status, c.code)
		}
	}
	if !errors.Is(ErrNotSupported, errors.ErrUnsupported) {
		t.Error("ErrNotSupported is not an errors.ErrUnsupported")
	}
}
