//go:build linux

package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/internal/testbed"
)

// TestTierUnansweredTCP: a TCP flow no reply came back on idles out after
// TCPSynIdle in both tiers, not after TCPIdle (issue 13 item 5: a
// container's SYNs must not hold flows for 10 minutes). The client's SYNs
// to a service whose server drops them leave the kernel tier and the
// worker pool, counted as flows_expired_unanswered; an answered connection,
// idle as long, stays in the kernel tier.
func TestTierUnansweredTCP(t *testing.T) {
	tp := newTopo(t)
	containerOffloads(t, tp)
	spa, spb := tp.spec(tp.a, 1, tp.client, tp.local), tp.spec(tp.b, 1, tp.server)
	spa.Offload, spb.Offload = true, true
	spa.Flows = fastpath.FlowConfig{TCPSynIdle: 2 * time.Second}
	ea := tp.startEngine(t, tp.a, spa)
	tp.startEngine(t, tp.b, spb)
	const openPort, dropPort = 8301, 8302
	if out, err := testbed.Run(5*time.Second, tp.server.NS, "nft",
		fmt.Sprintf("add table inet synidle; add chain inet synidle in { type filter hook input priority 0; }; add rule inet synidle in tcp dport %d drop", dropPort)); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}

	// The answered connection: open, one exchange, then idle.
	ln := listenIn(t, tp.server.NS, func() (net.Listener, error) { return net.Listen("tcp", fmt.Sprintf(":%d", openPort)) })
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 16)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	var conn net.Conn
	err := testbed.Do(tp.client.NS, func() (err error) {
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(svcRemote4, openPort).String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(make([]byte, 16)); err != nil {
		t.Fatal(err)
	}

	// The unanswered one: a SYN and its retransmissions, then nothing.
	_ = testbed.Do(tp.client.NS, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(svcRemote4, dropPort).String(), 3500*time.Millisecond)
		if err == nil {
			c.Close()
			return fmt.Errorf("connected through the drop rule")
		}
		return nil
	})
	find := func(port uint16) (FlowInfo, bool) {
		for _, f := range ea.flows(t) {
			if !f.Ingress && f.Dst == netip.AddrPortFrom(svcRemote4, port) {
				return f, true
			}
		}
		return FlowInfo{}, false
	}
	syn, ok := find(dropPort)
	if !ok {
		t.Fatal("no flow for the SYNs")
	}
	t.Logf("SYN-only flow after the client gave up: kernel %v, %d packets in the kernel", syn.Kernel, syn.Packets)
	if !syn.Kernel {
		t.Errorf("the SYN-only flow never reached the kernel tier: %+v", syn)
	}
	// Bounded wait: a sweep at most every 250 ms after TCPSynIdle; 30 s is
	// far beyond it and far below TCPIdle (10 min).
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, present := find(dropPort)
		unanswered := ea.stats(t).Counters["flows_expired_unanswered"]
		if !present && unanswered > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SYN-only flow still present %v, flows_expired_unanswered %d, 30 s after the client gave up", present, unanswered)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if f, ok := find(openPort); !ok || !f.Kernel {
		t.Errorf("the answered connection, idle as long: present %v, %+v; want it still in the kernel tier", ok, f)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(make([]byte, 16)); err != nil {
		t.Errorf("the answered connection after the idle time: %v", err)
	}
}
