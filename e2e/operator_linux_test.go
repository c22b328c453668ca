package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestOperatorView: a node's operator view with real traffic: `netmanager
// status|flows|drops|services` over the daemon's socket, the per-service
// and per-instance counters on /metrics, and every metric the Grafana
// dashboard (configs/grafana-dashboard.json) queries present on the
// running daemon.
func TestOperatorView(t *testing.T) {
	d, a, b, svc := upWeb(t)
	ctx := context.Background()
	web0 := deployEcho(t, d, "web", 0, b)
	cl := addClient(t, d, a)
	warmNS(t, d, "/run/netns/"+cl.NS, netipAddrPort(svc.RR().V4, "udp"))
	// UDP flows with several datagrams each, so the kernel tier carries some.
	if r, err := d.Ask(ctx, cl, "udp", netipAddrPort(svc.RR().V4, "udp"), 4, 5, time.Second); err != nil || r.Answered != r.Sent {
		t.Fatalf("ask: %+v %v", r, err)
	}

	cli := func(args ...string) string {
		t.Helper()
		out, err := d.NetManagerCLI(ctx, a, args...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	st := cli("status")
	if !regexp.MustCompile(`registered with [0-9.]+:[0-9]+\n`).MatchString(st) {
		t.Errorf("netmanager status lacks the cluster it registered with (host:port):\n%s", st)
	}
	for _, want := range []string{"node        a", "kernel-tier", cl.NSIP.V4.String(), "oakwire.demo.client.default"} {
		if !strings.Contains(st, want) {
			t.Errorf("netmanager status lacks %q:\n%s", want, st)
		}
	}
	fl := cli("flows", "--service", svc.Job, "--instance", web0.IP.V4.String())
	if !regexp.MustCompile(`udp +` + regexp.QuoteMeta(cl.NSIP.V4.String()) + `:\d+ +` + regexp.QuoteMeta(svc.RR().V4.String()) + `:7000 +out +` +
		regexp.QuoteMeta(svc.Job) + ` +0 ` + regexp.QuoteMeta(web0.IP.V4.String()) + ` +(kernel|workers)`).MatchString(fl) {
		t.Errorf("netmanager flows --service --instance lacks the client's flows to web/0:\n%s", fl)
	}
	if other := cli("flows", "--instance", "7"); !strings.HasPrefix(strings.Split(other, "\n")[1], "0 flow(s)") {
		t.Errorf("netmanager flows --instance 7 (no such instance):\n%s", other)
	}
	var sv struct {
		Services []struct {
			Job     string `json:"job"`
			Version uint64 `json:"version"`
			Source  string `json:"source"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(cli("services", "--json")), &sv); err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(sv.Services, func(s struct {
		Job     string `json:"job"`
		Version uint64 `json:"version"`
		Source  string `json:"source"`
	}) bool {
		return s.Job == svc.Job
	}); i < 0 || sv.Services[i].Source == "" {
		t.Errorf("netmanager services --json: %+v; want %s with its origin", sv, svc.Job)
	}
	if txt := cli("services"); !strings.Contains(txt, svc.Job) || !strings.Contains(txt, svc.RR().V4.String()) || !strings.Contains(txt, web0.IP.V4.String()) {
		t.Errorf("netmanager services:\n%s", txt)
	}
	if dr := cli("drops", "--interval", "200ms", "--all"); !strings.Contains(dr, "REASON") || !strings.Contains(dr, "spoofed") {
		t.Errorf("netmanager drops --all:\n%s", dr)
	}

	// /metrics: the per-instance counters saw the client's flows (sampled
	// every 2 s), and every metric of the dashboard is there.
	var metrics string
	deadline := time.Now().Add(10 * time.Second)
	for {
		metrics = scrape(t, a.Socket)
		if strings.Contains(metrics, `oakwire_service_flows_total{direction="out",instance_number="0",service="demo.ns.web.default"}`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !strings.Contains(metrics, `oakwire_service_flows_total{direction="out",instance_number="0",service="demo.ns.web.default"}`) {
		t.Errorf("/metrics lacks web/0's flows:\n%s", grep(metrics, "oakwire_service_"))
	}
	// Packets per tier: the UDP flows' later datagrams went through the
	// kernel tier, their first ones through the workers.
	for _, tier := range []string{"kernel", "workers"} {
		m := regexp.MustCompile(`(?m)^oakwire_dataplane_tier_packets_total\{tier="` + tier + `"\} (\d+)`).FindStringSubmatch(metrics)
		if m == nil || m[1] == "0" {
			t.Errorf("/metrics: no packets in the %s tier:\n%s", tier, grep(metrics, "oakwire_dataplane_tier_"))
		}
	}
	dash, err := os.ReadFile("../configs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`oakwire_[a-z0-9_]+`).FindAllString(string(dash), -1) {
		names[m] = true
	}
	if len(names) < 5 {
		t.Fatalf("the dashboard queries %d metrics?", len(names))
	}
	for n := range names {
		if !regexp.MustCompile(`(?m)^` + n + `[{ ]`).MatchString(metrics) {
			t.Errorf("the dashboard queries %s; the daemon does not export it", n)
		}
	}
}

// scrape is GET /metrics of the netmanager at socket.
func scrape(t *testing.T, socket string) string {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}
	resp, err := hc.Get("http://netmanager/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
