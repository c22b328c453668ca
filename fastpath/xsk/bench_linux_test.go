//go:build linux

package xsk

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// The echo ladder (STYLE.md item 14): the same UDP client in namespace B
// against (1) a kernel UDP echo server in namespace A, then (2) an AF_XDP
// worker that receives, swaps addresses and transmits from the same frame.
// 64-byte payloads. window=256 keeps at most 256 datagrams unanswered
// (loss-free rate); flood sends as fast as one Go sender can. pps counts
// echoes back at the client; the machine is in TestTopology's log.

func reportEcho(b *testing.B, got int, elapsed time.Duration) {
	b.Helper()
	if elapsed <= 0 {
		elapsed = time.Nanosecond
	}
	b.ReportMetric(float64(got)/elapsed.Seconds(), "pps")
	b.ReportMetric(100*float64(b.N-got)/float64(b.N), "%lost")
	b.ReportMetric(0, "ns/op") // ns/op counts the setup too; pps is the metric
}

func BenchmarkKernelEcho(b *testing.B) {
	for _, window := range []int{256, 0} {
		b.Run(windowName(window), func(b *testing.B) {
			bed := newBed(b, 1)
			p := bed.pairs[0]
			srv := listenUDP(b, bed.nsA, netip.AddrPortFrom(p.ipA, echoPort))
			go func() {
				buf := make([]byte, 2048)
				deadline := time.Now().Add(2 * time.Minute)
				for time.Now().Before(deadline) {
					n, from, err := srv.ReadFromUDPAddrPort(buf)
					if err != nil {
						return // closed by cleanup
					}
					srv.WriteToUDPAddrPort(buf[:n], from)
				}
			}()
			b.ResetTimer()
			got, elapsed := pumpChild(b, bed.nameB, netip.AddrPortFrom(p.ipB, 40000), netip.AddrPortFrom(p.ipA, echoPort), b.N, window, 64)
			b.StopTimer()
			reportEcho(b, got, elapsed)
		})
	}
}

func BenchmarkXSKEcho(b *testing.B) {
	for _, y := range []struct {
		name string
		mode YieldMode
	}{{"yield=go", YieldGo}, {"yield=os", YieldOS}, {"yield=none", YieldNone}} {
		for _, window := range []int{256, 0} {
			b.Run(y.name+"/"+windowName(window), func(b *testing.B) {
				bed := newBed(b, 1)
				p := bed.pairs[0]
				xsks := attachSteer(b, bed.nsA, p.idxA, echoPort)
				s := newSocketIn(b, bed.nsA, Config{Ifindex: p.idxA, Queue: 0})
				if err := xsks.Put(uint32(0), uint32(s.Fd())); err != nil {
					b.Fatal(err)
				}
				w := startWorkerPoll(b, s, s, bounce, PollerConfig{Yield: y.mode, Timeout: 50 * time.Millisecond})
				b.ReportAllocs()
				b.ResetTimer()
				got, elapsed := pumpChild(b, bed.nameB, netip.AddrPortFrom(p.ipB, 40000), netip.AddrPortFrom(p.ipA, echoPort), b.N, window, 64)
				b.StopTimer()
				w.halt()
				reportEcho(b, got, elapsed)
				st, _ := s.Stats()
				b.ReportMetric(float64(st.RxFillRingEmptyDescs), "fillempty")
				b.ReportMetric(float64(st.RxRingFull), "rxfull")
				b.ReportMetric(float64(st.RxDropped), "rxdropped")
				b.ReportMetric(float64(st.Transmitted)/float64(max(1, st.Kicks)), "pkts/kick")
			})
		}
	}
}

func windowName(w int) string {
	if w <= 0 {
		return "flood"
	}
	return fmt.Sprintf("window=%d", w)
}
