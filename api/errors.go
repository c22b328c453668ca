package api

import (
	"errors"
	"fmt"
)

// ErrorBody is every error answer of the control plane.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Machine codes of error answers (ErrorBody.Code). Each belongs to one
// error class below; docs/api.md lists when each is sent.
const (
	CodeBadJSON           = "bad_json"
	CodeBadType           = "bad_type"
	CodeMissingField      = "missing_field"
	CodeBadName           = "bad_name"
	CodeBadID             = "bad_id"
	CodeBadAddress        = "bad_address"
	CodeBadPort           = "bad_port"
	CodeBadInstanceNumber = "bad_instance_number"
	CodeBadParam          = "bad_param"
	CodeBadLocation       = "bad_location"
	CodeDuplicate         = "duplicate"
	CodeOutOfPool         = "out_of_pool"
	CodeBadRequest        = "bad_request"
	CodeUnauthorized      = "unauthorized"
	CodeForbidden         = "forbidden"
	CodeNotFound          = "not_found"
	CodeMethodNotAllowed  = "method_not_allowed"
	CodeConflict          = "conflict"
	CodeAddressInUse      = "address_in_use"
	CodeBodyTooLarge      = "body_too_large"
	CodeUpstream          = "upstream_unavailable"
	CodeRootUnreachable   = "root_unreachable"
	CodeRootError         = "root_error"
	CodeUnavailable       = "unavailable"
	CodeRedisUnavailable  = "redis_unavailable"
	CodePoolExhausted     = "pool_exhausted"
	CodeInternal          = "internal"
)

// Error classes: every error a server answers is of one class (errors.Is),
// which gives its HTTP status; a client gets the class of an answer back
// from its status with ErrorFor.
var (
	ErrBadRequest   = errors.New("bad request")
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: a valid token of a role the endpoint does not serve
	// (a node's token at root's orchestrator API).
	ErrForbidden = errors.New("forbidden")
	ErrNotFound  = errors.New("not found")
	ErrMethod    = errors.New("method not allowed")
	ErrConflict  = errors.New("conflict")
	// ErrTooLarge is a request body over the limit: a bad request too.
	ErrTooLarge = fmt.Errorf("request body too large: %w", ErrBadRequest)
	// ErrExhausted: a pool has no free address or subnet.
	ErrExhausted = errors.New("pool exhausted")
	// ErrUnavailable: the server's store is not serving; nothing changed.
	ErrUnavailable = errors.New("unavailable")
	// ErrUpstream: a component the server depends on (root, seen from a
	// cluster) could not be reached or answered nonsense: unavailable too.
	ErrUpstream = fmt.Errorf("upstream %w", ErrUnavailable)
	// ErrServer is any other failure of the server (500).
	ErrServer = errors.New("server error")
)

// statuses is THE table between error classes and HTTP status codes
// (RFC 9110; 507 is RFC 4918's Insufficient Storage), with each class's
// default machine code. A class that wraps another comes before it: the
// first errors.Is match wins.
var statuses = [...]struct {
	class  error
	status int
	code   string
}{
	{ErrTooLarge, 413, CodeBodyTooLarge},
	{ErrBadRequest, 400, CodeBadRequest},
	{ErrUnauthorized, 401, CodeUnauthorized},
	{ErrForbidden, 403, CodeForbidden},
	{ErrNotFound, 404, CodeNotFound},
	{ErrMethod, 405, CodeMethodNotAllowed},
	{ErrConflict, 409, CodeConflict},
	{ErrExhausted, 507, CodePoolExhausted},
	{ErrUpstream, 502, CodeUpstream},
	{ErrUnavailable, 503, CodeUnavailable},
	{ErrServer, 500, CodeInternal},
}

// Status returns the HTTP status of err's class and the class's default
// machine code: 500 and CodeInternal for an error of no class.
func Status(err error) (status int, code string) {
	for _, s := range statuses {
		if errors.Is(err, s.class) {
			return s.status, s.code
		}
	}
	return 500, CodeInternal
}

// ErrorFor returns the class of an answer with HTTP status status (≥ 400):
// the class that Status maps to it, ErrServer for any other.
func ErrorFor(status int) error {
	for _, s := range statuses {
		if s.status == status {
			return s.class
		}
	}
	return ErrServer
}
