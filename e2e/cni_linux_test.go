package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/testbed"
)

// cniRuntime is libcni, the CNI project's own runtime library, driving
// oakwire-cni (from binDir) against one node's netmanager.
type cniRuntime struct {
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

// conflist is configs/oakwire.conflist with the node's socket and the
// extra plugin keys given.
func conflist(t *testing.T, socket string, extra map[string]any) []byte {
	t.Helper()
	b, err := os.ReadFile("../configs/oakwire.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	p := c["plugins"].([]any)[0].(map[string]any)
	p["socket"] = socket
	for k, v := range extra {
		p[k] = v
	}
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newCNIRuntime(t *testing.T, conf []byte) *cniRuntime {
	t.Helper()
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		t.Fatal(err)
	}
	return &cniRuntime{cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), nil), list: list}
}

func rtConf(id, netns string, args ...[2]string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: "eth0", Args: args}
}

// cniCode is the CNI error code of err (0 for none or a non-CNI error).
func cniCode(err error) uint {
	if te, ok := errors.AsType[*types.Error](err); ok {
		return te.Code
	}
	return 0
}

// askNS runs owload <proto>ask in the namespace at nsPath against dst.
func askNS(t *testing.T, d *deploy.Deployment, nsPath, proto string, dst netip.AddrPort, flows int) *deploy.AskResult {
	t.Helper()
	out, err := testbed.Run(30*time.Second, filepath.Base(nsPath), d.Bin("owload"), proto+"ask", "--addr", dst.String(),
		"--flows", strconv.Itoa(flows), "--per-flow", "2", "--timeout", "1s", "--max-fail", "5")
	if err != nil {
		t.Fatalf("%sask from %s: %v: %s", proto, nsPath, err, out)
	}
	var r deploy.AskResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%sask: %v: %q", proto, err, out)
	}
	return &r
}

// TestCNI runs oakwire-cni through libcni (the spec's reference runtime
// code) against a real netmanager: VERSION, STATUS, ADD/CHECK/DEL
// sequences, repeated DEL, DEL without ADD, bad configuration and
// arguments, a client-only container reaching a service IP, a container
// named as a service instance through CNI_ARGS reached at its instance IP,
// DEL after a netmanager restart, GC, and a missing or hung netmanager.
func TestCNI(t *testing.T) {
	d, a, b, svc := upWeb(t)
	ctx := context.Background()
	web0 := deployEcho(t, d, "web", 0, b)
	rt := newCNIRuntime(t, conflist(t, a.Socket, nil))
	cni, list := rt.cni, rt.list

	t.Run("version", func(t *testing.T) {
		vi, err := cni.GetVersionInfo(ctx, "oakwire-cni")
		if err != nil {
			t.Fatal(err)
		}
		if v := vi.SupportedVersions(); !slices.Contains(v, "1.0.0") || !slices.Contains(v, "1.1.0") {
			t.Errorf("supported versions %v: want 1.0.0 and 1.1.0", v)
		}
		if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
			t.Errorf("validate: %v", err)
		}
		r11 := newCNIRuntime(t, conf11(t, conflist(t, a.Socket, nil)))
		if err := r11.cni.GetStatusNetworkList(ctx, r11.list); err != nil {
			t.Errorf("STATUS: %v", err)
		}
	})

	// A client-only container: ADD, CHECK, reach the service, DEL twice.
	nsC, err := d.NewNetns("cni-client")
	if err != nil {
		t.Fatal(err)
	}
	rc := rtConf("client1", nsC)
	res, err := cni.AddNetworkList(ctx, list, rc)
	if err != nil {
		t.Fatalf("ADD client-only: %v", err)
	}
	r, err := types100.GetResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Interfaces) != 2 || r.Interfaces[1].Name != "eth0" || r.Interfaces[1].Sandbox != nsC || len(r.IPs) != 2 || len(r.Routes) != 2 {
		t.Fatalf("ADD result %s: want the host veth, eth0 in %s, two IPs, two default routes", res, nsC)
	}
	ns4, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	ns4 = ns4.Unmap()
	if !a.Subnet.Contains(ns4) || r.IPs[0].Gateway.String() != a.Subnet.Addr().Next().String() {
		t.Errorf("ADD result IPv4 %v via %v: want an nsIP of %v via its .1", r.IPs[0].Address, r.IPs[0].Gateway, a.Subnet)
	}
	if err := cni.CheckNetworkList(ctx, list, rc); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}
	if _, err := cni.AddNetworkList(ctx, list, rc); cniCode(err) != 100 {
		t.Errorf("second ADD of the same container: %v (code %d), want code 100", err, cniCode(err))
	}
	warmNS(t, d, nsC, netip.AddrPortFrom(svc.RR().V4, deploy.EchoUDPPort))
	for _, proto := range []string{"udp", "tcp"} {
		ask := askNS(t, d, nsC, proto, netipAddrPort(svc.RR().V4, proto), 3)
		if ask.Answered != ask.Sent || ask.ByTag()[web0.Tag()] != ask.Sent {
			t.Errorf("client-only container → %s %v: %d/%d answered by %v (%s)", proto, svc.RR().V4, ask.Answered, ask.Sent, ask.ByTag(), ask.FirstError())
		}
	}
	st, err := d.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	clientJob := ""
	for _, c := range st.Containers {
		if c.NSIP == ns4.String() {
			clientJob = c.Job
		}
	}
	if clientJob != "oakwire.a.client.default" {
		t.Errorf("client-only container is %q, want an instance of oakwire.a.client.default", clientJob)
	}
	if err := cni.DelNetworkList(ctx, list, rc); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if err := cni.DelNetworkList(ctx, list, rc); err != nil {
		t.Errorf("repeated DEL: %v", err)
	}
	if err := cni.CheckNetworkList(ctx, list, rc); err == nil {
		t.Error("CHECK after DEL: no error")
	}
	if e, err := d.ServiceEntry(ctx, clientJob); err != nil || len(e.InstanceList) != 0 {
		t.Errorf("root still has client instances %+v (%v) after DEL", e, err)
	}
	if err := cni.DelNetworkList(ctx, list, rtConf("never-added", nsC)); err != nil {
		t.Errorf("DEL without ADD: %v", err)
	}

	t.Run("service-instance-from-CNI_ARGS", func(t *testing.T) {
		ip, err := d.PlaceInstance(ctx, "web", 1, a)
		if err != nil {
			t.Fatal(err)
		}
		ns, err := d.NewNetns("cni-web1")
		if err != nil {
			t.Fatal(err)
		}
		rs := rtConf("web1", ns, [2]string{"OAKWIRE_SERVICE", svc.Job}, [2]string{"OAKWIRE_INSTANCE", "1"})
		if _, err := cni.AddNetworkList(ctx, list, rs); err != nil {
			t.Fatalf("ADD web/1: %v", err)
		}
		srv := testbed.Command(context.Background(), filepath.Base(ns), d.Bin("owload"), "udpecho", "--listen", ":"+strconv.Itoa(deploy.EchoUDPPort),
			"--tag", "web/1@cni", "--max-seconds", "60")
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
		time.Sleep(200 * time.Millisecond)
		cl := addClient(t, d, b)
		warmNS(t, d, "/run/netns/"+cl.NS, netip.AddrPortFrom(ip.V4, deploy.EchoUDPPort))
		ask, err := d.Ask(ctx, cl, "udp", netip.AddrPortFrom(ip.V4, deploy.EchoUDPPort), 3, 2, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if ask.ByTag()["web/1@cni"] != ask.Sent {
			t.Errorf("instance IP %v of the CNI container: %d/%d answered by %v (%s)", ip.V4, ask.Answered, ask.Sent, ask.ByTag(), ask.FirstError())
		}
		// DEL after a netmanager restart: the daemon re-adopted it.
		if err := d.RestartNetManager(ctx, a); err != nil {
			t.Fatal(err)
		}
		if err := cni.CheckNetworkList(ctx, list, rs); err != nil {
			t.Errorf("CHECK after a restart: %v", err)
		}
		if err := cni.DelNetworkList(ctx, list, rs); err != nil {
			t.Errorf("DEL after a restart: %v", err)
		}
		if st, err := d.Status(ctx, a); err != nil || slices.ContainsFunc(st.Containers, func(c deploy.StatusContainer) bool { return c.Job == svc.Job }) {
			t.Errorf("after DEL a still holds web: %+v (%v)", st, err)
		}
		_ = d.DeleteNetns(ns)
	})

	t.Run("GC", func(t *testing.T) {
		ns, err := d.NewNetns("cni-gc")
		if err != nil {
			t.Fatal(err)
		}
		defer d.DeleteNetns(ns)
		if _, err := cni.AddNetworkList(ctx, list, rtConf("gc1", ns)); err != nil {
			t.Fatal(err)
		}
		if err := cni.GCNetworkList(ctx, list, &libcni.GCArgs{}); err != nil {
			t.Fatalf("GC: %v", err)
		}
		if st, err := d.Status(ctx, a); err != nil || len(st.Containers) != 0 {
			t.Errorf("after GC with no valid attachment: %+v (%v)", st.Containers, err)
		}
	})

	t.Run("bad-input", func(t *testing.T) {
		bad := newCNIRuntime(t, conflist(t, a.Socket, map[string]any{"timeout": "banana"}))
		if _, err := bad.cni.AddNetworkList(ctx, bad.list, rtConf("bad1", nsC)); cniCode(err) != types.ErrInvalidNetworkConfig {
			t.Errorf("ADD with a bad timeout: %v (code %d), want %d", err, cniCode(err), types.ErrInvalidNetworkConfig)
		}
		if _, err := cni.AddNetworkList(ctx, list, rtConf("bad2", nsC, [2]string{"OAKWIRE_SERVICE", svc.Job}, [2]string{"OAKWIRE_INSTANCE", "x"})); cniCode(err) != types.ErrInvalidEnvironmentVariables {
			t.Errorf("ADD with OAKWIRE_INSTANCE=x: %v (code %d), want %d", err, cniCode(err), types.ErrInvalidEnvironmentVariables)
		}
		if _, err := cni.AddNetworkList(ctx, list, rtConf("bad3", nsC, [2]string{"OAKWIRE_SERVICE", "no.such"}, [2]string{"OAKWIRE_INSTANCE", "0"})); cniCode(err) != types.ErrInvalidNetworkConfig {
			t.Errorf("ADD with a bad service name: %v (code %d), want %d", err, cniCode(err), types.ErrInvalidNetworkConfig)
		}
		if _, err := cni.AddNetworkList(ctx, list, rtConf("bad4", "/proc/self/ns/mnt")); cniCode(err) != types.ErrInvalidNetNS {
			t.Errorf("ADD with a mount namespace: %v (code %d), want %d", err, cniCode(err), types.ErrInvalidNetNS)
		}
	})

	t.Run("missing-or-hung-netmanager", func(t *testing.T) {
		dir := t.TempDir()
		gone := newCNIRuntime(t, conflist(t, filepath.Join(dir, "none.sock"), map[string]any{"timeout": "3s"}))
		start := time.Now()
		_, err := gone.cni.AddNetworkList(ctx, gone.list, rtConf("m1", nsC))
		if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "netmanager not reachable") || time.Since(start) > 3*time.Second {
			t.Errorf("ADD without netmanager: %v (code %d) after %v, want code 11 at once", err, cniCode(err), time.Since(start))
		}
		// STATUS is for networks of spec 1.1 (libcni skips it below).
		gone11 := newCNIRuntime(t, conf11(t, conflist(t, filepath.Join(dir, "none.sock"), map[string]any{"timeout": "3s"})))
		if err := gone11.cni.GetStatusNetworkList(ctx, gone11.list); cniCode(err) != 50 {
			t.Errorf("STATUS without netmanager: %v (code %d), want 50", err, cniCode(err))
		}
		// A netmanager that accepts and never answers.
		hung := filepath.Join(dir, "hung.sock")
		ln, err := net.Listen("unix", hung)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		h := newCNIRuntime(t, conflist(t, hung, map[string]any{"timeout": "1s"}))
		start = time.Now()
		_, err = h.cni.AddNetworkList(ctx, h.list, rtConf("m2", nsC))
		if took := time.Since(start); cniCode(err) != types.ErrTryAgainLater || took > 5*time.Second {
			t.Errorf("ADD with a hung netmanager: %v (code %d) after %v, want code 11 within the 1 s timeout", err, cniCode(err), took)
		}
	})
}

// conf11 is conf as a network of CNI spec 1.1.0.
func conf11(t *testing.T, conf []byte) []byte {
	t.Helper()
	return []byte(strings.Replace(string(conf), `"cniVersion":"1.0.0"`, `"cniVersion":"1.1.0"`, 1))
}

// warmNS asks dst from the namespace at nsPath until an answer comes (at
// most 10 s): a new container's first packets wait for both nodes to
// resolve the addresses involved (SPEC §7.3 egress 6; the server's node
// learns the new client's instance IP on its first packet).
func warmNS(t *testing.T, d *deploy.Deployment, nsPath string, dst netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if r := askNS(t, d, nsPath, "udp", dst, 1); r.Answered > 0 {
			return
		}
	}
	t.Fatalf("no answer from %v to %s within 10 s", dst, nsPath)
}
