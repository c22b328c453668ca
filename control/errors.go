package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
)

// Errors are of the classes of package api, whose one table gives their
// HTTP status. Handlers make them with badf and friends, which add the
// machine code and a message naming the request field; the stores return
// named errors (rootstore.go, clusterstore.go) that handlers turn into
// such messages.

// errRedis is Redis not serving: the request changed nothing (503).
var errRedis = fmt.Errorf("redis %w", api.ErrUnavailable)

// storeCodes gives the errors of the layers below the handlers (ipam's
// sentinels, Redis) their API class and machine code. The first match
// wins.
var storeCodes = [...]struct {
	err, class error
	code       string
}{
	{ipam.ErrBadRequest, api.ErrBadRequest, api.CodeBadRequest},
	{ipam.ErrOutOfPool, api.ErrBadRequest, api.CodeOutOfPool},
	{ipam.ErrNotFound, api.ErrNotFound, api.CodeNotFound},
	{ipam.ErrConflict, api.ErrConflict, api.CodeAddressInUse},
	{ipam.ErrExhausted, api.ErrExhausted, api.CodePoolExhausted},
	{ipam.ErrUnavailable, api.ErrUnavailable, api.CodeRedisUnavailable},
	{errRedis, api.ErrUnavailable, api.CodeRedisUnavailable},
}

// apiError carries a specific machine code and a message that names the
// field; it wraps its class (or a store's error).
type apiError struct {
	class error
	code  string
	msg   string
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.class }

func newErr(class error, code, format string, args ...any) error {
	return &apiError{class: class, code: code, msg: fmt.Sprintf(format, args...)}
}

func badf(code, format string, args ...any) error {
	return newErr(api.ErrBadRequest, code, format, args...)
}

func notFoundf(format string, args ...any) error {
	return newErr(api.ErrNotFound, api.CodeNotFound, format, args...)
}

func conflictf(format string, args ...any) error {
	return newErr(api.ErrConflict, api.CodeConflict, format, args...)
}

func missing(field string) error { return badf(api.CodeMissingField, "%s: missing", field) }

// errStatus maps err to status, machine code and message: the class
// (api.Status) of its store error or its own, and its own code, else the
// store error's, else the class's.
func errStatus(err error) (int, string, string) {
	class, code := err, ""
	for _, s := range storeCodes {
		if errors.Is(err, s.err) {
			class, code = s.class, s.code
			break
		}
	}
	status, classCode := api.Status(class)
	if ae, ok := errors.AsType[*apiError](err); ok && ae.code != "" {
		code = ae.code
	}
	if code == "" {
		code = classCode
	}
	return status, code, err.Error()
}

// redisErr classifies an error from go-redis: a failure to reach Redis
// (network, timeout, pool) or a Redis that is not serving becomes errRedis;
// anything else (a script or protocol error) stays an internal error. what
// names the operation.
func redisErr(what string, err error) error {
	if err == nil {
		return nil
	}
	var re redis.Error
	if errors.As(err, &re) && !isNetErr(err) {
		// A reply error from the server. LOADING/MASTERDOWN/CLUSTERDOWN and
		// friends mean the store is not serving.
		for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "BUSY"} {
			if strings.HasPrefix(re.Error(), p) {
				return fmt.Errorf("%s: %w: %w", what, errRedis, err)
			}
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w: %w", what, errRedis, err)
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed)
}
