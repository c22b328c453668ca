//go:build linux

package xsk

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/internal/pkttest"
	"github.com/oakwire/oakwire/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// bed is two network namespaces joined by veth pairs, all named with one
// random suffix: A (the "node", where AF_XDP sockets live) and B (the peer
// that sends and receives ordinary UDP). Only 198.18.0.0/15 addresses; no
// routes out; nothing is created in the root namespace. Everything is
// removed by exact name in t.Cleanup, also when the test fails.
type bed struct {
	nsA, nsB     netns.NsHandle
	nameA, nameB string
	pairs        []vethPair
}

type vethPair struct {
	nameA, nameB string
	idxA, idxB   int
	macA, macB   net.HardwareAddr
	ipA, ipB     netip.Addr
}

// inNS runs fn on a fresh OS thread switched into ns. The thread is never
// returned to the runtime (the goroutine exits locked), so no other
// goroutine can run in ns by accident. Sockets and fds fn creates stay in ns.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread dies with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func newBed(tb testing.TB, npairs int) *bed {
	tb.Helper()
	testenv.RequireRoot(tb)
	var rnd [3]byte
	rand.Read(rnd[:])
	suffix := hex.EncodeToString(rnd[:])
	b := &bed{nameA: "owxa" + suffix, nameB: "owxb" + suffix}
	b.nsA, b.nsB = -1, -1
	tb.Cleanup(b.close)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // NewNamed switches this thread; it dies with the goroutine
		var err error
		if b.nsA, err = netns.NewNamed(b.nameA); err != nil {
			errc <- fmt.Errorf("netns %s: %w", b.nameA, err)
			return
		}
		if b.nsB, err = netns.NewNamed(b.nameB); err != nil {
			errc <- fmt.Errorf("netns %s: %w", b.nameB, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	hA, err := netlink.NewHandleAt(b.nsA)
	if err != nil {
		tb.Fatalf("netlink handle %s: %v", b.nameA, err)
	}
	defer hA.Close()
	hB, err := netlink.NewHandleAt(b.nsB)
	if err != nil {
		tb.Fatalf("netlink handle %s: %v", b.nameB, err)
	}
	defer hB.Close()
	for _, h := range []*netlink.Handle{hA, hB} {
		lo, err := h.LinkByName("lo")
		if err == nil {
			err = h.LinkSetUp(lo)
		}
		if err != nil {
			tb.Fatalf("lo up: %v", err)
		}
	}
	for i := range npairs {
		p := vethPair{
			nameA: fmt.Sprintf("owx%s%da", suffix, i),
			nameB: fmt.Sprintf("owx%s%db", suffix, i),
			ipA:   netip.AddrFrom4([4]byte{198, 18, byte(i), 1}),
			ipB:   netip.AddrFrom4([4]byte{198, 18, byte(i), 2}),
		}
		// Created inside A with the peer straight in B: never in the root namespace.
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.nameA, MTU: 1500}, PeerName: p.nameB,
			PeerNamespace: netlink.NsFd(b.nsB)}
		if err := hA.LinkAdd(v); err != nil {
			tb.Fatalf("veth %s: %v", p.nameA, err)
		}
		for _, side := range []struct {
			h    *netlink.Handle
			name string
			ip   netip.Addr
			idx  *int
			mac  *net.HardwareAddr
		}{{hA, p.nameA, p.ipA, &p.idxA, &p.macA}, {hB, p.nameB, p.ipB, &p.idxB, &p.macB}} {
			l, err := side.h.LinkByName(side.name)
			if err != nil {
				tb.Fatalf("link %s: %v", side.name, err)
			}
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: side.ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}
			if err := side.h.AddrAdd(l, addr); err != nil {
				tb.Fatalf("addr %s on %s: %v", side.ip, side.name, err)
			}
			if err := side.h.LinkSetUp(l); err != nil {
				tb.Fatalf("up %s: %v", side.name, err)
			}
			*side.idx = l.Attrs().Index
			*side.mac = l.Attrs().HardwareAddr
		}
		// Static neighbours: no ARP, so the first datagram of a test is not
		// held back by a lost ARP request (1 s retransmit).
		for _, n := range []struct {
			h   *netlink.Handle
			idx int
			ip  netip.Addr
			mac net.HardwareAddr
		}{{hA, p.idxA, p.ipB, p.macB}, {hB, p.idxB, p.ipA, p.macA}} {
			if err := n.h.NeighSet(&netlink.Neigh{LinkIndex: n.idx, Family: netlink.FAMILY_V4,
				State: netlink.NUD_PERMANENT, IP: n.ip.AsSlice(), HardwareAddr: n.mac}); err != nil {
				tb.Fatalf("neighbour %s: %v", n.ip, err)
			}
		}
		b.pairs = append(b.pairs, p)
	}
	return b
}

func (b *bed) close() {
	// Deleting a namespace removes the veths in it once nothing holds it.
	for _, h := range []netns.NsHandle{b.nsA, b.nsB} {
		if h >= 0 {
			h.Close()
		}
	}
	for _, n := range []string{b.nameA, b.nameB} {
		netns.DeleteNamed(n) // exact name; ENOENT when never made
	}
}

// attachSteer loads a minimal XDP program that redirects IPv4 UDP (no IP
// options) to udpPort into an XSKMAP slot keyed by rx_queue_index and passes
// everything else (ARP, other ports), and attaches it to ifindex in ns with a
// bpf_link. Built from asm so this test does not depend on package bpfprog.
func attachSteer(tb testing.TB, ns netns.NsHandle, ifindex int, udpPort uint16) *ebpf.Map {
	tb.Helper()
	xsks, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: 4})
	if err != nil {
		tb.Fatalf("xskmap: %v", err)
	}
	tb.Cleanup(func() { xsks.Close() })
	var be [2]byte
	binary.BigEndian.PutUint16(be[:], udpPort)
	portLE := int32(binary.LittleEndian.Uint16(be[:])) // how a half-word load sees the wire bytes
	const xdpPass = 2
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // ctx->data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // ctx->data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 42), // eth 14 + ipv4 20 + udp 8
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R5, 0x0008, "pass"), // ETH_P_IP, wire order
		asm.LoadMem(asm.R5, asm.R2, 14, asm.Byte),
		asm.JNE.Imm(asm.R5, 0x45, "pass"), // v4, IHL 5
		asm.LoadMem(asm.R5, asm.R2, 23, asm.Byte),
		asm.JNE.Imm(asm.R5, 17, "pass"), // UDP
		asm.LoadMem(asm.R5, asm.R2, 36, asm.Half),
		asm.JNE.Imm(asm.R5, portLE, "pass"),
		asm.LoadMapPtr(asm.R1, xsks.FD()),
		asm.LoadMem(asm.R2, asm.R6, 16, asm.Word), // ctx->rx_queue_index
		asm.Mov.Imm(asm.R3, xdpPass),              // no socket in the slot: pass
		asm.FnRedirectMap.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, Instructions: insns, License: "GPL"})
	if err != nil {
		tb.Fatalf("xdp program: %v", err)
	}
	tb.Cleanup(func() { prog.Close() })
	var l link.Link
	if err := inNS(ns, func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex})
		return err
	}); err != nil {
		tb.Fatalf("attach xdp to ifindex %d: %v", ifindex, err)
	}
	tb.Cleanup(func() { l.Close() })
	return xsks
}

// newSocketIn creates a Socket in ns (the ifindex is resolved there).
func newSocketIn(tb testing.TB, ns netns.NsHandle, cfg Config) *Socket {
	tb.Helper()
	var s *Socket
	if err := inNS(ns, func() error {
		var err error
		s, err = NewSocket(cfg)
		return err
	}); err != nil {
		tb.Fatalf("NewSocket %+v: %v", cfg, err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("socket close: %v", err)
		}
	})
	return s
}

// dialUDP makes a connected kernel UDP socket in ns.
func dialUDP(tb testing.TB, ns netns.NsHandle, laddr, raddr netip.AddrPort) *net.UDPConn {
	tb.Helper()
	var c *net.UDPConn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(laddr), net.UDPAddrFromAddrPort(raddr))
		if err == nil {
			err = bigBuffers(c)
		}
		return err
	}); err != nil {
		tb.Fatalf("udp %s->%s: %v", laddr, raddr, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// listenUDP makes a bound kernel UDP socket in ns.
func listenUDP(tb testing.TB, ns netns.NsHandle, laddr netip.AddrPort) *net.UDPConn {
	tb.Helper()
	var c *net.UDPConn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(laddr))
		if err == nil {
			err = bigBuffers(c)
		}
		return err
	}); err != nil {
		tb.Fatalf("listen udp %s: %v", laddr, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// bigBuffers gives c 8 MiB socket buffers past net.core.[rw]mem_max
// (SO_RCVBUFFORCE/SO_SNDBUFFORCE, root only), so bursts are not lost in the
// kernel socket.
func bigBuffers(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
		}
	})
	return errors.Join(err, serr)
}

// Packet helpers for IPv4/UDP over Ethernet without IP options.

// fixUDPChecksum recomputes the UDP checksum of an Ethernet/IPv4/UDP frame
// from scratch (the sender's veth hands us partial checksums).
func fixUDPChecksum(p []byte) {
	ip := p[14:]
	udp := ip[20:]
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	udp[6], udp[7] = 0, 0
	c := fastpath.Checksum(udp[:ulen], fastpath.PseudoHeaderSum(fastpath.ProtoUDP, ip[12:16], ip[16:20], ulen))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
}

// buildUDP writes an Ethernet/IPv4/UDP frame into p and returns its length.
func buildUDP(p []byte, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) int {
	ip := pkttest.UDP(src.Addr(), dst.Addr(), src.Port(), dst.Port(), payload)
	return copy(p, pkttest.Eth([6]byte(dstMAC), [6]byte(srcMAC), ip))
}

// bounce turns a received Ethernet/IPv4/UDP frame around in place: swap
// MACs, addresses and ports, recompute the UDP checksum. It reports false
// for anything else.
func bounce(p []byte) bool {
	if len(p) < 42 || p[12] != 0x08 || p[13] != 0 || p[14] != 0x45 || p[23] != 17 {
		return false
	}
	var tmp [6]byte
	copy(tmp[:], p[0:6])
	copy(p[0:6], p[6:12])
	copy(p[6:12], tmp[:])
	copy(tmp[:4], p[26:30])
	copy(p[26:30], p[30:34])
	copy(p[30:34], tmp[:4])
	copy(tmp[:2], p[34:36])
	copy(p[34:36], p[36:38])
	copy(p[36:38], tmp[:2])
	fixUDPChecksum(p)
	return true
}

// dump logs the namespaces' link, neighbour and SNMP counters (debugging
// aid on failure; needs ip and nstat on PATH, silently partial otherwise).
func (b *bed) dump(tb testing.TB) {
	tb.Helper()
	for _, n := range []string{b.nameA, b.nameB} {
		out, _ := exec.Command("sh", "-c", "ip -n "+n+" -s link; ip -n "+n+" neigh; ip netns exec "+n+
			" nstat -az | grep -v ' 0 ' ; for l in $(ip -n "+n+" -o link | awk -F'[ :@]+' '/owx/{print $2}'); do ip netns exec "+n+" ethtool -S $l | grep -v ': 0$'; done").CombinedOutput()
		tb.Logf("namespace %s:\n%s", n, out)
	}
}
