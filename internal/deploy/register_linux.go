package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Nodes register the way Oakestra's node engine registers them: the
// netmanager starts without --cluster, knowing only the cluster's port
// (--cluster-port), and the harness, as the node engine, sends POST
// /register {client_id, cluster_address} with the bare host of the
// cluster (issue 12).

// oakestraArgs turns netmanager arguments with --cluster URL into ones
// without it and with --cluster-port of cl (idempotent: a restart passes
// the same arguments again).
func oakestraArgs(args []string, cl *Cluster) []string {
	i := slices.Index(args, "--cluster")
	if i < 0 || i+1 >= len(args) || cl == nil {
		return args
	}
	out := slices.Concat(args[:i:i], args[i+2:])
	if !slices.Contains(out, "--cluster-port") {
		out = append(out, "--cluster-port", strconv.Itoa(cl.port))
	}
	return out
}

// registerOakestra waits (bounded by ctx and the start timeout) until n's
// netmanager answers on its socket and registers it with POST /register
// and the control node's bare address, as Oakestra's node engine does.
func (d *Deployment) registerOakestra(ctx context.Context, n *Node) error {
	if n.Cluster == nil || slices.Contains(n.args, "--cluster") {
		return nil
	}
	body := map[string]string{"client_id": n.Name, "cluster_address": d.Ctl.IP.String()}
	ctx, cancel := context.WithTimeout(ctx, d.opts.StartTimeout)
	defer cancel()
	var last error
	for {
		var s NodeStatus
		if last = d.NodeCall(ctx, n, "GET", "/status", nil, &s); last == nil {
			if last = d.NodeCall(ctx, n, "POST", "/register", body, nil); last == nil {
				return nil
			}
			var ae *APIError
			if errors.As(last, &ae) && ae.Status/100 == 4 {
				return fmt.Errorf("netmanager %s: %w", n.Name, last) // refused: no retry helps
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("netmanager %s: POST /register %v: %w", n.Name, body, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// RestartNetManagerWith stops n's netmanager (SIGTERM), starts it again
// with extra flags after its own (a flag given again wins: --node-ip,
// --public-ip) and waits until it is registered. The flags stay for later
// restarts.
func (d *Deployment) RestartNetManagerWith(ctx context.Context, n *Node, extra ...string) error {
	d.StopNetManager(n)
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if !p.Exited() {
		return fmt.Errorf("deploy: netmanager %s (pid %d) did not stop", n.Name, p.Pid())
	}
	n.args = append(n.args, extra...)
	if err := d.startNetManager(n); err != nil {
		return err
	}
	return d.waitNetManager(ctx, n)
}
