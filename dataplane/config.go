package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/fastpath"
	"github.com/oakwire/oakwire/fastpath/xsk"
)

// Sentinel errors of package dataplane.
var (
	// ErrNotSupported is returned on systems without AF_XDP (every OS but Linux).
	ErrNotSupported = fmt.Errorf("dataplane: %w on this system", errors.ErrUnsupported)
	// ErrInvalidConfig wraps every Config and PortConfig validation failure.
	ErrInvalidConfig = errors.New("dataplane: invalid config")
	// ErrClosed is returned by calls on a closed Engine.
	ErrClosed = errors.New("dataplane: closed")
	// ErrPortExists is returned by AddPort for an interface already attached.
	ErrPortExists = errors.New("dataplane: port exists")
	// ErrNoPort is returned by RemovePort for an unknown port.
	ErrNoPort = errors.New("dataplane: no such port")
)

// DefaultTunnelPort is the overlay's UDP port (SPEC §7.3): api's.
const DefaultTunnelPort = api.DefaultTunnelPort

// Resolver is the control side's hook for destinations in the service
// ranges that the table does not know (SPEC §7.3 egress 6). The engine
// calls Resolve from its slow-path goroutine, never from a worker, at most
// once per address until the answer or NegativeTTL passes; the packets
// that caused it wait in the slow path (a few per address, at most 3 s)
// and go on once a new table knows them. An implementation asks the cluster and
// pushes what it learns through Engine.SetServices; a non-nil error or an
// address that stays unknown is cached negatively for NegativeTTL.
type Resolver interface {
	Resolve(ctx context.Context, ip netip.Addr) error
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(ctx context.Context, ip netip.Addr) error

// Resolve calls f.
func (f ResolverFunc) Resolve(ctx context.Context, ip netip.Addr) error { return f(ctx, ip) }

// Config configures an Engine. Zero fields take defaults. The engine runs
// in the network namespace of the process (the node's): interfaces are
// looked up, sockets bound and programs attached there.
type Config struct {
	// Uplink is the node's underlay interface (required).
	Uplink string
	// NodeIP is this node's tunnel address on the uplink (required).
	NodeIP netip.Addr
	// TunnelPort is the overlay UDP port (default 50103).
	TunnelPort uint16
	// UnderlayMTU is the uplink's IP MTU; 0 reads it from the interface.
	UnderlayMTU int
	// Ranges are the platform ranges; zero means fastpath.DefaultRanges.
	Ranges fastpath.Ranges
	// Mode is the XDP attach mode (default generic: on veth it measured at
	// least as fast as native, DESIGN.md).
	Mode bpfprog.Mode
	// Workers is the number of worker threads; 0 means
	// xsk.DetectTopology().SuggestWorkers().
	Workers int
	// CPUs pins worker i to CPUs[i % len(CPUs)]; empty means no pinning.
	CPUs []int
	// Frames is the number of UMEM frames per socket (default 4096; each
	// socket has its own UMEM, see doc.go).
	Frames int
	// RingSize is the size of every ring of every socket (default 2048).
	RingSize int
	// Poller tunes hybrid polling (zero: xsk defaults, 200 µs spin).
	Poller xsk.PollerConfig
	// Flows configures the worker pool's flow table; zero fields take
	// fastpath.DefaultFlowConfig's values. Flows.PerPort bounds the flows
	// of one container port (default an eighth of the capacity, at least
	// 64): a port at its bound replaces its least recently used flow.
	Flows fastpath.FlowConfig
	// Resolver resolves unknown service IPs; nil drops them (counted).
	Resolver Resolver
	// NegativeTTL is how long an unresolvable address is not asked about
	// again (default 5 s).
	NegativeTTL time.Duration
	// SlowBatches bounds the slow-path queue, in batches of up to 64
	// packets (default 16). A full queue drops and counts.
	SlowBatches int
	// Logger gets the engine's few log lines (recovered panics,
	// rate-limited); nil means slog.Default().
	Logger *slog.Logger
	// Offload turns the kernel tier on (docs/design.md "The kernel
	// tier"): TC programs execute the flows the workers decided, and the
	// workers get only what the kernel punts to them, through a punt
	// device. Off: the AF_XDP path carries every packet.
	Offload bool
	// PinPath, with Offload, is a bpffs directory where the kernel
	// tier's links and flow maps are pinned, so decided flows go on while
	// the daemon is down and the next one re-adopts them. Empty: nothing
	// is pinned (everything goes with the process).
	PinPath string
	// TierFlows is the kernel tier's flow capacity (0: 65536).
	TierFlows int
}

// PortConfig describes a container port for AddPort.
type PortConfig struct {
	// Ifindex is the host-side veth in the engine's namespace.
	Ifindex int
	// HostMAC is the host side's MAC (source of frames delivered to the
	// container); zero reads it from the interface.
	HostMAC [6]byte
	// ContainerMAC is the container side's MAC (destination of frames
	// delivered to it).
	ContainerMAC [6]byte
	// NS4, NS6 are the container's nsIPs.
	NS4, NS6 netip.Addr
	// Job and Instance identify the service instance behind the port; its
	// instance IPs come from the instances given to SetServices.
	Job      string
	Instance uint32
	// Csum is the egress checksum mode (default recompute; CsumIncremental
	// when TX checksum offload is off on the container's interface).
	Csum fastpath.CsumMode
}

// Stats is a snapshot of the engine's counters, summed over workers.
type Stats struct {
	Mode    string // XDP attach mode in use
	Workers int
	CPUs    []int  // pinning in use (empty: not pinned)
	Yield   string // how spinning workers yield (xsk.YieldMode)
	// UplinkRxQueues is how many uplink RX queues have a socket: all of
	// them, up to MaxUplinkQueues (New logs when the uplink has more).
	// None with the kernel tier: the uplink's traffic comes punted.
	UplinkRxQueues int
	// Offload says the kernel tier is on.
	Offload bool
	// TierFlows is how many flows the kernel tier executes.
	TierFlows int
	Topology  string
	Sockets   int
	Ports     int
	Services  int
	Instances int
	Peers     int
	Flows     int
	// Fast is the per-packet logic's drop reasons and events.
	Fast fastpath.Stats
	// Counters are the engine's own counters (see counterNames) plus the
	// sockets' kernel statistics summed ("xsk_*"), the steering
	// programs' counters ("bpf_*") and the flow table's
	// (fastpath.FlowCounters: "flows_evicted_quota",
	// "flows_evicted_table_full", "flows_expired_unanswered").
	Counters map[string]uint64
}

// Engine counters, per worker, summed on read.
const (
	cRx = iota
	cTx
	cTxNoFrame     // destination socket had no free frame
	cTxRingFull    // TX ring full, dropped
	cCrossOut      // handed to another worker
	cCrossIn       // received from another worker
	cCrossFull     // cross-worker ring full, dropped
	cCrossNoSocket // destination socket gone
	cPassDropped   // ActPass on a steered frame: dropped
	cDropped       // ActDrop
	cSlowQueued    // copied to the slow path
	cSlowFull      // slow-path queue full, dropped
	cBatches
	cBadVerdict   // verdict's Off/Len outside its frame, or port out of range: dropped
	cPanics       // recovered panics (a batch, a round or a control call)
	cPanicDropped // frames dropped with a batch that panicked
	cPuntBad      // punted frame without tier metadata, or from an unknown interface
	cTierOpened   // kernel tier gates a worker opened
	cTierForced   // ... of them opened without all counted punts (lost on the way)
	numCounters
)

var counterNames = [numCounters]string{
	"rx", "tx", "tx_no_frame", "tx_ring_full", "cross_out", "cross_in", "cross_full",
	"cross_no_socket", "pass_dropped", "dropped", "slow_queued", "slow_full", "batches",
	"bad_verdict", "panics", "panic_dropped", "punt_bad", "tier_opened", "tier_forced",
}
