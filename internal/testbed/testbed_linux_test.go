package testbed

import (
	"bytes"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/oakwire/oakwire/internal/testenv"
)

func mp(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// newT is bedtest.New for this package's own tests, which cannot import
// bedtest (it imports testbed).
func newT(t *testing.T, opts ...Options) *Bed {
	t.Helper()
	testenv.RequireRoot(t)
	b, err := New(t.Name(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("testbed close: %v", err)
		}
	})
	return b
}

// twoNodes builds nodes a, b, each with one container whose gateway address
// sits on the host-side veth, and routes each node's container subnet to
// the other over the underlay (a plain routed cluster, no overlay).
func twoNodes(t *testing.T, opts Options) (*Bed, [2]*Node, [2]*Container) {
	t.Helper()
	b := newT(t, opts)
	var nodes [2]*Node
	var ctrs [2]*Container
	subnets := []netip.Prefix{mp("10.18.0.0/26"), mp("10.18.0.64/26")}
	subnets6 := []netip.Prefix{mp("fc00::/120"), mp("fc00::100/120")}
	for i, name := range []string{"a", "b"} {
		n, err := b.AddNode(name)
		if err != nil {
			t.Fatal(err)
		}
		gw4 := subnets[i].Addr().Next()
		gw6 := subnets6[i].Addr().Next()
		c, err := n.AddContainer("1", ContainerConfig{
			V4: netip.PrefixFrom(gw4.Next(), 26), V6: netip.PrefixFrom(gw6.Next(), 120),
			GW4: gw4, GW6: gw6,
			HostAddrs: []netip.Prefix{netip.PrefixFrom(gw4, 26), netip.PrefixFrom(gw6, 120)},
		})
		if err != nil {
			t.Fatal(err)
		}
		nodes[i], ctrs[i] = n, c
	}
	for i, n := range nodes {
		other := nodes[1-i]
		err := Handle(n.NS, func(h *netlink.Handle) error {
			for _, r := range []struct {
				dst netip.Prefix
				via netip.Addr
			}{{subnets[1-i], other.IP}, {subnets6[1-i], other.IP6}} {
				err := h.RouteAdd(&netlink.Route{Dst: prefixToIPNet(r.dst), Gw: r.via.AsSlice()})
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
			if err := Sysctl(n.NS, k, "1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	return b, nodes, ctrs
}

func ping(t *testing.T, ns string, dst netip.Addr) {
	t.Helper()
	// Bounded: at most 3 echoes, 1 s each.
	if err := Ping(ns, dst, 3, time.Second); err != nil {
		t.Error(err)
	}
}

func TestTwoNodesTwoContainers(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		name string
		opts Options
	}{{"bridge", Options{}}, {"direct", Options{Underlay: Direct}}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, nodes, ctrs := twoNodes(t, tc.opts)
			prefix := b.Prefix()

			// Underlay: node to node, both families.
			ping(t, nodes[0].NS, nodes[1].IP)
			ping(t, nodes[1].NS, nodes[0].IP6)
			// Container to its gateway, and across nodes (routed).
			ping(t, ctrs[0].NS, ctrs[0].V4.Addr().Prev())
			ping(t, ctrs[0].NS, ctrs[1].V4.Addr())
			ping(t, ctrs[1].NS, ctrs[0].V6.Addr())

			udpBetween(t, nodes[0], nodes[1])

			// Namespaces never leak into the root namespace's view.
			rootLinks, err := netlink.LinkList()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range rootLinks {
				if name := l.Attrs().Name; name == "ul0" || name == "c1" || name == "br0" {
					t.Errorf("link %s in the root namespace", name)
				}
			}

			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			assertNoNamespaces(t, prefix)
		})
	}
}

// udpBetween sends a bounded number of datagrams from node a's uplink
// address to node b's and expects at least one to arrive.
func udpBetween(t *testing.T, a, b *Node) {
	t.Helper()
	var srv *net.UDPConn
	err := b.Do(func() (err error) {
		srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: b.IP.AsSlice(), Port: 50103})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var cli *net.UDPConn
	err = a.Do(func() (err error) {
		cli, err = net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	msg := []byte("oakwire testbed")
	buf := make([]byte, 64)
	for i := range 5 { // bounded: 5 tries, 500 ms each
		if _, err := cli.Write(msg); err != nil {
			t.Fatal(err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Logf("try %d: %v", i, err)
			continue
		}
		if !bytes.Equal(buf[:n], msg) || from.Addr() != a.IP {
			t.Fatalf("got %q from %v, want %q from %v", buf[:n], from, msg, a.IP)
		}
		return
	}
	t.Fatal("no UDP datagram arrived")
}

func assertNoNamespaces(t *testing.T, prefix string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix) {
			t.Errorf("namespace left behind: %s", line)
		}
	}
}

func TestDoRestoresNamespace(t *testing.T) {
	t.Parallel()
	b := newT(t)
	n, err := b.AddNode("x")
	if err != nil {
		t.Fatal(err)
	}
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	var inside netns.NsHandle
	if err := n.Do(func() (err error) { inside, err = netns.Get(); return err }); err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if inside.Equal(before) {
		t.Fatal("Do did not enter the node namespace")
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Fatal("Do left the thread in another namespace")
	}
}

func TestPartialFailureCleanup(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	b, err := New("partial", Options{Underlay: Direct})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, name := range []string{"a", "b"} {
		if _, err := b.AddNode(name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.AddNode("c"); err == nil {
		t.Fatal("third node on a direct underlay: want error")
	}
	n := b.Nodes()[0]
	if _, err := n.AddContainer("x", ContainerConfig{HostIf: "this-name-is-too-long"}); err == nil {
		t.Fatal("long host interface name: want error")
	}
	// Host veth name clash: the second container's namespace exists, its
	// veth cannot be made; Close must still remove everything.
	if _, err := n.AddContainer("y", ContainerConfig{HostIf: "dup"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.AddContainer("z", ContainerConfig{HostIf: "dup"}); err == nil {
		t.Fatal("duplicate host interface: want error")
	}
	testenv.RequireBinary(t, "ip")
	cmd := Command(t.Context(), n.NS, "sleep", "30")
	if err := b.Start(cmd); err != nil {
		t.Fatal(err)
	}
	prefix := b.Prefix()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if cmd.ProcessState == nil {
		t.Fatal("process not reaped")
	}
	assertNoNamespaces(t, prefix)
}
