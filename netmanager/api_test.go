package netmanager

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/ipam"
)

// Unit tests of the API's input handling with fake collaborators; no root
// needed (nothing here reaches node setup). The privileged end-to-end
// tests are in daemon_linux_test.go.

type downCluster struct{}

func (downCluster) ServiceSource() ServiceSource { return nil }

func (downCluster) Register(context.Context, Endpoint) (Registration, error) {
	return Registration{}, errors.New("connection refused")
}
func (downCluster) ReportDeployed(context.Context, string, int, netip.Addr, netip.Addr) error {
	return nil
}
func (downCluster) ReportUndeployed(context.Context, string, int) error { return nil }
func (downCluster) Close() error                                        { return nil }

func newTestDaemon(t *testing.T) *Daemon {
	t.Helper()
	cfg := Defaults()
	dir := t.TempDir()
	cfg.Uplink, cfg.NodeIP, cfg.Insecure = "ul0", "198.18.0.1", true
	cfg.Socket, cfg.StateDir = filepath.Join(dir, "nm.sock"), filepath.Join(dir, "state")
	d, err := New(Options{
		Config: cfg, Dataplane: &KernelOnly{},
		NewCluster: func(string, string) (Cluster, error) { return downCluster{}, nil },
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.load(); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestNewNeedsCollaborators(t *testing.T) {
	cfg := Defaults()
	cfg.Uplink, cfg.NodeIP, cfg.Insecure = "ul0", "198.18.0.1", true
	if _, err := New(Options{Config: cfg, NewCluster: NodeClientCluster("")}); err == nil {
		t.Error("no data plane accepted")
	}
	if _, err := New(Options{Config: cfg, Dataplane: &KernelOnly{}}); err == nil {
		t.Error("no cluster factory accepted")
	}
	cfg.NodeIP = ""
	if _, err := New(Options{Config: cfg, Dataplane: &KernelOnly{}, NewCluster: NodeClientCluster("")}); err == nil {
		t.Error("invalid config accepted")
	}
}

func TestAPIInputErrors(t *testing.T) {
	d := newTestDaemon(t)
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/container/deploy", `{"pid":1,"serviceName":"a.b.c.d","instanceNumber":0}`, 409, "POST /register first"},
		{"POST", "/container/deploy", `{"pid":`, 400, "malformed JSON"},
		{"POST", "/container/deploy", ``, 400, "empty body"},
		{"POST", "/container/deploy", `{"pid":"1"}`, 400, "pid: want int"},
		{"POST", "/container/deploy", `{"pid":1,"serviceName":["x"]}`, 400, "serviceName"},
		{"POST", "/container/deploy", `{"pid":1,"serviceName":"a.b.c.d","instanceNumber":1.5}`, 400, "instanceNumber"},
		{"POST", "/container/deploy", `{"pid":1,"serviceName":"a.b.c.d","instanceNumber":-1}`, 400, "instanceNumber"},
		{"POST", "/container/deploy", `{"pid":1,"netns":"/run/netns/x","serviceName":"a.b.c.d"}`, 400, "not both"},
		{"POST", "/container/deploy", `{"pid":-3,"serviceName":"a.b.c.d"}`, 400, "pid"},
		{"POST", "/container/deploy", `{"pid":1,"serviceName":"a.b.c.d"} {}`, 400, "after the object"},
		{"POST", "/container/deploy", `{"pid":1,"serviceName":"a.b.c.d","portMappings":"1:2/icmp"}`, 400, "portMappings"},
		{"POST", "/container/undeploy", `{"serviceName":"a.b.c.d","instanceNumber":0}`, 404, "not deployed"},
		{"POST", "/docker/undeploy", `{"serviceName":"a.b.c.d","instanceNumber":"0"}`, 400, "instanceNumber"},
		{"POST", "/register", `{"cluster_address":"x:1"}`, 400, "client_id"},
		{"POST", "/register", `{"client_id":"n1"}`, 400, "cluster_address"},
		{"POST", "/register", `{"client_id":"n1","cluster_address":"x:1"}`, 502, "connection refused"},
		{"GET", "/container/deploy", ``, 405, ""},
		{"POST", "/container/deploy", `{"pid":1,"serviceName":"` + strings.Repeat("a", maxBody) + `"}`, 413, "larger than"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s %s %.60q: %d %s, want %d naming %q", tc.method, tc.path, tc.body, resp.StatusCode, b, tc.status, tc.want)
		}
	}
	s := d.Status()
	if s.Registered || s.Counters["deploy_errors"] == 0 || s.LastError == "" || s.Build.Version == "" || s.Build.Commit == "" {
		t.Errorf("status after refusals: %+v", s)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"oakwire_netmanager_deploy_errors_total", "oakwire_netmanager_registered 0", "oakwire_dataplane_sockets 0", "oakwire_build_info{"} {
		if !strings.Contains(string(b), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
}

func TestQuarantine(t *testing.T) {
	d := newTestDaemon(t)
	ns, err := ipam.NewNodeSubnet(ipam.SubnetPair{V4: netip.MustParsePrefix("10.18.0.0/26"), V6: netip.MustParsePrefix("fc00::/120")})
	if err != nil {
		t.Fatal(err)
	}
	d.st.Subnets = ns
	d.cfg.Quarantine = time.Hour
	// Use up every address but .2, then free .2 into quarantine.
	p, _ := ns.Alloc("a/0")
	for i := 1; i < 61; i++ {
		if _, err := ns.Alloc("x/" + string(rune('A'+i))); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	d.releaseLocked("a/0", p.V4)
	d.mu.Unlock()
	if _, err := ns.Alloc("b/0"); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("quarantined address handed out: %v", err)
	}
	d.st.Quarantine[p.V4] = time.Now().Add(-time.Second)
	d.expireQuarantine()
	if q, err := ns.Alloc("b/0"); err != nil || q != p {
		t.Fatalf("after quarantine: %v %v, want %v", q, err, p)
	}
	st, err := loadState(d.cfg.StateFile())
	if err != nil || st == nil || len(st.Quarantine) != 0 {
		t.Fatalf("state after expiry: %+v %v", st, err)
	}
}

func TestNftRuleset(t *testing.T) {
	cfg := Defaults()
	cfg.Uplink, cfg.NodeIP = "ul0", "198.18.0.1"
	sub := ipam.SubnetPair{V4: netip.MustParsePrefix("10.18.0.64/26"), V6: netip.MustParsePrefix("fc00::100/120")}
	c := &Container{Job: "a.b.c.d", Instance: 2, HostIf: hostIfName("a.b.c.d", 2), NSIP4: netip.MustParseAddr("10.18.0.66"), NSIP6: netip.MustParseAddr("fc00::102"),
		PortMappings: []PortMapping{{HostPort: 8080, ContainerPort: 80, Proto: "tcp"}}}
	got := nftRuleset(&cfg, sub, []*Container{c})
	for _, want := range []string{
		"table inet oakwire\ndelete table inet oakwire\ntable inet oakwire {",
		"type nat hook prerouting priority dstnat",
		"ip daddr 198.18.0.1 tcp dport 8080 dnat ip to 10.18.0.66:80",
		`oifname "ul0" ip saddr 10.18.0.64/26 ip daddr != 10.16.0.0/12 masquerade`,
		`oifname "ul0" ip6 saddr fc00::100/120 ip6 daddr != fc00::/7 masquerade`,
		// Isolation (SPEC §7.2).
		"type filter hook forward priority filter",
		`elements = { "` + c.HostIf + `" }`,
		"iifname @ports accept\n\t\tct status dnat accept\n\t\tct state established,related accept\n",
		`ip daddr 10.16.0.0/12 counter drop comment "underlay to platform"`,
		`ip6 daddr fc00::/7 counter drop comment "underlay to platform"`,
		`iifname @ports udp dport 50103 counter drop comment "container to tunnel port"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, got)
		}
	}
	// The kernel takes it: a dry run (nft -c) in a namespace of our own.
	if os.Geteuid() == 0 {
		cmd := exec.Command("unshare", "--net", "nft", "-c", "-f", "-")
		cmd.Stdin = strings.NewReader(got)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nft -c: %v: %s\n%s", err, out, got)
		}
	}
	cfg.NodeIP = "2001:2::1"
	if got := nftRuleset(&cfg, sub, []*Container{c}); !strings.Contains(got, "ip6 daddr 2001:2::1 tcp dport 8080 dnat ip6 to [fc00::102]:80") {
		t.Errorf("v6 node ruleset:\n%s", got)
	}
}

// TestOversizedBodyDrained: a caller that writes a whole body over 1 MiB
// before reading gets the 413, not a connection reset.
func TestOversizedBodyDrained(t *testing.T) {
	d := newTestDaemon(t)
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	for _, size := range []int{maxBody + 1, 4 << 20, 16 << 20} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		body := `{"serviceName":"` + strings.Repeat("a", size) + `"}`
		req := "POST /container/deploy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n" + body
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatalf("%d bytes: write: %v (the daemon stopped reading)", size, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%d bytes: read the answer: %v", size, err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		_ = conn.Close()
		if resp.StatusCode != 413 || !strings.Contains(string(b), "body_too_large") {
			t.Errorf("%d bytes: %d %s, want 413 body_too_large", size, resp.StatusCode, b)
		}
	}
}
