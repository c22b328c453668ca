//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfprog

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/asavie/xdp"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/internal/testbed/bedtest"
)

var modes = []Mode{ModeGeneric, ModeNative}

// bed makes one node with one container (10.18.0.2/26, gateway 10.18.0.1 on
// the host-side veth so the kernel path answers ARP and local traffic).
func bed(t *testing.T) (*testbed.Node, *testbed.Container) {
	t.Helper()
	b := bedtest.New(t)
	n, err := b.AddNode("n")
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.AddContainer("1", testbed.ContainerConfig{
		V4:        netip.MustParsePrefix("10.18.0.2/26"),
		GW4:       mustAddr("10.18.0.1"),
		HostAddrs: []netip.Prefix{netip.MustParsePrefix("10.18.0.1/26")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, c
}

// xdpState reports the XDP attachment of link name in namespace ns.
func xdpState(t *testing.T, ns, name string) *netlink.LinkXdp {
	t.Helper()
	var x *netlink.LinkXdp
	err := testbed.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		x = l.Attrs().Xdp
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func attached(t *testing.T, ns, name string) bool {
	t.Helper()
	x := xdpState(t, ns, name)
	return x != nil && x.Attached
}

func TestAttach(t *testing.T) {
	t.Parallel()
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			n, c := bed(t)
			o := load(t, Config{})
			var links []link.Link
			err := n.Do(func() error {
				port, err := c.HostIndex()
				if err != nil {
					return err
				}
				up, err := net.InterfaceByName(n.Uplink)
				if err != nil {
					return err
				}
				l1, err := o.AttachPort(port, mode)
				if err != nil {
					return err
				}
				links = append(links, l1)
				l2, err := o.AttachUplink(up.Index, mode)
				if err != nil {
					return err
				}
				links = append(links, l2)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// The pass program goes on the container end (another netns).
			err = c.Do(func() error {
				eth, err := net.InterfaceByName(c.IfName)
				if err != nil {
					return err
				}
				l, err := o.AttachPass(eth.Index, mode)
				if err == nil {
					links = append(links, l)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, where := range [][2]string{{n.NS, c.HostIf}, {n.NS, n.Uplink}, {c.NS, c.IfName}} {
				x := xdpState(t, where[0], where[1])
				if x == nil || !x.Attached || x.ProgId == 0 {
					t.Errorf("%s in %s: not attached: %+v", where[1], where[0], x)
					continue
				}
				wantMode := uint32(1) // XDP_ATTACHED_DRV
				if mode == ModeGeneric {
					wantMode = 2 // XDP_ATTACHED_SKB
				}
				if x.AttachMode != wantMode {
					t.Errorf("%s: attach mode %d, want %d", where[1], x.AttachMode, wantMode)
				}
			}
			for _, l := range links {
				if err := l.Close(); err != nil {
					t.Error(err)
				}
			}
			for _, where := range [][2]string{{n.NS, c.HostIf}, {n.NS, n.Uplink}, {c.NS, c.IfName}} {
				if attached(t, where[0], where[1]) {
					t.Errorf("%s: still attached after link Close", where[1])
				}
			}
		})
	}
}

// childEnv tells the re-executed test binary to act as the attaching child.
const childEnv = "OAKWIRE_BPFPROG_ATTACH_CHILD"

// TestAttachChild is the child half of TestAttachDiesWithProcess: without
// childEnv it does nothing. It attaches xdp_port and xdp_uplink to the
// interfaces named in childEnv ("netns,port,uplink,mode"), reports
// "attached" and waits to be killed (at most 30 s).
func TestAttachChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		return
	}
	parts := strings.Split(spec, ",")
	mode, err := ParseMode(parts[3])
	if err != nil {
		t.Fatal(err)
	}
	o, err := Load(Config{})
	if err != nil {
		t.Fatal(err)
	}
	// Links outlive the thread's visit to the namespace.
	err = testbed.Do(parts[0], func() error {
		for i, name := range parts[1:3] {
			ifc, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			attach := o.AttachPort
			if i == 1 {
				attach = o.AttachUplink
			}
			if _, err := attach(ifc.Index, mode); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("attached")
	time.Sleep(30 * time.Second)
	t.Fatal("not killed within 30 s")
}

// TestAttachDiesWithProcess: programs attached as bpf_links by a process
// that is SIGKILLed are detached by the kernel (SPEC §7.2).
func TestAttachDiesWithProcess(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			n, c := bed(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestAttachChild$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), childEnv+"="+n.NS+","+c.HostIf+","+n.Uplink+","+mode.String())
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Node.Bed.Start(cmd); err != nil {
				t.Fatal(err)
			}
			ready := make(chan error, 1)
			go func() {
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					if sc.Text() == "attached" {
						ready <- nil
						return
					}
				}
				ready <- fmt.Errorf("child ended before attaching: %v", sc.Err())
			}()
			select {
			case err := <-ready:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("child did not attach within 15 s")
			}
			for _, ifn := range []string{c.HostIf, n.Uplink} {
				if !attached(t, n.NS, ifn) {
					t.Fatalf("%s: child's program not attached", ifn)
				}
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			// The last reference to each bpf_link is the dead process's fd;
			// release is prompt but poll briefly (bounded).
			deadline := time.Now().Add(3 * time.Second)
			for _, ifn := range []string{c.HostIf, n.Uplink} {
				for attached(t, n.NS, ifn) {
					if time.Now().After(deadline) {
						t.Fatalf("%s: program still attached after the child was killed", ifn)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
}

// xskOn opens an AF_XDP socket on queue 0 of the host-side veth of c.
func xskOn(t *testing.T, c *testbed.Container) *xdp.Socket {
	t.Helper()
	var s *xdp.Socket
	err := c.Node.Do(func() error {
		idx, err := c.HostIndex()
		if err != nil {
			return err
		}
		s, err = xdp.NewSocket(idx, 0, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestRunRedirectWithSocket pins down what test-run returns once the
// XSKMAP slot holds a bound socket: the program's own verdict, XDP_REDIRECT
// (non-live test-run does not perform the redirect).
func TestRunRedirectWithSocket(t *testing.T) {
	t.Parallel()
	_, c := bed(t)
	o := load(t, Config{})
	s := xskOn(t, c)
	if err := o.RegisterXSK(0, s.FD()); err != nil {
		t.Fatal(err)
	}
	s.Fill(s.GetDescs(s.NumFreeFillSlots()))
	if err := o.SetPort(loIfindex, Port{IP4: mustAddr("10.18.0.2")}); err != nil {
		t.Fatal(err)
	}
	f := frame{src: mustAddr("10.18.0.2"), dst: mustAddr("10.30.0.5")}.bytes()
	run(t, o, o.PortProgram(), f, bpfXdpActionXDP_REDIRECT, "redirected")
	// Without BPF_F_TEST_XDP_LIVE_FRAMES the verdict is only reported: no
	// frame reaches the socket.
	if nrx, _, err := s.Poll(50); err != nil || nrx != 0 {
		t.Errorf("socket after test-run: %d frames, err %v; want none", nrx, err)
	}
	if err := o.RegisterXSK(64, s.FD()); err == nil {
		t.Error("slot 64 of 64: want error")
	}
	if err := o.UnregisterXSK(0); err != nil {
		t.Fatal(err)
	}
	if err := o.UnregisterXSK(0); err != nil {
		t.Fatal(err)
	}
	run(t, o, o.PortProgram(), f, bpfXdpActionXDP_PASS, "redirect_failed")
}

// TestSteerToXSK: a container's datagram to a service IP arrives on the
// AF_XDP socket of its port; one to its gateway reaches the kernel.
func TestSteerToXSK(t *testing.T) {
	t.Parallel()
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			n, c := bed(t)
			o := load(t, Config{})
			s := xskOn(t, c)
			if err := o.RegisterXSK(0, s.FD()); err != nil {
				t.Fatal(err)
			}
			var l link.Link
			err := n.Do(func() error {
				idx, err := c.HostIndex()
				if err != nil {
					return err
				}
				if err := o.SetPort(idx, Port{IP4: mustAddr("10.18.0.2")}); err != nil {
					return err
				}
				l, err = o.AttachPort(idx, mode)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			s.Fill(s.GetDescs(s.NumFreeFillSlots()))

			var sink *net.UDPConn
			if err := n.Do(func() (err error) {
				sink, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 18, 0, 1), Port: 9999})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			var cli *net.UDPConn
			if err := c.Do(func() (err error) {
				cli, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 18, 0, 2)})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer cli.Close()

			svc := netip.AddrPortFrom(mustAddr("10.30.0.5"), 7777)
			got := false
			for i := 0; i < 10 && !got; i++ { // bounded: 10 datagrams, 200 ms each
				if _, err := cli.WriteToUDPAddrPort([]byte("to service"), svc); err != nil {
					t.Fatal(err)
				}
				nrx, _, err := s.Poll(200)
				if err != nil {
					t.Fatal(err)
				}
				if nrx == 0 {
					continue
				}
				for _, d := range s.Receive(nrx) {
					b := s.GetFrame(d)
					if len(b) >= 34 && netip.AddrFrom4([4]byte(b[30:34])) == svc.Addr() {
						got = true
					}
				}
			}
			if !got {
				t.Fatalf("no frame to %v on the AF_XDP socket; counters %v", svc, counters(t, o))
			}
			if _, err := cli.WriteToUDPAddrPort([]byte("to kernel"), netip.MustParseAddrPort("10.18.0.1:9999")); err != nil {
				t.Fatal(err)
			}
			_ = sink.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 64)
			nb, err := sink.Read(buf)
			if err != nil || string(buf[:nb]) != "to kernel" {
				t.Fatalf("kernel path: %q %v", buf[:nb], err)
			}
			cnt := counters(t, o)
			if cnt["redirected"] == 0 || cnt["passed_not_service"] == 0 || cnt["redirect_failed"] != 0 {
				t.Errorf("counters %v", cnt)
			}
		})
	}
}
