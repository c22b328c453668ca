package netmanager

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors; the API maps them to status codes in httpStatus.
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

// httpStatus is the one table from errors to HTTP status codes.
func httpStatus(err error) (int, string) {
	code := "internal"
	if ae, ok := errors.AsType[*apiError](err); ok {
		code = ae.code
	}
	switch {
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge, code
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, code
	case errors.Is(err, ErrNotRegistered):
		return http.StatusConflict, "not_registered"
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, code
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, code
	case errors.Is(err, ErrCluster):
		return http.StatusBadGateway, "cluster"
	}
	return http.StatusInternalServerError, code
}
