package control

import (
	"context"
	"strconv"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// GET /api/node/watch?node_id=&since=V&timeout=S[&epoch=E][&peers=delta]:
// a long poll for the changes of the node's services and peers after
// version since, or a resync.
func (c *Cluster) watch(ctx *fasthttp.RequestCtx, _ []string) error {
	node, err := c.nodeParam(ctx)
	if err != nil {
		return err
	}
	since, wait, deltas, err := c.watchParams(ctx.QueryArgs())
	if err != nil {
		return err
	}
	wantEpoch := string(ctx.QueryArgs().Peek("epoch"))
	deadline := time.Now().Add(wait)
	for {
		ch := c.waitCh(node) // before reading: a push after the read wakes us
		resp, done, err := c.changes(ctx, node, since, wantEpoch, deltas)
		if err != nil {
			return err
		}
		left := time.Until(deadline)
		if done || left <= 0 || c.ctx.Err() != nil {
			writeJSON(ctx, 200, resp)
			return nil
		}
		t := time.NewTimer(min(left, c.cfg.WatchPoll))
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// watchParams reads since (default 0), timeout (seconds or a Go duration,
// default 30 s, capped by MaxWatch) and peers (full or delta).
func (c *Cluster) watchParams(args *fasthttp.Args) (since uint64, wait time.Duration, deltas bool, err error) {
	if s := string(args.Peek("since")); s != "" {
		if since, err = strconv.ParseUint(s, 10, 64); err != nil {
			return 0, 0, false, badf(api.CodeBadParam, "since: %q is not a version (unsigned integer)", s)
		}
	}
	wait = 30 * time.Second
	if s := string(args.Peek("timeout")); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 {
			wait = time.Duration(f * float64(time.Second))
		} else if d, err := time.ParseDuration(s); err == nil && d >= 0 {
			wait = d
		} else {
			return 0, 0, false, badf(api.CodeBadParam, "timeout: %q, want seconds or a duration", s)
		}
	}
	switch s := string(args.Peek("peers")); s {
	case "", "full":
	case "delta":
		deltas = true
	default:
		return 0, 0, false, badf(api.CodeBadParam, "peers: %q, want full or delta", s)
	}
	return since, min(wait, c.cfg.MaxWatch), deltas, nil
}

// changes reads the node's changes after since; done reports whether the
// answer has anything (changes or a resync). With deltas, peers changes
// carry their delta and the whole peer set is sent only if one has none.
func (c *Cluster) changes(ctx context.Context, node string, since uint64, wantEpoch string, deltas bool) (api.WatchResponse, bool, error) {
	epoch, err := c.epoch(ctx)
	if err != nil {
		return api.WatchResponse{}, false, err
	}
	resp := api.WatchResponse{Epoch: epoch, Changes: []api.Change{}}
	rc, cancel := c.rctx(ctx)
	defer cancel()
	cur, err := c.store.version(rc, node)
	if err != nil {
		return resp, false, nodeErr(err, node)
	}
	resp.Version = cur
	if (wantEpoch != "" && wantEpoch != epoch) || since > cur {
		return c.resync(rc, node, resp)
	}
	if since == cur {
		return resp, false, nil
	}
	changes, peers, gap, err := c.store.changes(rc, node, since, deltas)
	if err != nil {
		return resp, false, err
	}
	if gap {
		return c.resync(rc, node, resp)
	}
	resp.Changes = changes
	resp.Version = changes[len(changes)-1].Version
	if peers {
		if resp.Peers, err = c.store.peerList(rc, node); err != nil {
			return resp, false, err
		}
	}
	return resp, true, nil
}

// resync fills resp with the full current state of the node's interests.
// resp.Version was read before the state, so a change racing with the
// resync is delivered again by the next watch (entries are idempotent).
func (c *Cluster) resync(ctx context.Context, node string, resp api.WatchResponse) (api.WatchResponse, bool, error) {
	var err error
	resp.Resync = true
	if resp.Services, err = c.store.interests(ctx, node); err != nil {
		return resp, false, err
	}
	if resp.Peers, err = c.store.peerList(ctx, node); err != nil {
		return resp, false, err
	}
	return resp, true, nil
}
