package version

import "github.com/prometheus/client_golang/prometheus"

// Collector is the gauge oakwire_build_info{version,commit,goversion,bpf},
// always 1: the labels carry the information, the way Prometheus' own
// go_build_info does. Every role registers it on its /metrics.
func (i Info) Collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "oakwire_build_info",
		Help: "Which build runs: git describe version, commit, Go version, SHA-256 of each embedded BPF object. Always 1.",
		ConstLabels: prometheus.Labels{
			"version":   i.Version,
			"commit":    i.Commit,
			"goversion": i.GoVersion,
			"bpf":       i.BPFLabel(),
		},
	})
	g.Set(1)
	return g
}
