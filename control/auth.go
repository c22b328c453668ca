package control

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// Role is who calls an endpoint. Each route names the roles it serves;
// a bearer token stands for the roles whose token it is (SPEC §8,
// docs/api.md "Authentication").
type Role uint8

// The callers of the control plane.
const (
	// RoleOrchestrator: the system manager (root's service, instance and
	// cluster registration API) and the cluster manager (the cluster's
	// deployment API).
	RoleOrchestrator Role = 1 << iota
	// RoleCluster: cluster service managers calling root, and root calling
	// them back (job and peer updates).
	RoleCluster
	// RoleNode: NetManagers calling their cluster's node-facing API.
	RoleNode

	roleAll = RoleOrchestrator | RoleCluster | RoleNode
)

var roleNames = [...]struct {
	r    Role
	name string
}{{RoleOrchestrator, "orchestrator"}, {RoleCluster, "cluster"}, {RoleNode, "node"}}

func (r Role) String() string {
	s := ""
	for _, n := range roleNames {
		if r&n.r != 0 {
			if s != "" {
				s += ", "
			}
			s += n.name
		}
	}
	return s
}

// Tokens are the bearer tokens of a control service. All (OAKWIRE_TOKEN)
// stands for every role that has no token of its own, so a setup with one
// token keeps working; a role token (OAKWIRE_ORCHESTRATOR_TOKEN,
// OAKWIRE_CLUSTER_TOKEN, OAKWIRE_NODE_TOKEN) narrows its holder to the
// endpoints of its role. All empty: authentication is off.
type Tokens struct {
	All, Orchestrator, Cluster, Node string
}

// For is the token role r presents (and is checked against): its own, else
// All.
func (t Tokens) For(r Role) string {
	var own string
	switch r {
	case RoleOrchestrator:
		own = t.Orchestrator
	case RoleCluster:
		own = t.Cluster
	case RoleNode:
		own = t.Node
	}
	if own != "" {
		return own
	}
	return t.All
}

// Off reports whether no token is set: every request is accepted.
func (t Tokens) Off() bool { return t == Tokens{} }

// Validate checks that, when any token is set, every role has one (its own
// or All), and that no two roles share a token (a shared role token would
// make the narrower one meaningless).
func (t Tokens) Validate() error {
	if t.Off() {
		return nil
	}
	var errs []error
	seen := map[string]Role{}
	for _, n := range roleNames {
		tok := t.For(n.r)
		if tok == "" {
			errs = append(errs, fmt.Errorf("tokens: role %s has no token (set its own or OAKWIRE_TOKEN)", n.name))
			continue
		}
		if prev, ok := seen[tok]; ok && tok != t.All {
			errs = append(errs, fmt.Errorf("tokens: roles %s and %s share a token", prev, n.name))
		}
		seen[tok] |= n.r
	}
	return errors.Join(errs...)
}

// roleDigests are the SHA-256 digests of "Bearer <token>" per role, so a
// presented token is compared in constant time and at a fixed length: the
// comparison leaks neither the token's bytes nor its length.
type roleDigests struct {
	on bool
	d  [len(roleNames)][sha256.Size]byte
}

func newRoleDigests(t Tokens) roleDigests {
	var rd roleDigests
	if t.Off() {
		return rd
	}
	rd.on = true
	for i, n := range roleNames {
		if tok := t.For(n.r); tok != "" {
			rd.d[i] = sha256.Sum256([]byte("Bearer " + tok))
		}
	}
	return rd
}

// roles returns the roles the request's Authorization header stands for
// (every role when authentication is off). Every role's digest is
// compared, whatever matched before.
func (rd *roleDigests) roles(ctx *fasthttp.RequestCtx) Role {
	if !rd.on {
		return roleAll
	}
	got := sha256.Sum256(ctx.Request.Header.Peek("Authorization"))
	var r Role
	var zero [sha256.Size]byte
	for i, n := range roleNames {
		if subtle.ConstantTimeCompare(got[:], rd.d[i][:])&^subtle.ConstantTimeCompare(rd.d[i][:], zero[:]) == 1 {
			r |= n.r
		}
	}
	return r
}

// errUnauthorized is the answer to a request without a valid token.
func errUnauthorized() error {
	return newErr(api.ErrUnauthorized, api.CodeUnauthorized, "Authorization: missing or wrong bearer token")
}

// errForbidden is the answer to a valid token of a role the route does not
// serve.
func errForbidden(route string, want Role) error {
	return newErr(api.ErrForbidden, api.CodeForbidden, "Authorization: %s is for the %s role only; this token is of another role", route, want)
}
