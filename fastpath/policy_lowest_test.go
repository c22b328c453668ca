//go:build policytest

package fastpath

import "testing"

// TestTestOnlyPolicy: the test-only policy of package policy (tag
// policytest), which nothing in this package names but this test's
// service IP, picks on the packet path: always the lowest instance number.
func TestTestOnlyPolicy(t *testing.T) {
	b := multiBuilder(3)
	b.Services[len(b.Services)-1].IPs = append(b.Services[len(b.Services)-1].IPs, PolicyIP{Policy: "Lowest", V4: a4("10.30.3.3")})
	tb, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	var h TableHolder
	h.Swap(tb)
	p, ctx := NewProcessor(&h, NewFlowTable(FlowConfig{})), NewWorkerCtx()
	for sp := uint16(1); sp < 10; sp++ {
		if _, ns, _ := sendFlow(t, p, ctx, a4("10.30.3.3"), sp); ns != a4("10.18.0.70") {
			t.Fatalf("Lowest chose %v", ns)
		}
	}
}
