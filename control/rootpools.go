package control

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/policy"
	"github.com/valyala/fasthttp"
)

// The pools, straight from ipam: worker subnets, and a preview of the
// next service or instance IP.

// GET /api/net/subnet[?node_id=]: a worker subnet pair, idempotent per
// node id.
func (r *Root) allocSubnet(ctx *fasthttp.RequestCtx, _ []string) error {
	node := string(ctx.QueryArgs().Peek("node_id"))
	if node == "" {
		// Not idempotent without a node id (Oakestra's behaviour); the
		// answer names the generated id so the subnets can be freed.
		var b [8]byte
		_, _ = rand.Read(b[:])
		node = "anon-" + hex.EncodeToString(b[:])
	} else if err := validID("node_id", node); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	sp, err := r.store.alloc.AllocSubnet(c, node)
	if err != nil {
		return fmt.Errorf("allocate subnet: %w", err)
	}
	writeJSON(ctx, 200, api.Subnets{NodeID: node, SubnetAddr: sp.V4.Addr(), SubnetAddrV6: sp.V6.Addr(),
		Subnet: sp.V4, SubnetV6: sp.V6})
	return nil
}

// DELETE /api/net/subnet/{node_id}: the subnets go to quarantine.
func (r *Root) releaseSubnet(ctx *fasthttp.RequestCtx, p []string) error {
	node := p[0]
	if err := validID("node_id", node); err != nil {
		return err
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	if err := r.store.alloc.ReleaseSubnet(c, node); err != nil {
		if errors.Is(err, ipam.ErrNotFound) {
			return notFoundf("node_id: %q holds no subnet", node)
		}
		return fmt.Errorf("release subnet: %w", err)
	}
	writeJSON(ctx, 200, api.NodeRef{NodeID: node})
	return nil
}

// GET /api/pubnet/service/netinfo/available-ip?v=4|6[&kind=]: what the
// next allocation of a kind (a policy, or instance; default the first
// policy) would get. Read only.
func (r *Root) availableIP(ctx *fasthttp.RequestCtx, _ []string) error {
	fam := 4
	switch v := string(ctx.QueryArgs().Peek("v")); v {
	case "", "4":
	case "6":
		fam = 6
	default:
		return badf(api.CodeBadParam, "v: %q, want 4 or 6", v)
	}
	kind := ipam.Kind(1)
	if k := string(ctx.QueryArgs().Peek("kind")); k != "" {
		pol, ok := policy.Parse(k)
		switch {
		case k == "instance":
			kind = ipam.KindInstance
		case ok && pol.String() == k && slices.Contains(r.policies, pol):
			kind = ipam.Kind(pol)
		default:
			return badf(api.CodeBadParam, "kind: %q, want instance or one of %v", k, r.cfg.Policies)
		}
	}
	c, cancel := r.ctx(ctx)
	defer cancel()
	a, err := r.store.peek(c, kind, fam)
	if err != nil {
		return fmt.Errorf("preview: %w", err)
	}
	writeJSON(ctx, 200, api.AvailableIP{IP: a})
	return nil
}
