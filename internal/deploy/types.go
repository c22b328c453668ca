package deploy

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/oakwire/oakwire/internal/testbed"
	"github.com/oakwire/oakwire/policy"
)

// Errors callers can test with errors.Is.
var (
	// ErrNotSupported: the emulated deployment needs Linux (an
	// errors.ErrUnsupported).
	ErrNotSupported = fmt.Errorf("deploy: needs Linux: %w", errors.ErrUnsupported)
	// ErrNetManagerExited: a netmanager process exited while starting (for
	// example because its data plane is not available); the error carries
	// the tail of its log.
	ErrNetManagerExited = errors.New("netmanager exited")
)

// Options configures Up. The zero value is three worker nodes with the
// AF_XDP data plane.
type Options struct {
	// Nodes is the number of worker nodes (named "a", "b", ...); 0 means 3.
	Nodes int
	// Dataplane is netmanager's --dataplane: "xdp" (default) or "none"
	// (kernel routing only: no service IPs, no overlay).
	Dataplane string
	// Workers is netmanager's --workers; 0 leaves its default.
	Workers int
	// Offload is netmanager's --offload (on or off); empty leaves its
	// default (on: the kernel tier).
	Offload string
	// BinDir holds prebuilt servicemanager, netmanager and owload binaries
	// (see Build); empty means Up builds them into the work directory.
	BinDir string
	// WorkDir keeps logs, sockets, state files and built binaries; empty
	// means a new temporary directory, removed by Close unless KeepWorkDir.
	WorkDir     string
	KeepWorkDir bool
	// ClusterID is the (first) cluster's id at root; empty means
	// "cluster1". Further clusters are "cluster2", "cluster3", ...
	ClusterID string
	// ClusterNodes splits the worker nodes, in order, among clusters: {2,
	// 1} puts a and b in the first cluster and c in a second. Each cluster
	// is its own servicemanager process with its own Redis key prefix.
	// Empty means one cluster with every node; the counts must add up to
	// Nodes.
	ClusterNodes []int
	// Bed, when set, is a testbed to deploy on instead of making one (the
	// perf suite's two-node topology): Close leaves it. Then Existing are
	// its worker nodes (Nodes is their number) and Ctl the node the
	// control services run on (it may be a worker).
	Bed      *testbed.Bed
	Existing []*testbed.Node
	Ctl      *testbed.Node
	// NetManagerArgs are more netmanager flags for every node
	// (--worker-cpus, --worker-spin, ...).
	NetManagerArgs []string
	// NodeArgs are more netmanager flags per node, in node order (after
	// NetManagerArgs; shorter than the node list is fine).
	NodeArgs [][]string
	// Log receives progress lines and, on failure, the tails of the
	// processes' logs; nil discards them.
	Log io.Writer
	// StartTimeout bounds the wait for each process to become ready; 0
	// means 20 s.
	StartTimeout time.Duration
}

// IPPair is a v4 and a v6 address.
type IPPair struct{ V4, V6 netip.Addr }

// Service is a service deployed through root.
type Service struct {
	ID  string
	Job string // app.appns.service.servicens
	// IPs maps a policy's name (IpType) to its service IPs.
	IPs map[string]IPPair
}

// RR and Closest return the service's IPs of those policies.
func (s *Service) RR() IPPair      { return s.IPs[policy.RR.String()] }
func (s *Service) Closest() IPPair { return s.IPs[policy.Closest.String()] }

// Reply, Answer and AskResult mirror owload's JSON (cmd/owload).
type Answer struct {
	Flow  int    `json:"flow"`
	Seq   int    `json:"seq"`
	OK    bool   `json:"ok"`
	Tag   string `json:"tag,omitempty"`
	Peer  string `json:"peer,omitempty"`
	From  string `json:"from,omitempty"`
	Local string `json:"local,omitempty"`
	RTTus int64  `json:"rtt_us,omitempty"`
	Err   string `json:"err,omitempty"`
}

// AskResult is the report of one owload udpask/tcpask run.
type AskResult struct {
	Proto    string   `json:"proto"`
	Addr     string   `json:"addr"`
	Sent     int      `json:"sent"`
	Answered int      `json:"answered"`
	P50us    int64    `json:"p50_us"`
	P99us    int64    `json:"p99_us"`
	Answers  []Answer `json:"answers"`
}

// ByTag counts answered requests per server tag.
func (a *AskResult) ByTag() map[string]int {
	m := map[string]int{}
	for _, x := range a.Answers {
		if x.OK {
			m[x.Tag]++
		}
	}
	return m
}

// FlowsByTag counts flows per server tag; a flow answered by several
// servers counts for each (see Sticky).
func (a *AskResult) FlowsByTag() map[string]int {
	m := map[string]int{}
	for _, tags := range a.flowTags() {
		for _, t := range tags {
			m[t]++
		}
	}
	return m
}

// Sticky returns the flows answered by more than one server (nil: every
// flow stuck to one server).
func (a *AskResult) Sticky() (mixed []int) {
	for f, tags := range a.flowTags() {
		if len(tags) > 1 {
			mixed = append(mixed, f)
		}
	}
	slices.Sort(mixed)
	return mixed
}

func (a *AskResult) flowTags() map[int][]string {
	m := map[int][]string{}
	for _, x := range a.Answers {
		if x.OK && !slices.Contains(m[x.Flow], x.Tag) {
			m[x.Flow] = append(m[x.Flow], x.Tag)
		}
	}
	return m
}

// Peers returns the distinct source addresses (IP only) servers saw.
func (a *AskResult) Peers() []netip.Addr {
	var out []netip.Addr
	for _, x := range a.Answers {
		if ap, err := netip.ParseAddrPort(x.Peer); err == nil && !slices.Contains(out, ap.Addr()) {
			out = append(out, ap.Addr())
		}
	}
	return out
}

// Froms returns the distinct addresses (IP only) replies came from.
func (a *AskResult) Froms() []netip.Addr {
	var out []netip.Addr
	for _, x := range a.Answers {
		if ap, err := netip.ParseAddrPort(x.From); err == nil && x.OK && !slices.Contains(out, ap.Addr()) {
			out = append(out, ap.Addr())
		}
	}
	return out
}

// Failures describes the failed requests ("flow/seq: error", at most 5),
// or "" if none failed.
func (a *AskResult) Failures() string {
	var out []string
	n := 0
	for _, x := range a.Answers {
		if x.OK {
			continue
		}
		if n++; n <= 5 {
			out = append(out, fmt.Sprintf("flow %d seq %d: %s", x.Flow, x.Seq, x.Err))
		}
	}
	if n > 5 {
		out = append(out, fmt.Sprintf("and %d more", n-5))
	}
	return strings.Join(out, "; ")
}

// FirstError returns the first failed request's error text, or "".
func (a *AskResult) FirstError() string {
	for _, x := range a.Answers {
		if !x.OK {
			return x.Err
		}
	}
	return ""
}

// SinkResult and FloodResult mirror owload udpsink / udpflood.
type SinkResult struct {
	Received int     `json:"received"`
	Bytes    int64   `json:"bytes"`
	Seconds  float64 `json:"seconds"`
}

// FloodResult is the report of owload udpflood.
type FloodResult struct {
	Sent    int     `json:"sent"`
	Errors  int     `json:"errors"`
	Seconds float64 `json:"seconds"`
}
