//go:build policytest

package policytest

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/control"
	"github.com/oakwire/oakwire/internal/redistest"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/policy"
	"github.com/redis/go-redis/v9"
)

// TestNewPolicyGetsServiceIPs: with no policy configured, the root
// allocates one service IP pair per policy, so also for the test-only one
// of package policy ("Lowest", tag policytest), which nothing in the
// control plane names: from the next v6 /21 of the plan (fdff:3000::/21),
// while the built-in ones keep their ranges.
func TestNewPolicyGetsServiceIPs(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	plan := ipam.DefaultConfig()
	alloc, err := ipam.NewRedis(rdb, plan, control.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	root, err := control.NewRoot(control.RootConfig{IPAM: plan, Log: quiet}, rdb, alloc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := control.NewServer(root.Handler(), quiet)
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = hs.ShutdownWithContext(ctx)
	})

	body := `{"_id":"S","deployment_descriptor":{"app_name":"a","app_ns":"n","microservice_name":"s","microservice_namespace":"m"}}`
	resp, err := http.Post("http://"+ln.Addr().String()+"/api/net/service/deploy", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got api.ServiceEntry
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("deploy: %d %v", resp.StatusCode, err)
	}
	want := map[string]netip.Prefix{
		"Closest": netip.MustParsePrefix("fdff:1000::/21"),
		"RR":      netip.MustParsePrefix("fdff:2000::/21"),
		"Lowest":  netip.MustParsePrefix("fdff:3000::/21"),
	}
	if len(got.ServiceIPList) != len(want) {
		t.Fatalf("service IPs %+v, want one per policy %v", got.ServiceIPList, policy.All())
	}
	seen4 := map[netip.Addr]bool{}
	for _, ip := range got.ServiceIPList {
		v4, v6 := ip.Address, ip.AddressV6
		if !want[ip.IpType].Contains(v6) || !plan.ServiceV4.Contains(v4) || seen4[v4] {
			t.Errorf("%s: %v / %v, want a fresh v4 in %v and v6 in %v", ip.IpType, v4, v6, plan.ServiceV4, want[ip.IpType])
		}
		seen4[v4] = true
	}
}
