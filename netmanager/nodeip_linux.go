package netmanager

import (
	"context"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// watchUplink follows the uplink's addresses through netlink address
// events until ctx ends, and makes the node IP follow them (nodeip.go).
// Events are coalesced for 200 ms: moving an address is a delete and an
// add.
func (d *Daemon) watchUplink(ctx context.Context) {
	link, err := netlink.LinkByName(d.cfg.Uplink)
	if err != nil {
		d.log.Warn("node IP: uplink not found; not following its address", "uplink", d.cfg.Uplink, "err", err)
		return
	}
	idx := link.Attrs().Index
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) { d.log.Warn("node IP: netlink address events", "err", err) },
	}); err != nil {
		d.log.Warn("node IP: cannot follow the uplink's address", "err", err)
		return
	}
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			if u.LinkIndex == idx && settle == nil {
				settle = time.After(200 * time.Millisecond)
			}
		case <-settle:
			settle = nil
			d.followUplink(ctx, link)
		}
	}
}

// followUplink reads the uplink's addresses and changes the node IP if
// the current one is gone and another is there.
func (d *Daemon) followUplink(ctx context.Context, link netlink.Link) {
	d.mu.Lock()
	cur := d.cfg.nodeAddr()
	d.mu.Unlock()
	fam := unix.AF_INET6
	if cur.Is4() {
		fam = unix.AF_INET
	}
	list, err := netlink.AddrList(link, fam)
	if err != nil {
		d.log.Warn("node IP: list uplink addresses", "err", err)
		return
	}
	var addrs []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			addrs = append(addrs, ip)
		}
	}
	next, change := pickNodeIP(cur, addrs)
	if !change {
		return
	}
	if err := d.changeNodeIP(ctx, next); err != nil {
		d.log.Error("node IP change", "new", next, "err", err)
	}
}
