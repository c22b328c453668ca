package control

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// FuzzFastInstanceAnswer: the fast encoder writes json.Marshal's bytes,
// or leaves the answer to it.
func FuzzFastInstanceAnswer(f *testing.F) {
	f.Add("app.ns.web.default", 3, "10.30.0.5", "fdff:2000::5", "c1", "10.18.0.2", "", "192.168.1.1", 8080)
	f.Add("a<b", -1, "", "", "c\"1", "", "fe80::1%eth0", "", 0)
	f.Add("é", 0, "::ffff:1.2.3.4", "fe80::1%<", "\x01", "0.0.0.0", "::", "::1", 65535)
	f.Fuzz(func(t *testing.T, job string, n int, ip4, ip6, cluster, ns4, ns6, host string, port int) {
		addr := func(s string) netip.Addr { a, _ := netip.ParseAddr(s); return a }
		a := api.InstanceAnswer{JobName: job, Instance: api.Instance{InstanceNumber: n, InstanceIP: addr(ip4),
			InstanceIPv6: addr(ip6), ClusterID: cluster, NamespaceIP: addr(ns4), NamespaceIPv6: addr(ns6),
			HostIP: addr(host), HostPort: port}}
		want, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := appendInstanceAnswer(nil, &a)
		if ok && string(got) != string(want) {
			t.Fatalf("fast %s\njson %s", got, want)
		}
		var ctx fasthttp.RequestCtx
		writeInstanceAnswer(&ctx, &a)
		if string(ctx.Response.Body()) != string(want)+"\n" || ctx.Response.StatusCode() != 200 {
			t.Fatalf("answer %d %s, want %s", ctx.Response.StatusCode(), ctx.Response.Body(), want)
		}
	})
}

// TestFastInstanceAnswerTakesThePlainShape: a deploy's usual answer takes
// the fast path, without allocating.
func TestFastInstanceAnswerTakesThePlainShape(t *testing.T) {
	a := benchAnswer()
	if _, ok := appendInstanceAnswer(nil, &a); !ok {
		t.Fatal("plain answer refused")
	}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { buf, _ = appendInstanceAnswer(buf[:0], &a) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

func benchAnswer() api.InstanceAnswer {
	return api.InstanceAnswer{JobName: "app.ns.web.default", Instance: api.Instance{InstanceNumber: 17,
		InstanceIP: netip.MustParseAddr("10.30.0.17"), InstanceIPv6: netip.MustParseAddr("fdff:2000::11"),
		ClusterID: "c1"}}
}

// BenchmarkInstanceAnswer: the deploy answer through encoding/json
// (writeJSON, before) and through the fast encoder.
func BenchmarkInstanceAnswer(b *testing.B) {
	a := benchAnswer()
	var ctx fasthttp.RequestCtx
	b.Run("writeJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			writeJSON(&ctx, 200, a)
		}
	})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			writeInstanceAnswer(&ctx, &a)
		}
	})
}
