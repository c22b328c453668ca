package netmanager

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/internal/testenv"
)

// TestRegisterBareHostAndNodeIPChange: Oakestra's node engine registers
// with a bare host (the port comes from --cluster-port); another or a
// malformed cluster_address afterwards is refused, not ignored. When the
// node's address moves on its uplink, the daemon registers the new one
// with its cluster, reports its instances again from there, and its port
// mappings follow.
func TestRegisterBareHostAndNodeIPChange(t *testing.T) {
	bed, node := daemonNode(t)
	c := emptyContainer(t, node, "c1")
	fc := startFakeCluster(t, node.NS)
	host, port, _ := net.SplitHostPort(fc.addr)
	d := newDaemon(t, bed, node)
	d.extra = []string{"--cluster-port", port}
	d.start()

	for _, tc := range []struct {
		addr string
		code int
		want string
	}{
		{"bad host!", 400, "bad_cluster_address"},
		{"http://" + host + ":" + port + "/some/path", 400, "bad_cluster_address"},
		{host + ":0", 400, "bad_cluster_address"},
		{host, 200, ""}, // Oakestra's node engine: no port
		{host, 200, ""}, // again: the same cluster
		{fc.addr, 200, ""},
		{"127.0.0.2", 409, "cluster_changed"},
		{host + ":1", 409, "cluster_changed"},
		{"bad host!", 400, "bad_cluster_address"},
	} {
		code, body := d.call("POST", "/register", fmt.Sprintf(`{"client_id":"n1","cluster_address":%q}`, tc.addr))
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("register with %q: %d %s, want %d %s", tc.addr, code, body, tc.code, tc.want)
		}
	}
	fc.mu.Lock()
	regs := len(fc.regs)
	fc.mu.Unlock()
	if regs != 1 {
		t.Fatalf("%d registrations reached the cluster, want 1", regs)
	}
	if s := d.status(); s.Cluster != fc.addr || !s.Confirmed {
		t.Fatalf("status: cluster %q confirmed %v, want %s", s.Cluster, s.Confirmed, fc.addr)
	}

	code, body := d.call("POST", "/container/deploy", fmt.Sprintf(`{"netns":"/run/netns/%s","serviceName":"a.b.c.d","instanceNumber":0,"portMappings":"8080:80/tcp"}`, c.NS))
	if code != 200 {
		t.Fatalf("deploy: %d %s", code, body)
	}
	old := node.IP
	nft := nftTableText(t, node.NS)
	if !strings.Contains(nft, old.String()) {
		t.Fatalf("port mapping not on the node IP %s:\n%s", old, nft)
	}

	// The address moves (as after a new DHCP lease): the old one goes,
	// a new one comes. (Added first, the new one would be a secondary
	// that the kernel removes with the primary.)
	next := netip.AddrFrom4([4]byte{198, 18, 0, 200})
	bits := strconv.Itoa(node.Prefix.Bits())
	for _, args := range [][]string{
		{"ip", "addr", "del", old.String() + "/" + bits, "dev", node.Uplink},
		{"ip", "addr", "add", next.String() + "/" + bits, "dev", node.Uplink},
	} {
		if out, err := testbed.Run(5*time.Second, node.NS, args...); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fc.mu.Lock()
		var reReg, reRep bool
		for _, r := range fc.regs[1:] {
			reReg = reReg || r.NodeIP == next
		}
		reRep = len(fc.deps) >= 2 && fc.deps[len(fc.deps)-1].JobName == "a.b.c.d"
		fc.mu.Unlock()
		if reReg && reRep {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the address moved to %s: registered again %v, instance reported again %v", next, reReg, reRep)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s := d.status()
	if s.NodeIP != next.String() || s.Counters["node_ip_changes"] != 1 {
		t.Errorf("status: node_ip %s, node_ip_changes %d; want %s, 1", s.NodeIP, s.Counters["node_ip_changes"], next)
	}
	nft = nftTableText(t, node.NS)
	if !strings.Contains(nft, next.String()) || strings.Contains(nft, old.String()) {
		t.Errorf("port mapping did not follow the node IP to %s:\n%s", next, nft)
	}
	// An address added beside the node IP changes nothing.
	if out, err := testbed.Run(5*time.Second, node.NS, "ip", "addr", "add", "198.18.0.201/"+bits, "dev", node.Uplink); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	if s := d.status(); s.NodeIP != next.String() || s.Counters["node_ip_changes"] != 1 {
		t.Errorf("a second address moved the node IP: %s, %d changes", s.NodeIP, s.Counters["node_ip_changes"])
	}
	d.stop() // a clean exit (under -race: no race in the daemon)
}

// TestUnikernel: POST /unikernel/deploy makes the instance's namespace
// (Oakestra's name, <service>.instance.<n>), attaches it and gives the VM
// its tap0 on virbr0 with the NAT to the guest; /unikernel/undeploy
// detaches it and removes the namespace. Bad requests leave nothing.
func TestUnikernel(t *testing.T) {
	testenv.RequireBinary(t, "nsenter")
	bed, node := daemonNode(t)
	fc := startFakeCluster(t, node.NS)
	d := newDaemon(t, bed, node)
	d.start()
	// Unique per test run: named namespaces are global.
	job := fmt.Sprintf("uk%d.ns.vm.default", os.Getpid())
	name := job + ".instance.0"
	nsPath := filepath.Join("/run/netns", name)
	t.Cleanup(func() {
		// Made in the daemon's mount namespace (it runs under ip netns
		// exec here): the namespace goes with it, an empty file may stay.
		if fi, err := os.Stat(nsPath); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
			_ = os.Remove(nsPath)
		}
	})
	// The daemon runs in a mount namespace of its own (ip netns exec):
	// look at its namespaces from there, as the node engine would from
	// the host where the daemon runs in the host's.
	inDaemon := func(argv ...string) (string, error) {
		out, err := exec.Command("nsenter", append([]string{"--mount=/proc/" + strconv.Itoa(d.proc.Pid()) + "/ns/mnt", "--"}, argv...)...).CombinedOutput()
		return string(out), err
	}
	body := fmt.Sprintf(`{"pid":0,"serviceName":%q,"instanceNumber":0,"portMappings":""}`, job)

	if code, b := d.call("POST", "/unikernel/deploy", body); code != http.StatusConflict || !strings.Contains(b, "not_registered") {
		t.Errorf("before register: %d %s", code, b)
	}
	if _, err := inDaemon("test", "-e", nsPath); err == nil {
		t.Fatalf("namespace %s made by a refused deploy", name)
	}
	if code, b := d.call("POST", "/register", fmt.Sprintf(`{"client_id":"n1","cluster_address":%q}`, fc.addr)); code != 200 {
		t.Fatalf("register: %d %s", code, b)
	}
	for _, bad := range []string{`{"pid":0,"serviceName":"a.b","instanceNumber":0}`, `{"pid":0,"serviceName":"a.b.c.d","instanceNumber":-1}`,
		`{"pid":7,"serviceName":"a.b.c.d","instanceNumber":0}`} {
		if code, b := d.call("POST", "/unikernel/deploy", bad); code != 400 {
			t.Errorf("%s: %d %s, want 400", bad, code, b)
		}
	}
	code, b := d.call("POST", "/unikernel/deploy", body)
	if code != 200 || !strings.Contains(b, `"nsAddress":"10.18.0.2"`) {
		t.Fatalf("unikernel deploy: %d %s", code, b)
	}
	out, err := inDaemon("ip", "-n", name, "-br", "addr")
	if err != nil {
		t.Fatalf("namespace %s: %v %s", name, err, out)
	}
	for _, want := range []string{"eth0", "10.18.0.2/32", "virbr0", "192.168.1.1/30", "tap0"} {
		if !strings.Contains(out, want) {
			t.Errorf("namespace %s lacks %s:\n%s", name, want, out)
		}
	}
	if out, err := inDaemon("ip", "netns", "exec", name, "nft", "list", "table", "ip", "oakwire_vm"); err != nil ||
		!strings.Contains(out, "dnat to 192.168.1.2") || !strings.Contains(out, "snat to 10.18.0.2") {
		t.Errorf("guest NAT: %v\n%s", err, out)
	}
	if code, b := d.call("POST", "/unikernel/deploy", body); code != http.StatusConflict {
		t.Errorf("second deploy: %d %s", code, b)
	}
	fc.mu.Lock()
	deps := len(fc.deps)
	fc.mu.Unlock()
	if deps != 1 {
		t.Errorf("%d reports of the deploy, want 1", deps)
	}
	// Oakestra's undeploy: pid -1.
	if code, b := d.call("POST", "/unikernel/undeploy", fmt.Sprintf(`{"pid":-1,"serviceName":%q,"instanceNumber":0,"portMappings":""}`, job)); code != 200 {
		t.Fatalf("unikernel undeploy: %d %s", code, b)
	}
	if _, err := inDaemon("test", "-e", nsPath); err == nil {
		t.Errorf("namespace %s left after undeploy", name)
	}
	if s := d.status(); len(s.Containers) != 0 {
		t.Errorf("containers after undeploy: %+v", s.Containers)
	}
	if code, b := d.call("POST", "/unikernel/undeploy", fmt.Sprintf(`{"serviceName":%q,"instanceNumber":0}`, job)); code != 404 {
		t.Errorf("undeploy again: %d %s", code, b)
	}
	d.stop()
}

func TestPickNodeIP(t *testing.T) {
	a := netip.MustParseAddr
	cur := a("198.18.0.1")
	for _, tc := range []struct {
		addrs  []netip.Addr
		want   netip.Addr
		change bool
	}{
		{[]netip.Addr{a("198.18.0.1"), a("198.18.0.9")}, cur, false},
		{[]netip.Addr{a("198.18.0.9"), a("198.18.0.10")}, a("198.18.0.9"), true},
		{[]netip.Addr{a("fe80::1"), a("fc00::5")}, netip.Addr{}, false},
		{[]netip.Addr{a("169.254.1.1"), a("198.18.0.7")}, a("198.18.0.7"), true},
		{nil, netip.Addr{}, false},
	} {
		got, change := pickNodeIP(cur, tc.addrs)
		if got != tc.want || change != tc.change {
			t.Errorf("%v: %v %v, want %v %v", tc.addrs, got, change, tc.want, tc.change)
		}
	}
}
