package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/pkttest"
	"github.com/oakwire/oakwire/internal/testbed"
)

// Ports of the test's own listeners (owload's echo servers use 7000/7001).
const (
	isoSinkPort   = 9000 // UDP sink in the victim containers
	isoHostPort   = 9002 // UDP sink on the underlay host
	isoEchoPort   = 9003 // UDP echo on the underlay host (the "Internet")
	isoMappedPort = 8080 // node b's port mapped to web/0's tcpecho
)

// TestIsolation is issue 13's acceptance test (SPEC §7.2 isolation, the
// threat model in docs/design.md): on a live three-node deployment with a
// host on the underlay that is in no cluster, every attack the issue found
// is tried again and must fail and be counted, while every legitimate path
// still works. The note's figures come from its last log line.
func TestIsolation(t *testing.T) {
	for _, offload := range []string{"on", "off"} {
		t.Run("offload="+offload, func(t *testing.T) { testIsolation(t, offload) })
	}
}

func testIsolation(t *testing.T, offload string) {
	d, err := up(t, deploy.Options{Dataplane: "xdp", Offload: offload})
	if err != nil {
		skipIfNoXDP(t, err)
		t.Fatal(err)
	}
	ctx := context.Background()
	a, b, c := d.Node("a"), d.Node("b"), d.Node("c")
	web, err := d.DeployService(ctx, "web1", "iso.ns.web.default")
	if err != nil {
		t.Fatal(err)
	}
	w0, err := d.DeployInstanceMapped(ctx, "web1", 0, b, fmt.Sprintf("%d:%d/tcp", isoMappedPort, deploy.EchoTCPPort))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.StartEcho(ctx, w0); err != nil {
		t.Fatal(err)
	}
	cl, err := d.AddClient(ctx, a) // the victim on a
	if err != nil {
		t.Fatal(err)
	}
	evil, err := d.AddClient(ctx, a) // the attacker on a
	if err != nil {
		t.Fatal(err)
	}
	clb, err := d.AddClient(ctx, b) // a neighbour of web/0 on b
	if err != nil {
		t.Fatal(err)
	}
	x, err := d.Bed.AddNode("x") // an underlay host in no cluster
	if err != nil {
		t.Fatal(err)
	}
	waitAnswered(t, d, cl, "udp", web.RR().V4, 5*time.Second)

	var tried, blocked, legit int
	attack := func(name string, ok bool, why string) {
		t.Helper()
		tried++
		if ok {
			blocked++
			return
		}
		t.Errorf("attack %q was not stopped: %s", name, why)
	}
	works := func(name string, err error) {
		t.Helper()
		legit++
		if err != nil {
			t.Errorf("legitimate path %q: %v", name, err)
		}
	}
	sinkW0 := udpListen(t, w0.NS, netip.AddrPortFrom(netip.IPv6Unspecified(), isoSinkPort))
	sinkCl := udpListen(t, cl.NS, netip.AddrPortFrom(netip.IPv6Unspecified(), isoSinkPort))
	sinkX := udpListen(t, x.NS, netip.AddrPortFrom(netip.IPv6Unspecified(), isoHostPort))
	const tunnelPort = 50103

	// 1. A container sends hand-built IP packets as UDP payload to a tunnel
	// port: a peer's, and its own node's. Inner sources: the service IP,
	// another tenant's instance IP.
	for _, inner := range []netip.Addr{web.RR().V4, clb.IP.V4} {
		pkt := pkttest.UDP(inner, w0.NSIP.V4, 7777, isoSinkPort, []byte("injected"))
		for _, to := range []*deploy.Node{b, a} {
			before := drops(t, d, a, "to_tunnel")
			sendUDP(t, evil.NS, netip.AddrPortFrom(to.IP(), tunnelPort), pkt, 5)
			got := received(sinkW0, 300*time.Millisecond)
			after := drops(t, d, a, "to_tunnel")
			attack(fmt.Sprintf("container → %s's tunnel port, inner source %v", to.Name, inner),
				got == 0 && after-before == 5, fmt.Sprintf("victim got %d, to_tunnel drops moved %d", got, after-before))
		}
	}

	// 2. The underlay host routes the platform ranges via node b and talks
	// to namespace IPs, the gateway and a service IP directly.
	routeVia(t, x.NS, b)
	nftBefore := nftDrops(t, b.TB.NS, "underlay to platform")
	for _, dst := range []netip.Addr{w0.NSIP.V4, w0.NSIP.V6} {
		sendUDP(t, x.NS, netip.AddrPortFrom(dst, isoSinkPort), []byte("from the underlay"), 3)
		n := received(sinkW0, 300*time.Millisecond)
		attack(fmt.Sprintf("underlay UDP → nsIP %v", dst), n == 0, fmt.Sprintf("container got %d datagrams", n))
		err := testbed.Do(x.NS, func() error {
			conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(dst, deploy.EchoTCPPort).String(), time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
		attack(fmt.Sprintf("underlay TCP → nsIP %v", dst), err != nil, "connected")
		perr := testbed.Ping(x.NS, dst, 2, 300*time.Millisecond)
		attack(fmt.Sprintf("underlay ping → nsIP %v", dst), perr != nil, "answered")
	}
	gw, _ := netip.ParseAddr(mustStatus(t, d, b).Gateway)
	attack("underlay ping → b's container gateway", testbed.Ping(x.NS, gw, 2, 300*time.Millisecond) != nil, "answered")
	for _, proto := range []string{"udp", "tcp"} {
		r := askIn(t, d, x.NS, proto, netipAddrPort(web.RR().V4, proto), 300*time.Millisecond)
		attack("underlay "+proto+" → service IP", r.Answered == 0, fmt.Sprintf("%d answered", r.Answered))
	}
	if n := nftDrops(t, b.TB.NS, "underlay to platform") - nftBefore; n == 0 {
		t.Errorf("nft drop counters on b did not move for the underlay attacks")
	}

	// 3. Forged sources from a container: another container's nsIP towards
	// a same-node container, a node's and a peer's IP onto the underlay,
	// v4 and v6.
	spoofBefore := drops(t, d, a, "spoofed")
	for _, f := range []struct {
		name     string
		src, dst netip.Addr
		port     uint16
		sink     *net.UDPConn
	}{
		{"nsIP of web/0 → same-node container", w0.NSIP.V4, cl.NSIP.V4, isoSinkPort, sinkCl},
		{"v6 nsIP of the victim → same-node container", cl.NSIP.V6, cl.NSIP.V6, isoSinkPort, sinkCl},
		{"own node's IP → underlay host", a.IP(), x.IP, isoHostPort, sinkX},
		{"peer node's IP → underlay host", b.IP(), x.IP, isoHostPort, sinkX},
		{"instance IP of the victim → same-node container", cl.IP.V4, cl.NSIP.V4, isoSinkPort, sinkCl},
	} {
		rawSend(t, evil.NS, pkttest.UDP(f.src, f.dst, 4444, f.port, []byte("forged")), 3)
		n := received(f.sink, 300*time.Millisecond)
		attack("forged source: "+f.name, n == 0, fmt.Sprintf("received %d", n))
	}
	if n := drops(t, d, a, "spoofed") - spoofBefore; n != 15 {
		t.Errorf("spoofed drops moved by %d, want 15 (5 kinds × 3)", n)
	}

	// 4. Tunnel datagrams from a host in no cluster, and from a real peer
	// (node c) whose inner source the table does not place on it.
	notPeer := drops(t, d, b, "not_peer")
	sendUDP(t, x.NS, netip.AddrPortFrom(b.IP(), tunnelPort), pkttest.UDP(cl.IP.V4, w0.NSIP.V4, 7777, isoSinkPort, []byte("stranger")), 3)
	n := received(sinkW0, 300*time.Millisecond)
	attack("tunnel datagram from a non-node host", n == 0 && drops(t, d, b, "not_peer")-notPeer == 3,
		fmt.Sprintf("victim got %d", n))
	wrong := counter(t, d, b, "drop_wrong-source")
	for _, inner := range []netip.Addr{web.RR().V4, cl.IP.V4, clb.IP.V4} {
		sendUDP(t, c.TB.NS, netip.AddrPortFrom(b.IP(), tunnelPort), pkttest.UDP(inner, w0.NSIP.V4, 7777, isoSinkPort, []byte("peer lies")), 1)
		n := received(sinkW0, 300*time.Millisecond)
		attack(fmt.Sprintf("peer c sends inner source %v", inner), n == 0, fmt.Sprintf("victim got %d", n))
	}
	if n := counter(t, d, b, "drop_wrong-source") - wrong; n != 3 {
		t.Errorf("drop_wrong-source on b moved by %d, want 3", n)
	}

	// Legitimate paths, after all of that.
	for _, ip := range []netip.Addr{web.RR().V4, web.RR().V6, w0.IP.V4} {
		for _, proto := range []string{"udp", "tcp"} {
			r := ask(t, d, cl, proto, ip, 2, 2, time.Second)
			var err error
			if r.Answered != r.Sent || r.ByTag()[w0.Tag()] != r.Sent {
				err = fmt.Errorf("%d/%d answered by %v (%s)", r.Answered, r.Sent, r.ByTag(), r.Failures())
			}
			works(fmt.Sprintf("%s to %v", proto, ip), err)
		}
	}
	works("container → the Internet (masquerade)", echoThroughMasquerade(t, cl.NS, x, a.IP()))
	r := askIn(t, d, x.NS, "tcp", netip.AddrPortFrom(b.IP(), isoMappedPort), 3*time.Second)
	var merr error
	if r.Answered != r.Sent || r.ByTag()[w0.Tag()] != r.Sent {
		merr = fmt.Errorf("%d/%d answered, by %v (%s)", r.Answered, r.Sent, r.ByTag(), r.Failures())
	}
	works("port mapping from the underlay", merr)
	for _, proto := range []string{"udp", "tcp"} {
		r := ask(t, d, clb, proto, w0.NSIP.V4, 2, 2, time.Second)
		var err error
		if r.Answered != r.Sent {
			err = fmt.Errorf("%d/%d answered (%s)", r.Answered, r.Sent, r.Failures())
		}
		works(proto+" to a same-node container's nsIP", err)
	}
	t.Logf("isolation: %d attacks tried, %d blocked and counted; %d legitimate paths checked", tried, blocked, legit)
}

// udpListen opens a UDP socket bound to ap inside namespace ns; it stays
// in ns and is closed when the test ends.
func udpListen(t *testing.T, ns string, ap netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := testbed.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// received counts the datagrams c gets until it is quiet for wait.
func received(c *net.UDPConn, wait time.Duration) int {
	n := 0
	buf := make([]byte, 2048)
	for range 1000 {
		_ = c.SetReadDeadline(time.Now().Add(wait))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			return n
		}
		n++
	}
	return n
}

// sendUDP sends payload count times from a fresh UDP socket in ns.
func sendUDP(t *testing.T, ns string, dst netip.AddrPort, payload []byte, count int) {
	t.Helper()
	err := testbed.Do(ns, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		for range count {
			_, _ = c.Write(payload) // an unreachable answer may fail a later write
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rawSend sends the IP packet pkt (its own header, any source) count times
// from a raw socket in ns.
func rawSend(t *testing.T, ns string, pkt []byte, count int) {
	t.Helper()
	err := testbed.Do(ns, func() error {
		var fd int
		var err error
		var to unix.Sockaddr
		if pkt[0]>>4 == 4 {
			fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW) // IP_HDRINCL implied
			to = &unix.SockaddrInet4{Addr: [4]byte(pkt[16:20])}
		} else {
			fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_RAW)
			if err == nil {
				err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1)
			}
			to = &unix.SockaddrInet6{Addr: [16]byte(pkt[24:40])}
		}
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		for range count {
			if err := unix.Sendto(fd, pkt, 0, to); err != nil {
				return fmt.Errorf("raw send: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// routeVia makes the underlay host in ns route the platform ranges via
// node n, as an attacker next to the nodes would.
func routeVia(t *testing.T, ns string, n *deploy.Node) {
	t.Helper()
	err := testbed.Handle(ns, func(h *netlink.Handle) error {
		for _, r := range []struct {
			dst string
			gw  netip.Addr
		}{{"10.16.0.0/12", n.IP()}, {"fc00::/7", n.TB.IP6}} {
			p := netip.MustParsePrefix(r.dst)
			dst := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
			if err := h.RouteReplace(&netlink.Route{Dst: dst, Gw: r.gw.AsSlice()}); err != nil {
				return fmt.Errorf("route %s via %v: %w", p, r.gw, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// counter reads one data-plane counter of node n's /status.
func counter(t *testing.T, d *deploy.Deployment, n *deploy.Node, name string) uint64 {
	t.Helper()
	return mustStatus(t, d, n).Dataplane.Counters[name]
}

// drops reads a drop counter of the port or uplink program, whichever
// data-path tier the node runs: the XDP steering (bpf_port_*,
// bpf_uplink_*) or the kernel tier (tier_*).
func drops(t *testing.T, d *deploy.Deployment, n *deploy.Node, what string) uint64 {
	t.Helper()
	c := mustStatus(t, d, n).Dataplane.Counters
	return c["bpf_port_"+what] + c["bpf_uplink_"+what] + c["tier_"+what]
}

func mustStatus(t *testing.T, d *deploy.Deployment, n *deploy.Node) *deploy.NodeStatus {
	t.Helper()
	st, err := d.Status(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

var nftCounterRE = regexp.MustCompile(`counter packets (\d+) bytes \d+ drop comment "([^"]*)"`)

// nftDrops sums the packet counters of the oakwire table's drop rules
// with comment in namespace ns.
func nftDrops(t *testing.T, ns, comment string) uint64 {
	t.Helper()
	out, err := testbed.Run(5*time.Second, ns, "nft", "list", "table", "inet", "oakwire")
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	var sum uint64
	for _, m := range nftCounterRE.FindAllStringSubmatch(string(out), -1) {
		if m[2] == comment {
			v, _ := strconv.ParseUint(m[1], 10, 64)
			sum += v
		}
	}
	return sum
}

// echoThroughMasquerade runs a UDP echo on the underlay host x and asks it
// from the container in ns: the answer must come back, and x must have seen
// the node's address (masquerade), never a namespace IP.
func echoThroughMasquerade(t *testing.T, ns string, x *testbed.Node, nodeIP netip.Addr) error {
	t.Helper()
	srv := udpListen(t, x.NS, netip.AddrPortFrom(netip.IPv6Unspecified(), isoEchoPort))
	seen := make(chan netip.AddrPort, 1)
	go func() {
		buf := make([]byte, 512)
		_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			close(seen)
			return
		}
		_, _ = srv.WriteToUDPAddrPort(buf[:n], from)
		seen <- from
	}()
	var reply string
	err := testbed.Do(ns, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(x.IP, isoEchoPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		reply = string(buf[:n])
		return err
	})
	if err != nil {
		return err
	}
	from, ok := <-seen
	if !ok || reply != "ping" || from.Addr().Unmap() != nodeIP {
		return fmt.Errorf("reply %q; the host saw %v, want the node's %v", reply, from, nodeIP)
	}
	return nil
}

// askIn runs owload's udpask/tcpask (2 flows of 2 requests) in namespace
// ns, which need not be a container of the deployment, against dst.
func askIn(t *testing.T, d *deploy.Deployment, ns, proto string, dst netip.AddrPort, timeout time.Duration) *deploy.AskResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*timeout+10*time.Second)
	defer cancel()
	out, err := testbed.Command(ctx, ns, d.Bin("owload"), proto+"ask", "--addr", dst.String(),
		"--flows", "2", "--per-flow", "2", "--timeout", timeout.String(), "--max-fail", "2").Output()
	if err != nil {
		t.Fatalf("%sask in %s: %v", proto, ns, err)
	}
	var r deploy.AskResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%sask: %v: %q", proto, err, out)
	}
	return &r
}
