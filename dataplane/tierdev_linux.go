//go:build linux

package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/bpfprog"
)

// The kernel tier's devices and pins: the punt veth pair, the start of the
// tier, and removing what it leaves behind.

// puntDevice makes (or finds) the punt veth pair with queues RX/TX queues
// per end and MTU mtu, IPv6 off on both ends (no neighbour discovery or
// MLD of their own), up, no addresses. A pair left by an earlier daemon
// with another queue count is made again.
func puntDevice(queues, mtu int) (p0, p1 netlink.Link, err error) {
	if l, err := netlink.LinkByName(punt0); err == nil {
		if l.Attrs().NumRxQueues == queues && l.Attrs().MTU == mtu {
			p1, err := netlink.LinkByName(punt1)
			if err == nil {
				return l, p1, nil
			}
		}
		if err := netlink.LinkDel(l); err != nil {
			return nil, nil, fmt.Errorf("punt device %s: delete stale: %w", punt0, err)
		}
	}
	v := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: punt0, MTU: mtu, NumTxQueues: queues, NumRxQueues: queues},
		PeerName:  punt1, PeerMTU: uint32(mtu), PeerNumTxQueues: uint32(queues), PeerNumRxQueues: uint32(queues),
	}
	if err := netlink.LinkAdd(v); err != nil {
		return nil, nil, fmt.Errorf("punt device %s: %w", punt0, err)
	}
	defer func() {
		if err != nil {
			_ = netlink.LinkDel(v)
		}
	}()
	for _, n := range []string{punt0, punt1} {
		path := filepath.Join("/proc/sys/net/ipv6/conf", n, "disable_ipv6")
		if werr := os.WriteFile(path, []byte("1"), 0o644); werr != nil && !errors.Is(werr, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("punt device %s: %w", n, werr)
		}
	}
	if p0, err = netlink.LinkByName(punt0); err != nil {
		return nil, nil, err
	}
	if p1, err = netlink.LinkByName(punt1); err != nil {
		return nil, nil, err
	}
	for _, l := range []netlink.Link{p0, p1} {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, nil, fmt.Errorf("punt device %s: up: %w", l.Attrs().Name, err)
		}
	}
	return p0, p1, nil
}

// puntMTU is the punt device's MTU: the larger of the uplink's and the
// Ethernet default, within what native XDP on veth takes (a frame and its
// headroom in a page).
func puntMTU(uplinkMTU int) int { return min(max(uplinkMTU, 1500), 3500) }

// DeletePuntDevice removes the punt veth pair (netmanager teardown).
func DeletePuntDevice() error {
	l, err := netlink.LinkByName(punt0)
	if _, nf := errors.AsType[netlink.LinkNotFoundError](err); nf {
		return nil
	}
	if err != nil {
		return err
	}
	return netlink.LinkDel(l)
}

// RemovePinned removes what the kernel tier pinned under dir (links and
// maps; netmanager teardown), which detaches its programs.
func RemovePinned(dir string) error {
	if dir == "" {
		return nil
	}
	err := os.RemoveAll(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pinned tier objects %s: %w", dir, err)
	}
	return nil
}

// OnBPFFS reports whether path, or the nearest existing directory above
// it, is on a bpffs (where pins can go).
func OnBPFFS(path string) bool {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil {
			return st.Type == unix.BPF_FS_MAGIC
		}
		if p == "/" || p == "." {
			return false
		}
	}
}

// Teardown removes what the kernel tier leaves on a node between daemons:
// the pinned links and flows under pinPath (which detaches its programs)
// and the punt device (netmanager teardown).
func Teardown(pinPath string) error {
	return errors.Join(RemovePinned(pinPath), DeletePuntDevice())
}

// startTier sets the kernel tier up: the punt device with a queue and a
// socket per worker, the tier's programs (on the node maps of upObjs), the
// flows a previous daemon left pinned, and tc_uplink on the uplink last,
// once everything it punts to is in place.
func (e *Engine) startTier() (err error) {
	p0, p1, err := puntDevice(len(e.workers), puntMTU(e.mtu))
	if err != nil {
		return err
	}
	if e.tier, err = bpfprog.LoadTier(bpfprog.TierConfig{Share: e.upObjs, Flows: e.cfg.TierFlows,
		Queues: len(e.workers), PinPath: e.cfg.PinPath}); err != nil {
		return fmt.Errorf("kernel tier: %w", err)
	}
	if err := e.tier.SetConfig(p0.Attrs().Index, e.uplinkIdx); err != nil {
		return err
	}
	for i := range e.workers {
		s, err := e.openSocket(i, puntID+int32(i), p1.Attrs().Index, i)
		if err != nil {
			return fmt.Errorf("punt socket, queue %d: %w", i, err)
		}
		if err := e.tier.RegisterXSK(i, s.Fd()); err != nil {
			return err
		}
	}
	if e.puntXDP, err = e.tier.AttachPuntXDP(p1.Attrs().Index); err != nil {
		return err
	}
	if e.puntTC, err = e.tier.AttachPunt(p0.Attrs().Index); err != nil {
		return err
	}
	m := newTierMgr(e, e.tier)
	if err := m.adopt(); err != nil {
		e.log.Warn("dataplane: kernel tier: flows of the previous daemon", "err", err)
	}
	e.tm.Store(m)
	if e.tierUp, err = e.tier.AttachUplink(e.uplinkIdx); err != nil {
		return err
	}
	return nil
}
