//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfprog

import (
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Tier is the kernel tier; on this platform LoadTier always fails with
// ErrNotSupported.
type Tier struct{}

// TierSlot and TierKey mirror the Linux build so callers compile.
type (
	TierSlot = ktTierSlot
	TierKey  = ktTierKey
)

// Tier slot flags and kinds.
const (
	TierSNAT         = uint32(ktTierFlagsTIER_F_SNAT)
	TierDNAT         = uint32(ktTierFlagsTIER_F_DNAT)
	TierEncap        = uint32(ktTierFlagsTIER_F_ENCAP)
	TierDeliver      = uint32(ktTierFlagsTIER_F_DELIVER)
	TierDecap        = uint32(ktTierFlagsTIER_F_DECAP)
	TierKindService  = uint32(ktTierKindTIER_KIND_SERVICE)
	TierKindInstance = uint32(ktTierKindTIER_KIND_INSTANCE)
	TierKindIngress  = uint32(ktTierKindTIER_KIND_INGRESS)
)

// TierGateActive is the gate bit that hands a flow to the kernel.
const TierGateActive = uint64(1) << 63

// TierOuterLen is the size of the outer headers a slot encapsulates with.
const TierOuterLen = len(TierSlot{}.Outer)

// TierConfig parameterises LoadTier.
type TierConfig struct {
	Share   *Objects
	Flows   int
	Queues  int
	PinPath string
}

// LoadTier returns ErrNotSupported.
func LoadTier(TierConfig) (*Tier, error) { return nil, ErrNotSupported }

func NewTierKey(int, uint8, netip.AddrPort, netip.AddrPort) TierKey { return TierKey{} }
func TierKeyAddrs(*TierKey) (src, dst netip.AddrPort)               { return }
func AddrWords(netip.Addr) [4]uint32                                { return [4]uint32{} }
func OuterTemplate(netip.Addr, netip.Addr, uint16, uint16) (o [TierOuterLen]byte, sum uint32) {
	return
}
func (*Tier) NumSlots() int                         { return 0 }
func (*Tier) Slot(uint32) *TierSlot                 { return nil }
func (*Tier) SetConfig(int, int) error              { return ErrNotSupported }
func (*Tier) Publish(*TierKey, uint32) error        { return ErrNotSupported }
func (*Tier) Unpublish(*TierKey) error              { return ErrNotSupported }
func (*Tier) Published(func(TierKey, uint32)) error { return ErrNotSupported }
func (*Tier) RegisterXSK(int, int) error            { return ErrNotSupported }
func (*Tier) Counters() (map[string]uint64, error)  { return nil, ErrNotSupported }
func (*Tier) PortProgram() *ebpf.Program            { return nil }
func (*Tier) UplinkProgram() *ebpf.Program          { return nil }
func (*Tier) PuntProgram() *ebpf.Program            { return nil }
func (*Tier) AttachPort(int) (link.Link, error)     { return nil, ErrNotSupported }
func (*Tier) AttachUplink(int) (link.Link, error)   { return nil, ErrNotSupported }
func (*Tier) AttachPunt(int) (link.Link, error)     { return nil, ErrNotSupported }
func (*Tier) AttachPuntXDP(int) (link.Link, error)  { return nil, ErrNotSupported }
func (*Tier) LinkPin(string) string                 { return "" }
func (*Tier) Close() error                          { return nil }
