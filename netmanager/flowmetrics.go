package netmanager

import (
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Per-service and per-instance traffic counters (/metrics), aggregated
// from the data plane's flow listing (Dataplane.Flows) by sampling it
// every flowSampleEvery.
//
// Labels: service (job name), instance_number (not "instance", which
// Prometheus gives every scraped series: the target) and direction: "out"
// for packets local containers sent on flows to that instance (a client's
// requests; a server's replies to the client's instance), "in" for packets
// local containers received from it through the tunnel. The pair (service,
// instance_number) always names the remote end, so on a client's node the
// counters show how flows spread over a service's instances.
//
// Bounds: at most ServiceMetricsMax (service, instance_number, direction)
// series (configuration `service-metrics-max`, default 500) exist at once;
// flows of further ones count in the series service="_other",
// instance_number="_other". A series with no live flow for flowSeriesIdle
// is dropped (a counter that comes back starts from 0, which rate() reads
// as a reset).
//
// What is counted: flows (both tiers; a flow shorter than a sample is
// missed) and, for packets and bytes, what the kernel tier executed, read
// from its per-flow slots: the AF_XDP workers do not count per flow, so
// with `offload: off` the packet and byte counters stay at 0, and the
// first packets of every flow (which the workers decide) are not in them.
// Packets a flow carried after the last sample before it ended are lost.

const (
	flowSampleEvery = 2 * time.Second
	flowSeriesIdle  = 10 * time.Minute
	// otherLabel is the service and instance of the overflow series.
	otherLabel = "_other"
)

var (
	svcFlowsDesc = prometheus.NewDesc("oakwire_service_flows_total",
		"Flows seen per remote service instance and direction (both tiers, sampled every 2 s).",
		[]string{"service", "instance_number", "direction"}, nil)
	svcActiveDesc = prometheus.NewDesc("oakwire_service_active_flows",
		"Live flows per remote service instance and direction at the last sample.",
		[]string{"service", "instance_number", "direction"}, nil)
	svcPacketsDesc = prometheus.NewDesc("oakwire_service_packets_total",
		"Packets the kernel tier carried per remote service instance and direction (the AF_XDP workers do not count per flow).",
		[]string{"service", "instance_number", "direction"}, nil)
	svcBytesDesc = prometheus.NewDesc("oakwire_service_bytes_total",
		"Bytes the kernel tier carried per remote service instance and direction (the AF_XDP workers do not count per flow).",
		[]string{"service", "instance_number", "direction"}, nil)
	svcSeriesDesc = prometheus.NewDesc("oakwire_service_metrics_series",
		"Series of the oakwire_service_* metrics in use, and their limit (service-metrics-max).",
		[]string{"kind"}, nil)
)

type seriesKey struct{ service, instance, direction string }

type seriesVal struct {
	flows, packets, bytes uint64
	active                int
	lastActive            time.Time
}

type flowKey struct {
	proto, src, dst string
	ingress         bool
}

type flowCount struct{ packets, bytes uint64 }

// flowStats holds the counters. sample and collect may run concurrently.
type flowStats struct {
	max int
	// sampling is set while a sample runs (one at a time).
	sampling sync.Mutex
	// mu guards the fields below.
	mu     sync.Mutex
	last   map[flowKey]flowCount
	series map[seriesKey]*seriesVal
}

func newFlowStats(max int) *flowStats {
	if max <= 0 {
		max = 500
	}
	return &flowStats{max: max, last: map[flowKey]flowCount{}, series: map[seriesKey]*seriesVal{}}
}

// attribution names the remote (service, instance) of a flow; ok false
// leaves the flow out.
type attribution func(Flow) (service string, instance int, ok bool)

// sample folds one listing of the flows into the counters.
func (s *flowStats) sample(fs []Flow, attr attribution, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.series {
		v.active = 0
	}
	next := make(map[flowKey]flowCount, len(fs))
	for _, f := range fs {
		svc, inst, ok := attr(f)
		if !ok {
			continue
		}
		dir := "out"
		if f.Ingress {
			dir = "in"
		}
		k := flowKey{f.Proto, f.Src, f.Dst, f.Ingress}
		cur := flowCount{f.Packets, f.Bytes}
		next[k] = cur
		v := s.seriesLocked(seriesKey{svc, strconv.Itoa(inst), dir}, now)
		prev, seen := s.last[k]
		if !seen || cur.packets < prev.packets || cur.bytes < prev.bytes {
			v.flows++ // new, or the same 5-tuple again after the old flow ended
			prev = flowCount{}
		}
		v.packets += cur.packets - prev.packets
		v.bytes += cur.bytes - prev.bytes
		v.active++
		v.lastActive = now
	}
	s.last = next
	for k, v := range s.series {
		if v.active == 0 && now.Sub(v.lastActive) > flowSeriesIdle {
			delete(s.series, k)
		}
	}
}

// seriesLocked returns the series of k, or the overflow series of its
// direction when the limit is reached. s.mu held.
func (s *flowStats) seriesLocked(k seriesKey, now time.Time) *seriesVal {
	if v, ok := s.series[k]; ok {
		return v
	}
	if len(s.series) >= s.max {
		k = seriesKey{otherLabel, otherLabel, k.direction}
		if v, ok := s.series[k]; ok {
			return v
		}
	}
	v := &seriesVal{lastActive: now}
	s.series[k] = v
	return v
}

func (s *flowStats) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{svcFlowsDesc, svcActiveDesc, svcPacketsDesc, svcBytesDesc, svcSeriesDesc} {
		ch <- d
	}
}

func (s *flowStats) collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.series {
		l := []string{k.service, k.instance, k.direction}
		ch <- prometheus.MustNewConstMetric(svcFlowsDesc, prometheus.CounterValue, float64(v.flows), l...)
		ch <- prometheus.MustNewConstMetric(svcActiveDesc, prometheus.GaugeValue, float64(v.active), l...)
		ch <- prometheus.MustNewConstMetric(svcPacketsDesc, prometheus.CounterValue, float64(v.packets), l...)
		ch <- prometheus.MustNewConstMetric(svcBytesDesc, prometheus.CounterValue, float64(v.bytes), l...)
	}
	ch <- prometheus.MustNewConstMetric(svcSeriesDesc, prometheus.GaugeValue, float64(len(s.series)), "used")
	ch <- prometheus.MustNewConstMetric(svcSeriesDesc, prometheus.GaugeValue, float64(s.max), "limit")
}

// sampleFlows samples the data plane's flows in the background, at most
// every flowSampleEvery (Run's tick).
func (d *Daemon) sampleFlows() {
	svcs := d.svcs.Load()
	if svcs == nil || !d.flowStats.sampling.TryLock() {
		return
	}
	go func() {
		defer d.flowStats.sampling.Unlock()
		if time.Since(d.lastSample) < flowSampleEvery-100*time.Millisecond {
			return
		}
		d.lastSample = time.Now()
		d.flowStats.sample(d.dp.Flows(), viewAttribution(svcs.View), time.Now())
	}()
}

// viewAttribution names a flow's remote instance: the instance its policy
// chose (out), or the owner of its source instance IP (in).
func viewAttribution(v *ServiceView) attribution {
	return func(f Flow) (string, int, bool) {
		if !f.Ingress {
			if f.Job == "" || f.Instance == nil {
				return "", 0, false
			}
			return f.Job, int(*f.Instance), true
		}
		src, err := netip.ParseAddrPort(f.Src)
		if err != nil {
			return "", 0, false
		}
		return v.InstanceAt(src.Addr())
	}
}
