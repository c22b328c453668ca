//go:build linux

package dataplane

import (
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"testing"
)

// BenchmarkUDPFlood measures delivered 64-byte UDP packets per second from
// the client container on node A to the server container on node B, through
// the overlay (client → service IP → AF_XDP → tunnel → AF_XDP → server) and
// through plain routing on the same topology (client → server nsIP, the
// nodes route the subnets to each other: the limit), interleaved over 3
// rounds with the order rotated, medians reported. Flood sender (sendmmsg,
// batches of 64, warm-up) on CPU 0, sink (recvmmsg) on CPU 1, engines with
// their default placement (one worker each, unpinned).
func BenchmarkUDPFlood(b *testing.B) {
	tp := newTopo(b)
	spa, spb := tp.spec(tp.a, 0, tp.client, tp.local), tp.spec(tp.b, 0, tp.server)
	// OAKWIRE_BENCH_WORKER_CPU pins both engines' workers to one CPU (the
	// sender is on 0, the sink on 1); unset: not pinned.
	if c := os.Getenv("OAKWIRE_BENCH_WORKER_CPU"); c != "" {
		n, err := strconv.Atoi(c)
		if err != nil {
			b.Fatal(err)
		}
		spa.CPUs, spb.CPUs = []int{n}, []int{n}
	}
	// OAKWIRE_BENCH_YIELD=go makes spinning workers runtime.Gosched instead
	// of sched_yield (experiment).
	spa.YieldGo = os.Getenv("OAKWIRE_BENCH_YIELD") == "go"
	spb.YieldGo = spa.YieldGo
	ea := tp.startEngine(b, tp.a, spa)
	eb := tp.startEngine(b, tp.b, spb)
	const count = 300_000
	rate := 100_000
	if r, err := strconv.Atoi(os.Getenv("OAKWIRE_BENCH_RATE")); err == nil && r > 0 {
		rate = r
	}
	type path struct {
		name string
		dst  netip.AddrPort
		rate int // 0: flood
	}
	paths := []path{
		{"routed", netip.AddrPortFrom(tp.server.ns4, 9100), 0},
		{"oakwire", netip.AddrPortFrom(svcRemote4, 9100), 0},
		// The same at a fixed offered rate, for the loss-free rate.
		{fmt.Sprintf("oakwire@%dk", rate/1000), netip.AddrPortFrom(svcRemote4, 9100), rate},
	}
	pps := map[string][]float64{}
	loss := map[string][]float64{}
	for i := 0; i < b.N; i++ {
		for round := range 3 {
			for k := range paths {
				p := paths[(k+round)%len(paths)]
				sent, recv := tp.udpFlood(b, p.dst, count, p.rate)
				r := 0.0
				if recv.Seconds > 0 {
					r = float64(recv.Timed) / recv.Seconds
				}
				l := 100 * (1 - float64(recv.Packets)/float64(sent.Packets))
				b.Logf("round %d %-8s sent %d in %.2fs (%.0f pps offered), delivered %d = %.0f pps, loss %.2f %%",
					round, p.name, sent.Packets, sent.Seconds, float64(sent.Packets)/sent.Seconds, recv.Packets, r, l)
				pps[p.name] = append(pps[p.name], r)
				loss[p.name] = append(loss[p.name], l)
			}
		}
	}
	for _, p := range paths {
		b.ReportMetric(median(pps[p.name]), "pps-"+p.name)
		b.ReportMetric(median(loss[p.name]), "%lost-"+p.name)
	}
	b.ReportMetric(median(pps["oakwire"])/median(pps["routed"]), "oakwire/routed")
	sa, sb := ea.stats(b), eb.stats(b)
	b.Logf("node A: %s, %d workers on CPUs %v, counters %v", sa.Mode, sa.Workers, sa.CPUs, nonZero(sa.Counters))
	b.Logf("node B: counters %v", nonZero(sb.Counters))
	b.Logf("machine: %s", sa.Topology)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
