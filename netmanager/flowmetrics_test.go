package netmanager

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func u32(v uint32) *uint32 { return &v }

// byJob attributes egress flows by their Job and Instance, ingress ones to
// "in.svc" instance 7.
func byJob(f Flow) (string, int, bool) {
	if f.Ingress {
		return "a.b.in.svc", 7, true
	}
	if f.Job == "" || f.Instance == nil {
		return "", 0, false
	}
	return f.Job, int(*f.Instance), true
}

type statsReg struct{ s *flowStats }

func (r statsReg) Describe(ch chan<- *prometheus.Desc) { r.s.describe(ch) }
func (r statsReg) Collect(ch chan<- prometheus.Metric) { r.s.collect(ch) }

func value(t *testing.T, s *flowStats, metric, svc, inst, dir string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(statsReg{s})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["service"] == svc && l["instance_number"] == inst && l["direction"] == dir {
				if m.GetCounter() != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// TestFlowStats: counters grow by what each flow's kernel counts grew,
// a flow counts once, a 5-tuple seen again with smaller counts is a new
// flow, and the series stay within the limit.
func TestFlowStats(t *testing.T) {
	s := newFlowStats(3)
	now := time.Unix(1000, 0)
	f1 := Flow{Proto: "udp", Src: "10.18.0.2:1000", Dst: "10.30.0.2:7000", Job: "a.b.web.c", Instance: u32(0), Packets: 5, Bytes: 500}
	f2 := Flow{Proto: "udp", Src: "10.18.0.2:1001", Dst: "10.30.0.2:7000", Job: "a.b.web.c", Instance: u32(1), Packets: 2, Bytes: 200}
	in := Flow{Proto: "udp", Src: "10.30.0.3:7000", Dst: "10.18.0.2:1000", Ingress: true, Packets: 4, Bytes: 400}
	s.sample([]Flow{f1, f2, in, {Proto: "udp", Src: "x", Dst: "y"}}, byJob, now)
	f1.Packets, f1.Bytes = 9, 900
	s.sample([]Flow{f1, in}, byJob, now.Add(2*time.Second))
	for _, c := range []struct {
		metric, svc, inst, dir string
		want                   float64
	}{
		{"oakwire_service_packets_total", "a.b.web.c", "0", "out", 9},
		{"oakwire_service_bytes_total", "a.b.web.c", "0", "out", 900},
		{"oakwire_service_flows_total", "a.b.web.c", "0", "out", 1},
		{"oakwire_service_packets_total", "a.b.web.c", "1", "out", 2},
		{"oakwire_service_active_flows", "a.b.web.c", "1", "out", 0},
		{"oakwire_service_active_flows", "a.b.web.c", "0", "out", 1},
		{"oakwire_service_packets_total", "a.b.in.svc", "7", "in", 4},
	} {
		if got := value(t, s, c.metric, c.svc, c.inst, c.dir); got != c.want {
			t.Errorf("%s{%s,%s,%s} = %v, want %v", c.metric, c.svc, c.inst, c.dir, got, c.want)
		}
	}
	// The same 5-tuple with fewer packets: the old flow ended, a new one began.
	f1.Packets, f1.Bytes = 1, 100
	s.sample([]Flow{f1}, byJob, now.Add(4*time.Second))
	if got := value(t, s, "oakwire_service_flows_total", "a.b.web.c", "0", "out"); got != 2 {
		t.Errorf("flows after a 5-tuple came back: %v, want 2", got)
	}
	if got := value(t, s, "oakwire_service_packets_total", "a.b.web.c", "0", "out"); got != 10 {
		t.Errorf("packets after a 5-tuple came back: %v, want 10", got)
	}
	// Over the limit (3 series): the rest counts as _other.
	for i := range 5 {
		s.sample([]Flow{f1, {Proto: "tcp", Src: "s", Dst: "d", Job: "a.b.more.c", Instance: u32(uint32(i)), Packets: 1}}, byJob, now.Add(6*time.Second))
	}
	if got := value(t, s, "oakwire_service_flows_total", otherLabel, otherLabel, "out"); got < 1 {
		t.Errorf("no _other series past the limit")
	}
	if n := testutil.CollectAndCount(statsReg{s}, "oakwire_service_flows_total"); n > 4 {
		t.Errorf("%d flow series, want at most the limit 3 and _other", n)
	}
	// Idle series go.
	s.sample(nil, byJob, now.Add(time.Hour))
	if n := testutil.CollectAndCount(statsReg{s}, "oakwire_service_flows_total"); n != 0 {
		t.Errorf("%d series an hour after the last flow, want 0", n)
	}
	if err := testutil.CollectAndCompare(statsReg{s}, strings.NewReader(`
# HELP oakwire_service_metrics_series Series of the oakwire_service_* metrics in use, and their limit (service-metrics-max).
# TYPE oakwire_service_metrics_series gauge
oakwire_service_metrics_series{kind="limit"} 3
oakwire_service_metrics_series{kind="used"} 0
`), "oakwire_service_metrics_series"); err != nil {
		t.Error(err)
	}
}
