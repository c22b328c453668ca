//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfprog

import (
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// MaxServicePrefixes mirrors the Linux build so callers compile; nothing can
// be loaded here.
const MaxServicePrefixes = 8

// Objects is the loaded steering program; on this platform Load always
// fails with ErrNotSupported.
type Objects struct{}

// Load returns ErrNotSupported.
func Load(Config) (*Objects, error) { return nil, ErrNotSupported }

func (*Objects) PortProgram() *ebpf.Program                { return nil }
func (*Objects) UplinkProgram() *ebpf.Program              { return nil }
func (*Objects) PassProgram() *ebpf.Program                { return nil }
func (*Objects) XSKMap() *ebpf.Map                         { return nil }
func (*Objects) StatsMap() *ebpf.Map                       { return nil }
func (*Objects) Queues() int                               { return 0 }
func (*Objects) SetServiceRanges([]netip.Prefix) error     { return ErrNotSupported }
func (*Objects) SetNode(_, _ netip.Addr, _ uint16) error   { return ErrNotSupported }
func (*Objects) SetPort(int, Port) error                   { return ErrNotSupported }
func (*Objects) DeletePort(int) error                      { return ErrNotSupported }
func (*Objects) RefreshUplink(link.Link) error             { return ErrNotSupported }
func (*Objects) ReplacePeers([]Peer) error                 { return ErrNotSupported }
func (*Objects) Peers() []Peer                             { return nil }
func (*Objects) RegisterXSK(_, _ int) error                { return ErrNotSupported }
func (*Objects) UnregisterXSK(int) error                   { return ErrNotSupported }
func (*Objects) CounterNames() []string                    { return nil }
func (*Objects) Counters() (map[string]uint64, error)      { return nil, ErrNotSupported }
func (*Objects) Counter(string) (uint64, error)            { return 0, ErrNotSupported }
func (*Objects) AttachPort(int, Mode) (link.Link, error)   { return nil, ErrNotSupported }
func (*Objects) AttachUplink(int, Mode) (link.Link, error) { return nil, ErrNotSupported }
func (*Objects) AttachPass(int, Mode) (link.Link, error)   { return nil, ErrNotSupported }
func (*Objects) Close() error                              { return nil }
