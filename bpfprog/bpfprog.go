package bpfprog

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ErrNotSupported is returned on platforms without the generated little-endian
// BPF object or without Linux; it is an errors.ErrUnsupported.
var ErrNotSupported = fmt.Errorf("bpfprog: %w on this platform", errors.ErrUnsupported)

// ErrTooManyPrefixes is returned when more service prefixes of one family are
// set than the program's fixed array holds (MaxServicePrefixes).
var ErrTooManyPrefixes = errors.New("bpfprog: too many service prefixes")

// Mode selects how an XDP program is attached.
type Mode int

const (
	// ModeGeneric attaches in SKB (generic) mode. On veth it measured at
	// least as fast as native (DESIGN.md), so it is the zero value; note
	// that TCP then needs tso/gso off on the container interface.
	ModeGeneric Mode = iota
	// ModeNative attaches in driver (native) mode; fails where the driver
	// has no native XDP.
	ModeNative
	// DefaultMode is the mode unless configured: the one place it is chosen.
	DefaultMode = ModeGeneric
)

// String returns "generic" or "native".
func (m Mode) String() string {
	switch m {
	case ModeGeneric:
		return "generic"
	case ModeNative:
		return "native"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode accepts "generic" (or "skb") and "native" (or "drv", "driver");
// "" is DefaultMode.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "":
		return DefaultMode, nil
	case "generic", "skb":
		return ModeGeneric, nil
	case "native", "drv", "driver":
		return ModeNative, nil
	}
	return 0, fmt.Errorf("xdp mode %q: want generic or native", s)
}

// DefaultServiceRanges are the platform's service + instance IP pools
// (SPEC §2): 10.30.0.0/16 and fdff::/16.
func DefaultServiceRanges() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("10.30.0.0/16"),
		netip.MustParsePrefix("fdff::/16"),
	}
}

// Peer is a tunnel peer: frames to the tunnel port are accepted from Addr,
// and from Port only if Port is not 0. Several peers may share an address
// (nodes behind one NAT, SPEC §1); the program then accepts any source port
// from that address.
type Peer struct {
	Addr netip.Addr
	Port uint16
	// TunnelPort is the UDP port the peer receives tunnel traffic on:
	// xdp_port drops container packets to Addr:TunnelPort. 0: unknown.
	TunnelPort uint16
}

// Port is a container port as the programs know it (Objects.SetPort): the
// container's own addresses (an invalid one: none of that family) and the
// host-side veth's MAC.
type Port struct {
	IP4, IP6 netip.Addr
	HostMAC  [6]byte
}

// Config parameterises Load. The zero value is usable.
type Config struct {
	// Queues is the number of XSKMAP slots (rx queue indexes 0..Queues-1).
	// 0 keeps the program's default (64).
	Queues int
	// MaxPeers is the peer map capacity. 0 keeps the default (16384).
	// Ignored with Share (the owner's map is used).
	MaxPeers int
	// ServiceRanges initialises the service ranges; nil means
	// DefaultServiceRanges. Ignored with Share.
	ServiceRanges []netip.Prefix
	// Share, if not nil, makes the new Objects use Share's service, node and
	// peer maps (one per node) while getting its own XSKMAP and counters
	// (one per port). Setters on either Objects affect both.
	Share *Objects
}
