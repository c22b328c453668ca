package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/testbed"
)

// Ports of TestRestartKeepsFlows's own servers in the instances.
const (
	restartTCPPort = 9100 // byte echo
	restartUDPPort = 9101 // answers with the instance's name
)

// TestRestartKeepsFlows: the client node's netmanager is restarted in the
// middle of an established TCP transfer through a service IP and of a UDP
// flow to it. The TCP connection completes with every byte intact, and
// the UDP flow keeps its instance. With the kernel tier the decided flows
// go on while the daemon is down (pinned programs and flows), after a
// SIGTERM or a crash (SIGKILL); without it a graceful stop saves the flows
// and the next start takes them back (SPEC §7.2).
func TestRestartKeepsFlows(t *testing.T) {
	for _, c := range []struct {
		offload string
		sig     syscall.Signal
	}{{"on", syscall.SIGTERM}, {"on", syscall.SIGKILL}, {"off", syscall.SIGTERM}} {
		t.Run(fmt.Sprintf("offload=%s/%v", c.offload, c.sig), func(t *testing.T) { testRestartKeepsFlows(t, c.offload, c.sig) })
	}
}

func testRestartKeepsFlows(t *testing.T, offload string, sig syscall.Signal) {
	d, err := up(t, deploy.Options{Dataplane: "xdp", Offload: offload})
	if err != nil {
		skipIfNoXDP(t, err)
		t.Fatal(err)
	}
	ctx := context.Background()
	a, b, c := d.Node("a"), d.Node("b"), d.Node("c")
	web, err := d.DeployService(ctx, "web1", "rs.ns.web.default")
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []*deploy.Node{b, c} {
		in, err := d.DeployInstance(ctx, "web1", i, n)
		if err != nil {
			t.Fatal(err)
		}
		serveTCPEcho(t, in.NS, restartTCPPort)
		serveUDPName(t, in.NS, restartUDPPort, in.Tag())
	}
	cl, err := d.AddClient(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	rr := web.RR().V4

	// A first flow settles the resolution and moves round robin on: the
	// measured flows do not get the instance a daemon that forgot them
	// would give them first (else losing them would go unnoticed).
	warm := startUDPFlow(t, cl.NS, netip.AddrPortFrom(rr, restartUDPPort), 20*time.Millisecond)
	if !warm.waitAnswers(1, 10*time.Second) {
		t.Fatalf("UDP: no answer to the first flow (%s)", warm.summary())
	}
	warm.stop()
	// The UDP flow: one socket, a request every 20 ms, each answer names
	// the instance.
	udp := startUDPFlow(t, cl.NS, netip.AddrPortFrom(rr, restartUDPPort), 20*time.Millisecond)
	if !udp.waitAnswers(5, 10*time.Second) {
		t.Fatalf("UDP flow: no answers before the restart (%s)", udp.summary())
	}
	// The TCP transfer: 24 MB out and echoed back, paced over ~6 s.
	tcpDone := make(chan error, 1)
	conn := dialIn(t, cl.NS, netip.AddrPortFrom(rr, restartTCPPort))
	go func() { tcpDone <- echoTransfer(conn, 24<<20, 6*time.Second) }()

	time.Sleep(1500 * time.Millisecond)
	restartAt := time.Now()
	if err := d.RestartNetManagerSig(ctx, a, sig); err != nil {
		t.Fatal(err)
	}
	t.Logf("netmanager on a restarted (%v) in %v", sig, time.Since(restartAt).Round(time.Millisecond))
	select {
	case err := <-tcpDone:
		if err != nil {
			t.Errorf("TCP transfer across the restart: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Error("TCP transfer across the restart: not done after 60 s")
	}
	// Answers after the restart, from the same instance as before it.
	if !udp.waitAnswersSince(restartAt, 5, 15*time.Second) {
		t.Errorf("UDP flow: no answers after the restart (%s)", udp.summary())
	}
	udp.stop()
	if tags := udp.tags(); len(tags) != 1 {
		t.Errorf("UDP flow answered by %v: it did not keep its instance", tags)
	}
	if wt, ut := warm.tags(), udp.tags(); len(wt) == 1 && len(ut) == 1 && fmt.Sprint(wt) == fmt.Sprint(ut) {
		t.Errorf("the first flow and the measured one both went to %v: round robin did not move on", wt)
	}
	t.Logf("UDP flow: %s", udp.summary())
	if st := mustStatus(t, d, a); offload == "on" && st.Dataplane.Counters["tier_flows"] == 0 {
		t.Errorf("no kernel-tier flows on a after the restart: %v", st.Dataplane.Counters)
	}
}

// serveTCPEcho echoes every byte of every connection to port in ns.
func serveTCPEcho(t *testing.T, ns string, port int) {
	t.Helper()
	var ln net.Listener
	if err := testbed.Do(ns, func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// serveUDPName answers every datagram to port in ns with name.
func serveUDPName(t *testing.T, ns string, port int, name string) {
	t.Helper()
	c := udpListen(t, ns, netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(port)))
	go func() {
		buf := make([]byte, 512)
		for {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort([]byte(name), from)
		}
	}()
}

func dialIn(t *testing.T, ns string, dst netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	err := testbed.Do(ns, func() (err error) { c, err = net.DialTimeout("tcp", dst.String(), 5*time.Second); return err })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echoTransfer writes n pseudo-random bytes to c, paced over about d, and
// reads them back, comparing every byte.
func echoTransfer(c net.Conn, n int, d time.Duration) error {
	data := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	_ = c.SetDeadline(time.Now().Add(90 * time.Second))
	werr := make(chan error, 1)
	go func() {
		const chunk = 64 << 10
		start := time.Now()
		for off := 0; off < n; off += chunk {
			if _, err := c.Write(data[off:min(off+chunk, n)]); err != nil {
				werr <- fmt.Errorf("write at %d: %w", off, err)
				return
			}
			if due := time.Duration(float64(d) * float64(off) / float64(n)); time.Since(start) < due {
				time.Sleep(due - time.Since(start))
			}
		}
		werr <- c.(*net.TCPConn).CloseWrite()
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if err := <-werr; err != nil {
		return err
	}
	if i := firstDiff(got, data); i >= 0 {
		return fmt.Errorf("byte %d of %d differs", i, n)
	}
	return nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// udpFlow is one UDP socket asking a service IP at a steady pace.
type udpFlow struct {
	mu      sync.Mutex
	sent    int
	answers []udpAnswer
	done    chan struct{}
	stopped chan struct{}
}

type udpAnswer struct {
	at  time.Time
	tag string
}

func startUDPFlow(t *testing.T, ns string, dst netip.AddrPort, every time.Duration) *udpFlow {
	t.Helper()
	var c *net.UDPConn
	if err := testbed.Do(ns, func() (err error) { c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst)); return err }); err != nil {
		t.Fatal(err)
	}
	f := &udpFlow{done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		buf := make([]byte, 512)
		for {
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			select {
			case <-f.done:
				return
			default:
			}
			if err == nil {
				f.mu.Lock()
				f.answers = append(f.answers, udpAnswer{time.Now(), string(buf[:n])})
				f.mu.Unlock()
			}
		}
	}()
	go func() {
		defer close(f.stopped)
		defer c.Close()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for range 30_000 { // bounded: 10 min at 20 ms
			select {
			case <-f.done:
				return
			case <-tick.C:
			}
			_, _ = c.Write([]byte("which instance?"))
			f.mu.Lock()
			f.sent++
			f.mu.Unlock()
		}
	}()
	t.Cleanup(f.stop)
	return f
}

func (f *udpFlow) stop() {
	select {
	case <-f.done:
	default:
		close(f.done)
	}
	<-f.stopped
}

func (f *udpFlow) waitAnswers(n int, within time.Duration) bool {
	return f.waitAnswersSince(time.Time{}, n, within)
}

func (f *udpFlow) waitAnswersSince(since time.Time, n int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		k := 0
		for _, a := range f.answers {
			if a.at.After(since) {
				k++
			}
		}
		f.mu.Unlock()
		if k >= n {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func (f *udpFlow) tags() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[string]int{}
	for _, a := range f.answers {
		m[a.tag]++
	}
	return m
}

func (f *udpFlow) summary() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("%d sent, %d answered", f.sent, len(f.answers))
}
