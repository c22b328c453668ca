package netmanager

import (
	"flag"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func newFlagSetForTest() *flag.FlagSet {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c := Defaults()
	c.bindFlags(fs)
	return fs
}

// TestNormJob: the rules are api.ParseJob's (tested there); the daemon
// names its field.
func TestNormJob(t *testing.T) {
	if got, err := normJob("app_ns_svc_sns"); err != nil || got != "app.ns.svc.sns" {
		t.Errorf("app_ns_svc_sns: %q %v", got, err)
	}
	if _, err := normJob("a.b.c"); err == nil || !strings.HasPrefix(err.Error(), "serviceName: ") {
		t.Errorf("a.b.c: %v, want an error naming serviceName", err)
	}
}

func TestParsePortMappings(t *testing.T) {
	got, err := ParsePortMappings("8080:80/tcp;5353:53/udp; 9000:90 ;443/UDP;")
	if err != nil {
		t.Fatal(err)
	}
	want := []PortMapping{{HostPort: 8080, ContainerPort: 80, Proto: "tcp"}, {HostPort: 5353, ContainerPort: 53, Proto: "udp"}, {HostPort: 9000, ContainerPort: 90, Proto: "tcp"}, {HostPort: 443, ContainerPort: 443, Proto: "udp"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
	if m, err := ParsePortMappings(""); err != nil || m != nil {
		t.Fatalf("empty: %v %v", m, err)
	}
	for _, bad := range []string{"8080:80/sctp", "0:80", "70000:80", "a:b", "8080:80;8080:81", "8080::80", ":80"} {
		if _, err := ParsePortMappings(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	// Same host port on different protocols is fine.
	if _, err := ParsePortMappings("53:53/tcp;53:53/udp"); err != nil {
		t.Error(err)
	}
}

func TestDerivedNames(t *testing.T) {
	n := hostIfName("a.b.c.d", 0)
	if len(n) != 10 || n[:2] != "ow" || n == hostIfName("a.b.c.d", 1) || n != hostIfName("a.b.c.d", 0) {
		t.Fatalf("host if name %q", n)
	}
	if len(n+"c") > 15 {
		t.Fatal("temporary peer name too long")
	}
	a := netip.MustParseAddr("10.18.0.2")
	if containerMAC(a).String() != "0a:58:0a:12:00:02" || hostMAC(a).String() != "0e:58:0a:12:00:02" {
		t.Fatalf("macs %v %v", containerMAC(a), hostMAC(a))
	}
	for _, m := range [][]byte{containerMAC(a), hostMAC(a)} {
		if m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("%x: want locally administered unicast", m)
		}
	}
}

func TestClientIDs(t *testing.T) {
	for _, c := range []struct{ node, id, job string }{
		{"a", "oakwire-client-a", "oakwire.a.client.default"},
		{"node7", "oakwire-client-node7", "oakwire.node7.client.default"},
		{"edge-1.example", "oakwire-client-edge-1.example", ""},
	} {
		id, job := clientIDs(c.node)
		if id != c.id {
			t.Errorf("clientIDs(%q) id %q, want %q", c.node, id, c.id)
		}
		if c.job != "" && job != c.job {
			t.Errorf("clientIDs(%q) job %q, want %q", c.node, job, c.job)
		}
		if _, err := normJob(job); err != nil {
			t.Errorf("clientIDs(%q) job %q: %v", c.node, job, err)
		}
	}
	_, j1 := clientIDs("edge-1")
	_, j2 := clientIDs("edge1-")
	if j1 == j2 {
		t.Errorf("node ids edge-1 and edge1- share the client job %q", j1)
	}
	if id, _ := clientIDs(strings.Repeat("n", 128)); len(id) > 128 {
		t.Errorf("client _id of a 128-character node id is %d characters", len(id))
	}
}

func TestValidContainerIDAndIfName(t *testing.T) {
	for s, want := range map[string]bool{"313f85acb91c": true, "a_b.c-d": true, "": false, "-x": false, "a/b": false, strings.Repeat("a", 257): false} {
		if validContainerID(s) != want {
			t.Errorf("validContainerID(%q) = %v", s, !want)
		}
	}
	for s, want := range map[string]bool{"eth0": true, "net1": true, "": false, "..": false, "a/b": false, "eth0:1": false, "abcdefghijklmnop": false} {
		if validIfName(s) != want {
			t.Errorf("validIfName(%q) = %v", s, !want)
		}
	}
}
