package netmanager

import (
	"errors"
	"fmt"

	"github.com/oakwire/oakwire/api"
)

// Sentinel errors; the API answers them as the classes of api's one status
// table (httpStatus). They are the daemon's own, not api's: an error the
// cluster answered (an api class) is ErrCluster to the daemon's callers.
var (
	ErrBadRequest    = errors.New("bad request")
	ErrNotRegistered = errors.New("not registered")
	ErrConflict      = errors.New("conflict")
	ErrNotFound      = errors.New("not found")
	ErrCluster       = errors.New("cluster unreachable")
	ErrNotSupported  = fmt.Errorf("%w on this OS", errors.ErrUnsupported)
	ErrTooLarge      = errors.New("body too large")
)

// apiError is an error with a machine code for the JSON answer.
type apiError struct {
	kind error
	code string
	msg  string
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.kind }

func badRequest(code, format string, a ...any) error {
	return &apiError{kind: ErrBadRequest, code: code, msg: fmt.Sprintf(format, a...)}
}

func conflict(code, format string, a ...any) error {
	return &apiError{kind: ErrConflict, code: code, msg: fmt.Sprintf(format, a...)}
}

// httpStatus gives err its class, and so its status in api's one table,
// and its machine code.
func httpStatus(err error) (int, string) {
	code := api.CodeInternal
	if ae, ok := errors.AsType[*apiError](err); ok {
		code = ae.code
	}
	var class error
	switch {
	case errors.Is(err, ErrTooLarge):
		class = api.ErrTooLarge
	case errors.Is(err, ErrBadRequest):
		class = api.ErrBadRequest
	case errors.Is(err, ErrNotRegistered):
		class, code = api.ErrConflict, "not_registered"
	case errors.Is(err, ErrConflict):
		class = api.ErrConflict
	case errors.Is(err, ErrNotFound):
		class = api.ErrNotFound
	case errors.Is(err, ErrCluster):
		class, code = api.ErrUpstream, "cluster"
	}
	status, _ := api.Status(class)
	return status, code
}
