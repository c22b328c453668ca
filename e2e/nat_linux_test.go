package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/internal/testenv"
)

// TestNodeBehindNAT puts node c behind a NAT box: c's uplink moves from
// the underlay bridge to a private segment (198.19.0.0/24) whose other end
// is a namespace that routes to the underlay through its own address
// (198.18.0.100), masquerading what leaves and forwarding UDP 50103 to c
// (SNAT/DNAT, as a home router with a port forward does). c's netmanager
// runs with --public-ip 198.18.0.100 --public-port 50103 (Oakestra's
// NodePublicAddress/NodePublicPort). Service traffic then goes both ways:
// a client on a reaches a server on c through its service IP, and a
// client on c reaches a server on a, UDP and TCP. Root places c's
// instances at the public address, and a's data plane accepts tunnel
// traffic from there.
func TestNodeBehindNAT(t *testing.T) {
	testenv.RequireBinary(t, "nft")
	d, err := up(t, deploy.Options{Nodes: 3})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, c := d.Node("a"), d.Node("c")
	public := netip.MustParseAddr("198.18.0.100")
	private := netip.MustParseAddr("198.19.0.2")
	gw := netip.MustParseAddr("198.19.0.1")

	d.StopNetManager(c)
	natPath, err := d.NewNetns("nat")
	if err != nil {
		t.Fatal(err)
	}
	nat := filepath.Base(natPath)
	ul := d.Bed.Prefix() + "-ul"
	port := fmt.Sprintf("p%d", c.TB.Index) // c's uplink's peer on the bridge
	// The NAT box: c's bridge port becomes its LAN side, a new veth to the
	// bridge its WAN side.
	natNS := mustNS(t, nat)
	err = testbed.Handle(ul, func(h *netlink.Handle) error {
		l, err := h.LinkByName(port)
		if err != nil {
			return err
		}
		if err := h.LinkSetNoMaster(l); err != nil {
			return err
		}
		if err := h.LinkSetNsFd(l, natNS); err != nil {
			return err
		}
		br, err := h.LinkByName("br0")
		if err != nil {
			return err
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pnat"}, PeerName: "wan0", PeerNamespace: netlink.NsFd(natNS)}
		if err := h.LinkAdd(v); err != nil {
			return err
		}
		pl, err := h.LinkByName("pnat")
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(pl, br); err != nil {
			return err
		}
		return h.LinkSetUp(pl)
	})
	if err != nil {
		t.Fatalf("rewire the underlay: %v", err)
	}
	bits := fmt.Sprint(c.TB.Prefix.Bits())
	for _, step := range []struct {
		ns   string
		argv []string
	}{
		{nat, []string{"ip", "link", "set", port, "name", "lan0"}},
		{nat, []string{"ip", "addr", "add", gw.String() + "/24", "dev", "lan0"}},
		{nat, []string{"ip", "link", "set", "lan0", "up"}},
		{nat, []string{"ip", "addr", "add", public.String() + "/" + bits, "dev", "wan0"}},
		{nat, []string{"ip", "link", "set", "wan0", "up"}},
		{nat, []string{"sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"}},
		{c.TB.NS, []string{"ip", "addr", "del", c.IP().String() + "/" + bits, "dev", c.TB.Uplink}},
		{c.TB.NS, []string{"ip", "addr", "add", private.String() + "/24", "dev", c.TB.Uplink}},
		{c.TB.NS, []string{"ip", "route", "add", c.TB.Prefix.String(), "via", gw.String()}},
	} {
		if out, err := testbed.Run(5*time.Second, step.ns, step.argv...); err != nil {
			t.Fatalf("%s: %v: %v %s", step.ns, step.argv, err, out)
		}
	}
	natRules := fmt.Sprintf(`table ip natbox {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "wan0" ip daddr %[1]s udp dport 50103 counter dnat to %[2]s:50103
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" ip saddr 198.19.0.0/24 counter snat to %[1]s
	}
}
`, public, private)
	cmd := testbed.Command(ctx, nat, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(natRules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nat box rules: %v %s", err, out)
	}
	// c's netmanager again, on its private address, with its public one.
	if err := d.RestartNetManagerWith(ctx, c, "--node-ip", private.String(),
		"--public-ip", public.String(), "--public-port", "50103"); err != nil {
		t.Fatal(err)
	}

	svc, err := d.DeployService(ctx, "natweb", "nat.ns.web.default")
	if err != nil {
		t.Fatal(err)
	}
	onC, err := d.DeployInstance(ctx, "natweb", 0, c)
	if err != nil {
		t.Fatal(err)
	}
	onA, err := d.DeployInstance(ctx, "natweb", 1, a)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []*deploy.Instance{onC, onA} {
		if err := d.StartEcho(ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	cliA, err := d.AddClient(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	cliC, err := d.AddClient(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	// Root places c's instance at the public address.
	e, err := d.ServiceEntry(ctx, svc.Job)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range e.InstanceList {
		if in.InstanceNumber == 0 && (in.HostIP != public || in.HostPort != 50103) {
			t.Errorf("instance on c placed at %v:%d, want %v:50103", in.HostIP, in.HostPort, public)
		}
	}
	// Both ways, both protocols, each by instance IP (the instance behind
	// the NAT, and the one in front of it).
	for _, tc := range []struct {
		from, to *deploy.Instance
	}{{cliA, onC}, {cliC, onA}} {
		for _, proto := range []string{"udp", "tcp"} {
			r, err := d.Ask(ctx, tc.from, proto, netipAddrPort(tc.to.IP.V4, proto), 4, 3, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.Answered != r.Sent || r.Sent == 0 || r.ByTag()[tc.to.Tag()] != r.Sent {
				t.Errorf("%s %s → %s (%s): %d of %d answered, by %v", proto, tc.from.Tag(), tc.to.Tag(), tc.to.IP.V4, r.Answered, r.Sent, r.ByTag())
			}
		}
	}
	// Through the service IP from a: the round robin reaches c's instance too.
	r, err := d.Ask(ctx, cliA, "udp", netipAddrPort(svc.RR().V4, "udp"), 8, 2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Answered != r.Sent || r.ByTag()[onC.Tag()] == 0 || r.ByTag()[onA.Tag()] == 0 {
		t.Errorf("RR %s from a: %d of %d answered, by %v; want both instances", svc.RR().V4, r.Answered, r.Sent, r.ByTag())
	}
	// The traffic went through the NAT box's port forward and masquerade.
	out, err := testbed.Run(5*time.Second, nat, "nft", "list", "table", "ip", "natbox")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "counter packets 0 ") {
		t.Errorf("a NAT rule saw no packet:\n%s", out)
	}
	// a's data plane accepts the public address as a peer; c's private
	// address never reached the underlay.
	st, err := d.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.Dataplane.Counters["bpf_uplink_not_peer"]; n != 0 {
		t.Errorf("a dropped %d tunnel packets from non-peers", n)
	}
}

// mustNS opens named namespace name for the test (closed when it ends).
func mustNS(t *testing.T, name string) int {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return int(h)
}
