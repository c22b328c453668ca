package fastpath

import "sync/atomic"

// PortID names a local container port (the host side of a container's veth
// with its AF_XDP socket). The AF_XDP layer and the table agree on the
// numbers; they are small and dense (see MaxPorts).
type PortID uint16

// MaxPorts bounds PortID values accepted by the Builder.
const MaxPorts = 4096

// Frame is one received frame inside a UMEM frame.
//
// Buf is the whole UMEM frame; the Ethernet frame is Buf[Off:Off+Len]. On RX
// the kernel places packets 256 bytes into the frame (headroom), which is
// where Egress writes the outer tunnel headers. Buf must stay valid and
// unshared for the duration of the Egress/Ingress call that receives it.
type Frame struct {
	Buf      []byte
	Off, Len int
}

// Action is what the worker does with a frame after processing.
type Action uint8

const (
	// ActDrop: return the frame to the fill ring. Verdict.Reason says why.
	ActDrop Action = iota
	// ActPass: not for us; the frame is unchanged. The worker hands it to the
	// kernel (or, on an XSK that only receives steered traffic, drops it and
	// counts; the XDP program should not have steered it).
	ActPass
	// ActTxPort: transmit Buf[Off:Off+Len] on local container port Port.
	ActTxPort
	// ActTxUplink: transmit Buf[Off:Off+Len] on the uplink.
	ActTxUplink
	// ActSlowPath: hand Buf[Off:Off+Len] to the daemon's slow path, Reason
	// says what it needs (ReasonUnknownService: the original frame, resolve
	// the destination; ReasonUnknownSource: the original tunnel frame,
	// resolve the inner source; ReasonNoNeighbor: a fully encapsulated frame whose
	// Ethernet destination is zero: send its UDP payload through a kernel
	// UDP socket to the outer destination address and port).
	ActSlowPath
	numActions
)

var actionNames = [...]string{"drop", "pass", "tx-port", "tx-uplink", "slow-path"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "action?"
}

// Verdict is the outcome for one frame. Off and Len give the bytes to send
// inside the same Frame.Buf: encapsulation moves Off back into the headroom,
// decapsulation moves it forward.
type Verdict struct {
	Action Action
	Port   PortID
	Reason DropReason
	Off    int
	Len    int
}

// DropReason says why a frame was dropped (or sent to the slow path). Every
// reason has a per-worker counter.
type DropReason uint8

const (
	ReasonNone DropReason = iota
	// Parsing.
	ReasonNotIP         // EtherType is neither IPv4 nor IPv6 (ARP, ND over IPv6 is IP): passed, not dropped
	ReasonTruncatedEth  // shorter than an Ethernet header (or its 802.1Q tag)
	ReasonVLANStacked   // more than one 802.1Q/802.1ad tag
	ReasonTruncatedIPv4 // shorter than the IPv4 header or its total length
	ReasonBadIPv4       // version, IHL or total length inconsistent
	ReasonTruncatedIPv6 // shorter than the IPv6 header, payload length or an extension header
	ReasonBadIPv6       // version nibble is not 6 under the IPv6 EtherType
	ReasonBadIPv6Ext    // hop-by-hop not first, or too many extension headers
	ReasonTruncatedTCP  // TCP header cut short
	ReasonBadTCP        // TCP data offset < 5
	ReasonTruncatedUDP  // UDP header cut short
	ReasonBadUDPLength  // UDP length field below 8 or beyond the packet
	ReasonTruncatedICMP // ICMP header cut short
	ReasonTinyFragment  // first fragment too short to hold the transport header
	ReasonBadEmbedded   // ICMP error whose quoted packet cannot be parsed
	// Policy and translation (egress).
	ReasonSpoofed          // source is not the container's nsIP
	ReasonUnknownPort      // frame from a port the table does not know
	ReasonUnknownService   // destination in the service range but unknown (slow path)
	ReasonNoInstance       // service has no instance the policy can choose
	ReasonNoFamily         // chosen instance or port lacks an address of the packet's family
	ReasonUnsupportedProto // protocol that cannot be balanced (no ports), or a fragmented ICMP error, to a service IP
	ReasonFragUnknown      // non-first fragment to a service IP whose first fragment was not seen
	ReasonFlowTableFull    // a new flow could not be inserted
	ReasonNoHeadroom       // not enough headroom in front of the frame for the outer headers
	ReasonTooBig           // too big for the tunnel and may not get an ICMP error (no DF, an ICMP error itself, or IPv6 of ≤ 1280 bytes)
	ReasonNoNeighbor       // next-hop MAC unknown (slow path sends through a kernel socket)
	ReasonNodeFamily       // peer node address family differs from ours
	ReasonICMPNoFlow       // ICMP error to a service IP that quotes no live flow of the sender
	// Ingress.
	ReasonOuterFragment // tunnel datagram is an IP fragment (outer DF is always set by peers)
	ReasonNonPeer       // tunnel datagram from an address outside the peer set
	ReasonBadInner      // inner packet is not well-formed IPv4/IPv6
	ReasonNotLocal      // inner destination is not a local container nsIP
	ReasonWrongSource   // inner source is not one the table places on the sending peer (a service IP, another node's instance or nsIP, outside the platform), nor a reply on a local flow
	ReasonUnknownSource // inner source in the service ranges but unknown (slow path: resolve it)
	NumReasons
)

var reasonNames = [...]string{
	"none", "not-ip", "truncated-eth", "vlan-stacked", "truncated-ipv4", "bad-ipv4",
	"truncated-ipv6", "bad-ipv6", "bad-ipv6-ext", "truncated-tcp", "bad-tcp", "truncated-udp",
	"bad-udp-length", "truncated-icmp", "tiny-fragment", "bad-embedded",
	"spoofed", "unknown-port", "unknown-service", "no-instance", "no-family",
	"unsupported-proto", "frag-unknown", "flow-table-full", "no-headroom", "too-big",
	"no-neighbor", "node-family", "icmp-no-flow",
	"outer-fragment", "non-peer", "bad-inner", "not-local", "wrong-source", "unknown-source",
}

func (r DropReason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "reason?"
}

// Event counts things that happened to frames that were not dropped.
type Event uint8

const (
	EvEgressPass          Event = iota // egress frame outside the service ranges
	EvEgressLocal                      // translated and sent to a local port
	EvEgressRemote                     // translated and encapsulated to the uplink
	EvEgressSlowPath                   // sent to the slow path (any reason)
	EvFlowNew                          // new flow created by a policy
	EvFlowRechosen                     // flow's instance vanished; chosen again
	EvICMPTooBigSent                   // ICMP frag-needed / packet-too-big generated
	EvICMPErrorTranslated              // ICMP error with a translated embedded packet
	EvFragTranslated                   // non-first fragment translated via the fragment cache
	EvIngressPass                      // uplink frame that is not tunnel traffic
	EvIngressTranslated                // reply whose source was restored to the service IP
	EvIngressDelivered                 // delivered to a local port (translated or not)
	NumEvents
)

var eventNames = [...]string{
	"egress-pass", "egress-local", "egress-remote", "egress-slow-path", "flow-new",
	"flow-rechosen", "icmp-too-big-sent", "icmp-error-translated", "frag-translated",
	"ingress-pass", "ingress-translated", "ingress-delivered",
}

func (e Event) String() string {
	if int(e) < len(eventNames) {
		return eventNames[e]
	}
	return "event?"
}

// Stats is a sum of counters.
type Stats struct {
	Drops  [NumReasons]uint64 // indexed by DropReason (slow-path reasons included)
	Events [NumEvents]uint64
}

// Add adds o into s.
func (s *Stats) Add(o *Stats) {
	for i := range s.Drops {
		s.Drops[i] += o.Drops[i]
	}
	for i := range s.Events {
		s.Events[i] += o.Events[i]
	}
}

// counters is the worker's private copy (plain increments) and a published
// copy that other goroutines read with atomics. Publishing is a handful of
// atomic stores per batch, not per packet.
type counters struct {
	drops  [NumReasons]uint64
	events [NumEvents]uint64
	pubD   [NumReasons]atomic.Uint64
	pubE   [NumEvents]atomic.Uint64
}

func (c *counters) publish() {
	for i := range c.drops {
		if c.drops[i] != 0 {
			c.pubD[i].Store(c.drops[i])
		}
	}
	for i := range c.events {
		if c.events[i] != 0 {
			c.pubE[i].Store(c.events[i])
		}
	}
}
