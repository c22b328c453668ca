package nodeplane

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/dataplane"
	"github.com/oakwire/oakwire/netmanager"
)

// TestConfig: the daemon's node description becomes the engine's
// configuration, and a miss reaches the daemon's callback.
func TestConfig(t *testing.T) {
	var missed []netip.Addr
	d := &Dataplane{}
	node := netmanager.NodeInfo{Uplink: "ul0", NodeIP: netip.MustParseAddr("198.18.0.1"), XDPMode: "native",
		WorkerYield: "go", WorkerSpin: 50 * time.Microsecond, WorkerCPUs: []int{1}, Workers: 2, FlowsPerPort: 100,
		Offload: true, PinPath: "/nonexistent/oakwire/n1", Miss: func(a netip.Addr) { missed = append(missed, a) }}
	cfg, err := d.config(node)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != bpfprog.ModeNative || cfg.TunnelPort != dataplane.DefaultTunnelPort || cfg.Workers != 2 ||
		len(cfg.CPUs) != 1 || cfg.Poller.Spin != 50*time.Microsecond || !cfg.Offload || cfg.Flows.PerPort != 100 {
		t.Errorf("config %+v", cfg)
	}
	if cfg.PinPath != "" {
		t.Errorf("pin path %q kept off a bpffs", cfg.PinPath)
	}
	ip := netip.MustParseAddr("10.30.9.9")
	if err := cfg.Resolver.Resolve(context.Background(), ip); err != nil || len(missed) != 1 || missed[0] != ip {
		t.Errorf("miss: %v %v", err, missed)
	}
	for _, bad := range []netmanager.NodeInfo{{XDPMode: "turbo"}, {TunnelPort: 70000}, {WorkerYield: "sometimes"}} {
		if _, err := d.config(bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	if err := d.SetServices(nil, nil, nil); err == nil || errors.Is(err, dataplane.ErrClosed) {
		t.Errorf("SetServices before Start: %v", err)
	}
}
