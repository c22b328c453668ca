package deploy

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/oakwire/oakwire/internal/loadtool"
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

// The workloads' results (owload's JSON): internal/loadtool's types, named
// here too for the deployment's callers.
type (
	// AskResult is the report of one owload udpask/tcpask run.
	AskResult = loadtool.AskResult
	// Answer is one request of an AskResult.
	Answer = loadtool.Answer
	// FloodResult is the report of owload udpflood (Rate).
	FloodResult = loadtool.FloodResult
	// SinkResult is the report of owload udpsink (Rate).
	SinkResult = loadtool.SinkResult
)
