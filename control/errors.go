package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
)

// Sentinel errors of the control plane. Handlers wrap them (usually through
// badf and friends, which add the machine code and a message naming the
// field); errStatus maps them to HTTP status codes.
var (
	ErrBadRequest   = errors.New("bad request")
	ErrUnauthorized = errors.New("unauthorized")
	ErrNotFound     = errors.New("not found")
	ErrMethod       = errors.New("method not allowed")
	ErrConflict     = errors.New("conflict")
	ErrTooLarge     = errors.New("request body too large")
	ErrUnavailable  = errors.New("redis unavailable")
	// ErrUpstream: a component this one depends on (the root, seen from a
	// cluster) could not be reached or answered nonsense.
	ErrUpstream = errors.New("upstream unavailable")
)

// statusTable is THE mapping from sentinel errors to HTTP status and the
// default machine code. The first entry that errors.Is matches wins.
var statusTable = []struct {
	err    error
	status int
	code   string
}{
	{ErrBadRequest, http.StatusBadRequest, "bad_request"},
	{ipam.ErrBadRequest, http.StatusBadRequest, "bad_request"},
	{ipam.ErrOutOfPool, http.StatusBadRequest, "out_of_pool"},
	{ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
	{ErrNotFound, http.StatusNotFound, "not_found"},
	{ipam.ErrNotFound, http.StatusNotFound, "not_found"},
	{ErrMethod, http.StatusMethodNotAllowed, "method_not_allowed"},
	{ErrConflict, http.StatusConflict, "conflict"},
	{ipam.ErrConflict, http.StatusConflict, "address_in_use"},
	{ErrTooLarge, http.StatusRequestEntityTooLarge, "body_too_large"},
	{ipam.ErrExhausted, http.StatusInsufficientStorage, "pool_exhausted"},
	{ErrUnavailable, http.StatusServiceUnavailable, "redis_unavailable"},
	{ipam.ErrUnavailable, http.StatusServiceUnavailable, "redis_unavailable"},
	{ErrUpstream, http.StatusBadGateway, "upstream_unavailable"},
}

// apiError carries a specific machine code and a message that names the
// field; it wraps a sentinel.
type apiError struct {
	sentinel error
	code     string
	msg      string
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.sentinel }

func newErr(sentinel error, code, format string, args ...any) error {
	return &apiError{sentinel: sentinel, code: code, msg: fmt.Sprintf(format, args...)}
}

func badf(code, format string, args ...any) error {
	return newErr(ErrBadRequest, code, format, args...)
}

func notFoundf(format string, args ...any) error {
	return newErr(ErrNotFound, "not_found", format, args...)
}

func conflictf(format string, args ...any) error {
	return newErr(ErrConflict, "conflict", format, args...)
}

// errStatus maps err to status, machine code and message.
func errStatus(err error) (int, string, string) {
	msg := err.Error()
	var ae *apiError
	hasCode := errors.As(err, &ae)
	for _, row := range statusTable {
		if errors.Is(err, row.err) {
			code := row.code
			if hasCode && ae.code != "" {
				code = ae.code
			}
			return row.status, code, msg
		}
	}
	return http.StatusInternalServerError, "internal", msg
}

// redisErr classifies an error from go-redis: a failure to reach Redis
// (network, timeout, pool) becomes ErrUnavailable; anything else (a script
// or protocol error) stays an internal error. what names the operation.
func redisErr(what string, err error) error {
	if err == nil {
		return nil
	}
	var re redis.Error
	if errors.As(err, &re) && !isNetErr(err) {
		// A reply error from the server. LOADING/MASTERDOWN/CLUSTERDOWN and
		// friends mean the store is not serving.
		s := re.Error()
		for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "BUSY"} {
			if len(s) >= len(p) && s[:len(p)] == p {
				return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
			}
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed)
}
