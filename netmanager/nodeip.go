package netmanager

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// The node's address follows its uplink (issue 12 item 7, Oakestra's
// NetManager does the same): when the configured node IP leaves the
// uplink and another address of its family is there, that one is the node
// IP from then on. The daemon registers the new endpoint with its cluster
// (which tells the other nodes and, through root, the linked clusters),
// reports each local instance again (so root places it at the new
// address and clients follow), restarts the data plane on the new address
// (the encapsulation source and the tunnel steering are the node IP) and
// rewrites its nft rules (port mappings match the node's own address).
// nodeip_linux.go watches the uplink through netlink.

// pickNodeIP decides the node IP from the uplink's addresses: cur while it
// is there, else the first global unicast address of cur's family, else
// none (wait for one).
func pickNodeIP(cur netip.Addr, addrs []netip.Addr) (netip.Addr, bool) {
	var first netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if a == cur {
			return cur, false
		}
		if !first.IsValid() && a.Is4() == cur.Is4() && a.IsGlobalUnicast() {
			first = a
		}
	}
	return first, first.IsValid()
}

// changeNodeIP makes ip the node IP (see above). Errors of the cluster
// calls are returned after the local changes are done; the caller logs
// them and the next address event (or registration) repairs.
func (d *Daemon) changeNodeIP(ctx context.Context, ip netip.Addr) error {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	d.mu.Lock()
	old := d.cfg.nodeAddr()
	if ip == old {
		d.mu.Unlock()
		return nil
	}
	d.cfg.NodeIP = ip.String()
	d.log.Info("node IP changed on the uplink", "uplink", d.cfg.Uplink, "old", old, "new", ip)
	d.metrics.nodeIPChanges.Inc()
	var lerr error
	if d.st != nil && d.st.Subnets != nil {
		lerr = d.restartDataplaneLocked()
	}
	ep := d.cfg.endpoint()
	cl, confirmed := d.cluster, d.confirmed
	type inst struct {
		job      string
		n        int
		ns4, ns6 netip.Addr
	}
	var local []inst
	if d.st != nil {
		for _, c := range d.st.Containers {
			local = append(local, inst{c.Job, c.Instance, c.NSIP4, c.NSIP6})
		}
	}
	d.mu.Unlock()
	if lerr != nil {
		d.mu.Lock()
		d.lastErr = lerr.Error()
		d.mu.Unlock()
		return lerr
	}
	if cl == nil || !confirmed {
		return nil // the registration to come carries the new address
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cl.Register(rctx, ep); err != nil {
		return fmt.Errorf("node IP %s: register with the cluster: %w", ip, err)
	}
	for _, in := range local {
		if err := cl.ReportDeployed(rctx, in.job, in.n, in.ns4, in.ns6); err != nil {
			return fmt.Errorf("node IP %s: report %s: %w", ip, ownerOf(in.job, in.n), err)
		}
	}
	return nil
}

// restartDataplaneLocked takes the data plane down and up again on the
// current configuration, with every attached container's port and the
// service view pushed again, and rewrites the nft rules. d.mu held.
func (d *Daemon) restartDataplaneLocked() error {
	if d.dpStarted {
		if err := d.dp.Close(); err != nil {
			d.log.Warn("data plane close for restart", "err", err)
		}
		d.dpStarted = false
	}
	if err := d.setupNodeLocked(); err != nil {
		return err
	}
	for _, c := range d.st.Containers {
		if err := d.dp.AddPort(c.port()); err != nil {
			return fmt.Errorf("data plane restart: port of %s: %w", ownerOf(c.Job, c.Instance), err)
		}
	}
	if svcs := d.svcs.Load(); svcs != nil {
		if err := svcs.View.Push(); err != nil {
			return fmt.Errorf("data plane restart: service view: %w", err)
		}
	}
	return nil
}
