package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfig(t *testing.T) {
	t.Parallel()
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	if (Config{}).WithDefaults() != c {
		t.Fatalf("WithDefaults of zero = %+v", (Config{}).WithDefaults())
	}
	last, err := c.SubnetAt(12287)
	if err != nil || last.V4.String() != "10.29.255.192/26" || last.V6.String() != "fc00::2f:ff00/120" {
		t.Fatalf("last subnet = %v, %v", last, err)
	}
	if _, err := c.SubnetAt(12288); !errors.Is(err, ErrOutOfPool) {
		t.Fatalf("SubnetAt(12288): %v", err)
	}
	for i := range 12288 {
		s, _ := c.SubnetAt(i)
		for _, p := range []netip.Prefix{s.V4, s.V6} {
			if j, err := c.SubnetIndex(p); err != nil || j != i {
				t.Fatalf("SubnetIndex(%s) = %d, %v; want %d", p, j, err, i)
			}
		}
	}
	for _, p := range []string{"10.17.255.192/26", "10.30.0.0/26", "10.18.0.32/26", "fc00::80/120", "fdfe::/120"} {
		if _, err := c.SubnetIndex(netip.MustParsePrefix(p)); !errors.Is(err, ErrOutOfPool) {
			t.Errorf("SubnetIndex(%s): %v", p, err)
		}
	}
	for k, want := range map[Kind]string{0: "fdff::/21", 1: "fdff:1000::/21", 2: "fdff:2000::/21", 15: "fdff:f000::/21"} {
		if p, err := c.KindPrefix(k); err != nil || p.String() != want {
			t.Errorf("KindPrefix(%d) = %v, %v; want %s", k, p, err, want)
		}
	}
	if _, err := c.KindPrefix(MaxKinds); !errors.Is(err, ErrBadRequest) {
		t.Errorf("KindPrefix(MaxKinds): %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	pp := netip.MustParsePrefix
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{WorkerV4First: pp("10.18.0.0/24")}, "WorkerV4First 10.18.0.0/24: must be a /26"},
		{Config{WorkerV4First: pp("fc00::/26")}, "WorkerV4First fc00::/26: not an IPv4 prefix"},
		{Config{WorkerV4First: pp("10.18.0.1/26")}, "host bits set"},
		{Config{WorkerV6First: pp("fc00::/64")}, "WorkerV6First fc00::/64: must be a /120"},
		{Config{WorkerCount: -1}, "WorkerCount -1: negative"},
		{Config{WorkerV4First: pp("255.255.255.0/26"), WorkerCount: 5}, "run past 255.255.255.255"},
		{Config{ServiceV4: pp("10.30.0.0/31")}, "ServiceV4 10.30.0.0/31: needs at least a /30"},
		{Config{ServiceV4: pp("fdff::/112")}, "ServiceV4 fdff::/112: not an IPv4 prefix"},
		{Config{ServiceV6Base: pp("fdff::/21")}, "ServiceV6Base fdff::/21: must be a /16"},
	} {
		err := c.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c.cfg, err, c.want)
		}
		if _, err := NewMemory(c.cfg, nil); err == nil {
			t.Errorf("NewMemory accepted %+v", c.cfg)
		}
	}
	if err := (Config{Quarantine: -time.Second}).Validate(); err != nil {
		t.Errorf("negative quarantine: %v", err)
	}
}

func TestAddressMath(t *testing.T) {
	t.Parallel()
	pl, err := newPlan(Config{}, V6IndexCap)
	if err != nil {
		t.Fatal(err)
	}
	if pl.v4Lo != 1 || pl.v4Hi != 65534 || pl.v6Hi != V6IndexCap-1 {
		t.Fatalf("plan = %+v", pl)
	}
	for _, i := range []uint64{1, 255, 256, 65534} {
		a := pl.v4At(i)
		if j, err := pl.v4Index(a); err != nil || j != i {
			t.Errorf("v4 %d → %s → %d, %v", i, a, j, err)
		}
	}
	for _, k := range []Kind{0, 1, 2, 15} {
		for _, i := range []uint64{1, 0xffff, 0x10000, V6IndexCap - 1} {
			a := pl.v6At(k, i)
			if kk, j, err := pl.v6Index(a); err != nil || j != i || kk != k {
				t.Errorf("v6 %d/%d → %s → %d/%d, %v", k, i, a, kk, j, err)
			}
		}
	}
	if a := pl.v6At(2, V6IndexCap-1); a.String() != "fdff:2000::ffff:ffff" {
		t.Errorf("last RR v6 = %s", a)
	}
	for _, s := range []string{"fdff::", "fdff:800::1", "fdff::1:0:0", "fe00::1", "fdff:2000::1%eth0"} {
		if _, _, err := pl.v6Index(netip.MustParseAddr(s)); err == nil {
			t.Errorf("v6Index(%s) accepted", s)
		}
	}
	if a, c := add128(netip.MustParseAddr("::ffff:ffff:ffff:ffff"), 1); c || a.String() != "0:0:0:1::" {
		t.Errorf("add128 carry = %s, %v", a, c)
	}
	if _, c := add128(netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 1); !c {
		t.Error("add128 overflow not reported")
	}
}
