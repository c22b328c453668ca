package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/internal/ethtool"
)

// netnsDir is where named namespaces live (iproute2 convention, used by
// netns.NewNamed and `ip netns`).
const netnsDir = "/var/run/netns"

// Underlay addressing (DESIGN.md "Testbed"): node i (1-based) gets
// 198.18.0.i/24 (RFC 2544 benchmarking range) and 2001:2::i/64 (RFC 5180
// benchmarking range) on its uplink. Every bed has its own namespaces, so
// beds running in parallel reuse the same addresses without conflict.
var (
	underlay4 = netip.MustParsePrefix("198.18.0.0/24")
	underlay6 = netip.MustParsePrefix("2001:2::/64")
)

// MaxNodes is the largest number of nodes one bed holds (one /24).
const MaxNodes = 254

// Underlay selects how nodes are joined.
type Underlay int

const (
	// Bridge joins every node's uplink to a bridge in a namespace of its
	// own ("<prefix>-ul"); any number of nodes up to MaxNodes.
	Bridge Underlay = iota
	// Direct joins exactly two nodes with one veth pair (the topology the
	// reference numbers in DESIGN.md were measured on). The first node has
	// no uplink until the second is added; a third AddNode fails.
	Direct
)

// Options configures a bed. The zero value is a bridged underlay.
type Options struct {
	Underlay Underlay
	// UplinkMTU is the MTU of node uplinks; 0 means 1500.
	UplinkMTU int
	// UplinkQueues is the number of RX and TX queues of node uplinks (a
	// multi-queue NIC); 0 means 1. veth picks the peer's RX queue by the
	// sender's TX queue, which a kernel sender chooses by flow hash.
	UplinkQueues int
	// UplinkActiveQueues, when in [1, UplinkQueues), leaves only that many
	// of the allocated queues active (ethtool -L rx N tx N), as a plain
	// veth on a 2-CPU machine or a NIC after `ethtool -L` has them.
	UplinkActiveQueues int
}

// Bed is one emulated cluster of nodes and containers. All methods are safe
// for concurrent use. Close removes everything the bed made.
type Bed struct {
	name   string
	prefix string
	opts   Options

	// mu guards all fields below.
	mu     sync.Mutex
	nsList []string    // namespaces created, in creation order
	procs  []*exec.Cmd // Start's: their callers wait for them
	// launched are Launch's, reaped by their own goroutines.
	launched []*Proc
	nodes    []*Node
	bridge   string // bridge namespace name, once made
	closed   bool
}

// Node is an emulated worker node: a namespace with an uplink.
type Node struct {
	Bed   *Bed
	Name  string // as given to AddNode
	Index int    // 1-based; the last byte of IP
	// NS is the node's network namespace name.
	NS string
	// Uplink is the name of the node's underlay interface inside NS.
	Uplink string
	// IP and IP6 are the uplink addresses; Prefix and Prefix6 their subnets.
	IP, IP6         netip.Addr
	Prefix, Prefix6 netip.Prefix

	// mu guards containers.
	mu         sync.Mutex
	containers map[string]*Container
}

// Container is an emulated container: a namespace whose eth0 is one end of a
// veth pair; the other end (HostIf) sits in the node's namespace.
type Container struct {
	Node *Node
	Name string
	// NS is the container's network namespace name.
	NS string
	// IfName is the container-side interface name inside NS ("eth0").
	IfName string
	// HostIf is the host-side veth name inside Node.NS.
	HostIf string
	// V4 and V6 are the addresses given to AddContainer (may be invalid).
	V4, V6 netip.Prefix
}

// ContainerConfig describes a container for Node.AddContainer.
type ContainerConfig struct {
	// V4, V6: address/prefix length for eth0; an invalid prefix means none.
	V4, V6 netip.Prefix
	// GW4, GW6: default-route gateways (added on-link via eth0); invalid
	// means no default route of that family.
	GW4, GW6 netip.Addr
	// MTU of both veth ends; 0 means 1450 (SPEC §7.3 container default).
	MTU int
	// HostIf names the host-side veth inside the node namespace; "" means
	// "c" + the container name. At most 15 bytes.
	HostIf string
	// HostAddrs are optional addresses for the host-side veth (for example
	// the gateway, for routed baselines). NetManager tests leave it empty.
	HostAddrs []netip.Prefix
}

// New makes an empty bed. name is only a label; names of namespaces start
// with Prefix(), "ow" + 4 random hex digits, unique among existing
// namespaces. Call Close when done (see also NewT and CloseOnSignal).
func New(name string, opts ...Options) (*Bed, error) {
	b := &Bed{name: name}
	if len(opts) > 0 {
		b.opts = opts[0]
	}
	if b.opts.UplinkMTU == 0 {
		b.opts.UplinkMTU = 1500
	}
	b.opts.UplinkQueues = max(b.opts.UplinkQueues, 1)
	for range 16 {
		var r [2]byte
		if _, err := rand.Read(r[:]); err != nil {
			return nil, fmt.Errorf("testbed %s: random prefix: %w", name, err)
		}
		p := "ow" + hex.EncodeToString(r[:])
		if !prefixInUse(p) {
			b.prefix = p
			return b, nil
		}
	}
	return nil, fmt.Errorf("testbed %s: no free name prefix", name)
}

func prefixInUse(p string) bool {
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), p) {
			return true
		}
	}
	return false
}

// Prefix is the bed's unique name prefix ("ow" + 4 hex digits).
func (b *Bed) Prefix() string { return b.prefix }

// Namespaces lists the namespaces the bed made and has not removed.
func (b *Bed) Namespaces() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.nsList...)
}

// Nodes lists the nodes in the order they were added.
func (b *Bed) Nodes() []*Node {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Node(nil), b.nodes...)
}

// newNSLocked creates namespace prefix+suffix with lo up and records it
// before anything else can fail, so Close removes it. b.mu must be held.
func (b *Bed) newNSLocked(suffix string) (string, error) {
	if b.closed {
		return "", errors.New("testbed: closed")
	}
	name := b.prefix + "-" + suffix
	if err := NewNamedNS(name); err != nil {
		return "", fmt.Errorf("netns %s: %w", name, err)
	}
	b.nsList = append(b.nsList, name)
	err := withHandle(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	if err != nil {
		return "", fmt.Errorf("netns %s: lo up: %w", name, err)
	}
	return name, nil
}

// netnsDirOnce makes netnsDir a shared mount once per process.
var netnsDirOnce = sync.OnceValue(shareNetnsDir)

// shareNetnsDir makes netnsDir a mount point with shared propagation, as
// `ip netns add` does (iproute2 ip/ipnetns.c, netns_add). A namespace is
// named by bind-mounting it onto a file in netnsDir; processes started with
// `ip netns exec` live in a mount namespace copied at their start, and they
// see later bind mounts only if netnsDir propagates them. On a fresh machine
// with a private root mount, netns.NewNamed alone leaves netnsDir a plain
// directory, and a netmanager started earlier finds an empty file where a
// container's namespace should be.
func shareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if !errors.Is(err, unix.EINVAL) {
		return wrapMount(err)
	}
	// EINVAL: not a mount point yet. Bind it onto itself, then share it.
	if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount %s onto itself: %w", netnsDir, err)
	}
	return wrapMount(unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""))
}

func wrapMount(err error) error {
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", netnsDir, err)
	}
	return nil
}

// NewNamedNS creates a named namespace (a file in /run/netns, which it
// makes a shared mount first, see shareNetnsDir) without leaving the
// calling thread in it. If the thread cannot be restored it stays locked, so
// the Go runtime discards it instead of reusing it in the wrong namespace.
// Beds use it for every namespace; callers that make namespaces of their
// own must use it too and remove them (netns.DeleteNamed).
func NewNamedNS(name string) error {
	if err := netnsDirOnce(); err != nil {
		return err
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	ns, nerr := netns.NewNamed(name)
	if ns.IsOpen() {
		ns.Close()
	}
	if err := netns.Set(orig); err != nil {
		return errors.Join(nerr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return nerr
}

// withHandle runs fn with a netlink handle bound to namespace ns; the
// calling thread never changes namespace.
func withHandle(ns string, fn func(h *netlink.Handle) error) error {
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", ns, err)
	}
	defer h.Close()
	return fn(h)
}

// AddNode adds an emulated node named name (used in namespace names: keep it
// short, e.g. "a" or "n1"), with its uplink on the underlay.
func (b *Bed) AddNode(name string) (*Node, error) {
	if name == "" || len(b.prefix)+len(name) > 32 || strings.ContainsAny(name, "/ ") {
		return nil, fmt.Errorf("add node %q: bad name", name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.nodes {
		if n.Name == name {
			return nil, fmt.Errorf("add node %q: exists", name)
		}
	}
	idx := len(b.nodes) + 1
	if idx > MaxNodes || (b.opts.Underlay == Direct && idx > 2) {
		return nil, fmt.Errorf("add node %q: underlay full", name)
	}
	ns, err := b.newNSLocked(name)
	if err != nil {
		return nil, fmt.Errorf("add node %q: %w", name, err)
	}
	n := &Node{
		Bed: b, Name: name, Index: idx, NS: ns, Uplink: "ul0",
		IP:         nthAddr(underlay4, idx),
		IP6:        nthAddr(underlay6, idx),
		Prefix:     underlay4,
		Prefix6:    underlay6,
		containers: make(map[string]*Container),
	}
	b.nodes = append(b.nodes, n)
	switch b.opts.Underlay {
	case Bridge:
		err = b.plugBridgeLocked(n)
	case Direct:
		if idx == 2 {
			err = b.plugDirectLocked(b.nodes[0], n)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("add node %q: %w", name, err)
	}
	return n, nil
}

func nthAddr(p netip.Prefix, i int) netip.Addr {
	a := p.Addr().AsSlice()
	a[len(a)-1] += byte(i)
	r, _ := netip.AddrFromSlice(a)
	return r
}

// plugBridgeLocked creates the bridge namespace on first use and a veth from
// it (port "p<index>") to node n (ul0). b.mu must be held.
func (b *Bed) plugBridgeLocked(n *Node) error {
	if b.bridge == "" {
		ns, err := b.newNSLocked("ul")
		if err != nil {
			return err
		}
		err = withHandle(ns, func(h *netlink.Handle) error {
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: b.opts.UplinkMTU}}
			if err := h.LinkAdd(br); err != nil {
				return fmt.Errorf("bridge add: %w", err)
			}
			return h.LinkSetUp(br)
		})
		if err != nil {
			return fmt.Errorf("underlay %s: %w", ns, err)
		}
		b.bridge = ns
	}
	port := fmt.Sprintf("p%d", n.Index)
	err := withHandle(b.bridge, func(h *netlink.Handle) error {
		if err := addVeth(h, port, n.NS, n.Uplink, b.opts.UplinkMTU, b.opts.UplinkQueues); err != nil {
			return err
		}
		br, err := h.LinkByName("br0")
		if err != nil {
			return err
		}
		l, err := h.LinkByName(port)
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("enslave %s: %w", port, err)
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		return fmt.Errorf("underlay port %s: %w", port, err)
	}
	if err := b.activateQueues(n, b.bridge, port); err != nil {
		return fmt.Errorf("underlay port %s: %w", port, err)
	}
	return configureUplink(n)
}

// plugDirectLocked joins nodes a and z with one veth pair. b.mu must be held.
func (b *Bed) plugDirectLocked(a, z *Node) error {
	err := withHandle(a.NS, func(h *netlink.Handle) error {
		return addVeth(h, a.Uplink, z.NS, z.Uplink, b.opts.UplinkMTU, b.opts.UplinkQueues)
	})
	if err != nil {
		return fmt.Errorf("underlay veth: %w", err)
	}
	if err := b.activateQueues(a, z.NS, z.Uplink); err != nil {
		return fmt.Errorf("underlay veth: %w", err)
	}
	return errors.Join(configureUplink(a), configureUplink(z))
}

// addVeth creates veth name in h's namespace with its peer called peer in
// namespace peerNS, queues RX and TX queues on each end. Both ends are
// created inside namespaces of the bed; the root namespace never sees them.
func addVeth(h *netlink.Handle, name, peerNS, peer string, mtu, queues int) error {
	pns, err := netns.GetFromName(peerNS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", peerNS, err)
	}
	defer pns.Close()
	v := &netlink.Veth{
		LinkAttrs:       netlink.LinkAttrs{Name: name, MTU: mtu, NumTxQueues: queues, NumRxQueues: queues},
		PeerName:        peer,
		PeerNamespace:   netlink.NsFd(int(pns)),
		PeerMTU:         uint32(mtu),
		PeerNumTxQueues: uint32(queues),
		PeerNumRxQueues: uint32(queues),
	}
	if err := h.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s@%s: %w", name, peer, peerNS, err)
	}
	return nil
}

// activateQueues leaves active queues of the uplink of n (and its peer end
// peerIf in peerNS) active, when fewer than the allocated ones.
func (b *Bed) activateQueues(n *Node, peerNS, peerIf string) error {
	q := b.opts.UplinkActiveQueues
	if q <= 0 || q >= b.opts.UplinkQueues {
		return nil
	}
	return errors.Join(
		Do(n.NS, func() error { return ethtool.SetRxTxQueues(n.Uplink, q, q) }),
		Do(peerNS, func() error { return ethtool.SetRxTxQueues(peerIf, q, q) }))
}

// configureUplink addresses and raises node n's uplink. No default route:
// nodes reach only the underlay subnet.
func configureUplink(n *Node) error {
	return withHandle(n.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(n.Uplink)
		if err != nil {
			return err
		}
		for _, a := range []netip.Prefix{
			netip.PrefixFrom(n.IP, n.Prefix.Bits()),
			netip.PrefixFrom(n.IP6, n.Prefix6.Bits()),
		} {
			if err := addAddr(h, l, a); err != nil {
				return err
			}
		}
		return h.LinkSetUp(l)
	})
}

func addAddr(h *netlink.Handle, l netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: prefixToIPNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once, no 1 s tentative wait
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("addr %v on %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

// Do runs fn on a thread inside namespace ns (lock OS thread, setns, run,
// restore). fn must not start goroutines that expect to be in ns: only the
// calling goroutine's thread switches. If the thread cannot be restored it
// stays locked, so the runtime discards it.
func Do(ns string, fn func() error) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Sysctl sets a sysctl (dotted key, e.g. "net.ipv4.ip_forward") inside
// namespace ns. /proc/sys/net resolves to the namespace of the thread that
// opens the file, so no sysctl binary is needed.
func Sysctl(ns, key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	err := Do(ns, func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, ns, err)
	}
	return nil
}

// Handle runs fn with a netlink handle bound to namespace ns.
func Handle(ns string, fn func(h *netlink.Handle) error) error { return withHandle(ns, fn) }

// Do runs fn inside the node's namespace (see package-level Do).
func (n *Node) Do(fn func() error) error { return Do(n.NS, fn) }

// Do runs fn inside the container's namespace (see package-level Do).
func (c *Container) Do(fn func() error) error { return Do(c.NS, fn) }

// Close kills the processes the bed started (by PID), then deletes every
// namespace it made (by exact name), newest first; their interfaces,
// addresses and routes go with them. Idempotent; safe after a partial
// failure.
func (b *Bed) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	var errs []error
	for _, p := range b.procs {
		if p.Process == nil || p.ProcessState != nil {
			continue
		}
		if err := p.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("kill pid %d: %w", p.Process.Pid, err))
		}
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			errs = append(errs, fmt.Errorf("pid %d: not reaped after kill", p.Process.Pid))
		}
	}
	b.procs = nil
	for _, p := range b.launched {
		if !p.Kill() {
			errs = append(errs, fmt.Errorf("pid %d: not reaped after kill", p.Pid()))
		}
	}
	b.launched = nil
	for i := len(b.nsList) - 1; i >= 0; i-- {
		name := b.nsList[i]
		if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", name, err))
			continue
		}
	}
	b.nsList = nil
	return errors.Join(errs...)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}
