package netmanager

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics is the daemon's Prometheus registry: its own counters plus the
// data plane's, read from Dataplane.Stats on every scrape.
type metrics struct {
	reg          *prometheus.Registry
	deploys      counter
	deployErrors counter
	undeploys    counter
	reportErrors counter
	// nodeIPChanges counts node IP changes followed on the uplink.
	nodeIPChanges counter
}

// counter is a monotonically increasing count read by /status and /metrics.
type counter struct{ v atomic.Uint64 }

func (c *counter) Inc()          { c.v.Add(1) }
func (c *counter) Value() uint64 { return c.v.Load() }

func newMetrics(d *Daemon) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	for _, c := range []struct {
		name, help string
		c          *counter
	}{
		{"oakwire_netmanager_deploys_total", "Containers attached.", &m.deploys},
		{"oakwire_netmanager_deploy_errors_total", "Deploy requests refused or failed (rolled back).", &m.deployErrors},
		{"oakwire_netmanager_undeploys_total", "Containers detached.", &m.undeploys},
		{"oakwire_netmanager_cluster_report_errors_total", "Undeploy reports the cluster did not take.", &m.reportErrors},
		{"oakwire_netmanager_node_ip_changes_total", "Node IP changes followed on the uplink.", &m.nodeIPChanges},
	} {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help},
			func() float64 { return float64(c.c.Value()) }))
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "oakwire_netmanager_containers", Help: "Containers attached now."},
		func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.st == nil {
				return 0
			}
			return float64(len(d.st.Containers))
		}))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "oakwire_netmanager_registered", Help: "1 once the node has its subnets."},
		func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.st == nil || d.st.Subnets == nil {
				return 0
			}
			return 1
		}))
	m.reg.MustRegister(dataplaneCollector{d}, flowStatsCollector{d.flowStats}, d.build.Collector())
	return m
}

// flowStatsCollector exports the per-service counters (flowmetrics.go).
type flowStatsCollector struct{ s *flowStats }

func (c flowStatsCollector) Describe(ch chan<- *prometheus.Desc) { c.s.describe(ch) }
func (c flowStatsCollector) Collect(ch chan<- prometheus.Metric) { c.s.collect(ch) }

// dataplaneCollector exports DataplaneStats.
type dataplaneCollector struct{ d *Daemon }

var (
	dpCounterDesc = prometheus.NewDesc("oakwire_dataplane_events_total",
		"Data-plane counters (packets, drops by reason), summed over workers.", []string{"name"}, nil)
	dpTableDesc = prometheus.NewDesc("oakwire_dataplane_table_entries",
		"Entries in the data plane's tables.", []string{"table"}, nil)
	dpSocketsDesc = prometheus.NewDesc("oakwire_dataplane_sockets", "AF_XDP sockets open.", nil, nil)
	// Per tier: kernel (the TC programs executed them) or workers (the
	// AF_XDP worker pool).
	dpTierPacketsDesc = prometheus.NewDesc("oakwire_dataplane_tier_packets_total",
		"Packets per tier: kernel (executed by the kernel tier's programs) or workers (received by the AF_XDP worker pool).", []string{"tier"}, nil)
	dpTierFlowsDesc = prometheus.NewDesc("oakwire_dataplane_tier_flows",
		"Flows per tier now: kernel (executed by the kernel tier) or workers (the rest of the worker pool's flow table).", []string{"tier"}, nil)
)

func (c dataplaneCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- dpCounterDesc
	ch <- dpTableDesc
	ch <- dpSocketsDesc
	ch <- dpTierPacketsDesc
	ch <- dpTierFlowsDesc
}

func (c dataplaneCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.d.dataplaneStats()
	for k, v := range s.Counters {
		ch <- prometheus.MustNewConstMetric(dpCounterDesc, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range s.Tables {
		ch <- prometheus.MustNewConstMetric(dpTableDesc, prometheus.GaugeValue, float64(v), k)
	}
	ch <- prometheus.MustNewConstMetric(dpSocketsDesc, prometheus.GaugeValue, float64(s.Sockets))
	kernel := s.Counters["tier_fast_port"] + s.Counters["tier_fast_uplink"]
	ch <- prometheus.MustNewConstMetric(dpTierPacketsDesc, prometheus.CounterValue, float64(kernel), "kernel")
	ch <- prometheus.MustNewConstMetric(dpTierPacketsDesc, prometheus.CounterValue, float64(s.Counters["rx"]), "workers")
	kf := s.Tables["kernel_flows"]
	ch <- prometheus.MustNewConstMetric(dpTierFlowsDesc, prometheus.GaugeValue, float64(kf), "kernel")
	ch <- prometheus.MustNewConstMetric(dpTierFlowsDesc, prometheus.GaugeValue, float64(max(0, s.Tables["flows"]-kf)), "workers")
}
