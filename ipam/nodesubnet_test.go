package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func testNodeSubnet(t *testing.T) *NodeSubnet {
	t.Helper()
	n, err := NewNodeSubnet(SubnetPair{V4: netip.MustParsePrefix("10.18.0.64/26"), V6: netip.MustParsePrefix("fc00::100/120")})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNodeSubnet(t *testing.T) {
	t.Parallel()
	n := testNodeSubnet(t)
	if g := n.Gateway(); g.V4.String() != "10.18.0.65" || g.V6.String() != "fc00::101" {
		t.Fatalf("gateway = %v", g)
	}
	p, err := n.Alloc("c0")
	if err != nil || p.V4.String() != "10.18.0.66" || p.V6.String() != "fc00::102" {
		t.Fatalf("first = %v, %v", p, err)
	}
	if again, err := n.Alloc("c0"); err != nil || again != p {
		t.Fatalf("idempotent = %v, %v", again, err)
	}
	for i := 1; i < 61; i++ {
		p, err := n.Alloc(fmt.Sprint("c", i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 60 && (p.V4.String() != "10.18.0.126" || p.V6.String() != "fc00::13e") {
			t.Fatalf("last = %v", p)
		}
	}
	if _, err := n.Alloc("c61"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("62nd: %v", err)
	}
	for _, o := range []string{"c7", "c3", "c9"} {
		if err := n.Release(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Release("c3"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("double release: %v", err)
	}
	// Least recently freed first.
	for _, want := range []string{"10.18.0.73", "10.18.0.69", "10.18.0.75"} {
		p, err := n.Alloc("new" + want)
		if err != nil || p.V4.String() != want {
			t.Fatalf("reuse = %v, %v; want %s", p, err, want)
		}
	}
	if _, err := n.Lookup("c3"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup released: %v", err)
	}
	if got := len(n.Owners()); got != 61 {
		t.Fatalf("%d owners", got)
	}
	if _, err := NewNodeSubnet(SubnetPair{V4: netip.MustParsePrefix("10.18.0.64/24"), V6: netip.MustParsePrefix("fc00::100/120")}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("bad subnet: %v", err)
	}
}

func TestNodeSubnetPersist(t *testing.T) {
	t.Parallel()
	n := testNodeSubnet(t)
	for i := range 5 {
		if _, err := n.Alloc(fmt.Sprint("c", i)); err != nil {
			t.Fatal(err)
		}
	}
	_ = n.Release("c3")
	_ = n.Release("c1")
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	var m NodeSubnet
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if m.Subnet() != n.Subnet() {
		t.Fatalf("subnet %v", m.Subnet())
	}
	for o, p := range n.Owners() {
		if q, err := m.Lookup(o); err != nil || q != p {
			t.Fatalf("%s: %v, %v; want %v", o, q, err, p)
		}
	}
	// Both continue identically: never-used .71, .72, then freed c3's, c1's.
	for i := range 4 {
		p, _ := n.Alloc(fmt.Sprint("x", i))
		q, err := m.Alloc(fmt.Sprint("x", i))
		if err != nil || p != q {
			t.Fatalf("after reload %d: %v vs %v, %v", i, p, q, err)
		}
	}
	for _, bad := range []string{
		`{"subnet_v4":"10.18.0.64/26","subnet_v6":"fc00::100/120","held":[{"owner":"a","v4":"10.18.0.66"},{"owner":"b","v4":"10.18.0.66"}]}`,
		`{"subnet_v4":"10.18.0.64/26","subnet_v6":"fc00::100/120","held":[{"owner":"a","v4":"10.18.0.65"}]}`,
		`{"subnet_v4":"10.18.0.64/26","subnet_v6":"fc00::100/120","held":[{"owner":"a","v4":"10.18.0.66","v6":"fc00::103"}]}`,
		`{"subnet_v4":"10.18.0.64/26","subnet_v6":"fc00::100/120","held":[{"owner":"a","v4":"10.18.0.66"},{"owner":"a","v4":"10.18.0.67"}]}`,
		`{"subnet_v4":"10.18.0.64/26","subnet_v6":"fc00::100/120","freed":["10.18.0.66"],"held":[{"owner":"a","v4":"10.18.0.66"}]}`,
		`{"subnet_v4":"10.18.0.64/25","subnet_v6":"fc00::100/120"}`,
		`{"subnet_v4":"10.18.0.64/26"`,
	} {
		var x NodeSubnet
		if err := json.Unmarshal([]byte(bad), &x); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func TestNodeSubnetAdopt(t *testing.T) {
	t.Parallel()
	n := testNodeSubnet(t)
	ip := netip.MustParseAddr
	if p, err := n.Adopt("a", ip("fc00::104")); err != nil || p.V4 != ip("10.18.0.68") {
		t.Fatalf("adopt = %v, %v", p, err)
	}
	if _, err := n.Adopt("b", ip("10.18.0.68")); !errors.Is(err, ErrConflict) {
		t.Fatalf("adopt taken: %v", err)
	}
	if _, err := n.Adopt("a", ip("10.18.0.69")); !errors.Is(err, ErrConflict) {
		t.Fatalf("adopt second: %v", err)
	}
	for _, a := range []string{"10.18.0.65", "10.18.0.127", "10.18.1.2", "fc00::1"} {
		if _, err := n.Adopt("c", ip(a)); !errors.Is(err, ErrOutOfPool) {
			t.Errorf("adopt %s: %v", a, err)
		}
	}
	// Never-used addresses still go in ascending order around it.
	for _, want := range []string{"10.18.0.66", "10.18.0.67", "10.18.0.69"} {
		if p, err := n.Alloc("n" + want); err != nil || p.V4.String() != want {
			t.Fatalf("alloc = %v, %v; want %s", p, err, want)
		}
	}
}
