package fastpath

import "testing"

func TestNames(t *testing.T) {
	if len(reasonNames) != int(NumReasons) || len(eventNames) != int(NumEvents) || len(actionNames) != int(numActions) {
		t.Fatalf("name tables out of step: %d/%d reasons, %d/%d events, %d/%d actions",
			len(reasonNames), NumReasons, len(eventNames), NumEvents, len(actionNames), numActions)
	}
	seen := map[string]bool{}
	for r := DropReason(0); r < NumReasons; r++ {
		if seen[r.String()] {
			t.Errorf("duplicate reason name %q", r)
		}
		seen[r.String()] = true
	}
	if NumReasons.String() != "reason?" || NumEvents.String() != "event?" {
		t.Error("out-of-range names")
	}
}

func TestStatsSum(t *testing.T) {
	p, ctx := newTestProc(t, nodeA)
	f := inFrame(fromCli(udpPkt(a4("10.18.0.9"), svcR4, 1, 2, ipo{})))
	var v [1]Verdict
	p.Egress(ctx, 1, []Frame{f}, v[:])
	var s, total Stats
	ctx.Stats(&s)
	total.Add(&s)
	total.Add(&s)
	if s.Drops[ReasonSpoofed] != 1 || total.Drops[ReasonSpoofed] != 2 {
		t.Fatalf("spoofed counter %d, sum %d", s.Drops[ReasonSpoofed], total.Drops[ReasonSpoofed])
	}
}

func TestBuildValidation(t *testing.T) {
	bad := map[string]func(b *Builder){
		"no node":              func(b *Builder) { b.Node.Addr = netipAddrPortZero },
		"unknown policy":       func(b *Builder) { b.Services[0].IPs[0].Policy = "Nope" },
		"service IP outside":   func(b *Builder) { b.Services[0].IPs[0].V4 = a4("10.18.0.1") },
		"duplicate address":    func(b *Builder) { b.Services[1].IPs[0].V4 = svcR4 },
		"instance of nothing":  func(b *Builder) { b.Instances[0].Job = "x.y.z.w" },
		"local on no port":     func(b *Builder) { b.Instances[1].Port = 7 },
		"duplicate instance":   func(b *Builder) { b.Instances[2].Job, b.Instances[2].IP4 = "a.b.r.n", a4("10.30.8.8") },
		"port twice":           func(b *Builder) { b.Ports[1].ID = 1 },
		"tiny MTU":             func(b *Builder) { b.Node.UnderlayMTU = 500 },
		"remote without node":  func(b *Builder) { b.Instances[0].Node = netipAddrPortZero },
		"duplicate service":    func(b *Builder) { b.Services[1].Job = "a.b.r.n" },
		"nsIP on two ports":    func(b *Builder) { b.Ports[1].NS4 = cli4 },
		"port beyond MaxPorts": func(b *Builder) { b.Ports[1].ID = MaxPorts },
	}
	for name, mut := range bad {
		b := testBuilder(nodeA)
		mut(b)
		if _, err := b.Build(); err == nil {
			t.Errorf("%s: built", name)
		}
	}
}
