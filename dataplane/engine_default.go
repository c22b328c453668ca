//go:build !linux

package dataplane

import (
	"net/netip"

	"github.com/oakwire/oakwire/fastpath"
)

// Engine is the AF_XDP data plane; on this system New returns
// ErrNotSupported.
type Engine struct {
	flows *fastpath.FlowTable // never set: New fails first
}

// New returns ErrNotSupported: the engine needs Linux (AF_XDP, XDP, netlink).
func New(Config) (*Engine, error) { return nil, ErrNotSupported }

func (e *Engine) AddPort(PortConfig) (fastpath.PortID, error) { return 0, ErrNotSupported }
func (e *Engine) RemovePort(fastpath.PortID) error            { return ErrNotSupported }
func (e *Engine) PortByIfindex(int) (fastpath.PortID, bool)   { return 0, false }
func (e *Engine) Table() *fastpath.Table                      { return nil }
func (e *Engine) Stats() Stats                                { return Stats{Counters: map[string]uint64{}} }
func (e *Engine) Close() error                                { return nil }
func (e *Engine) SetServices([]fastpath.ServiceSpec, []fastpath.InstanceSpec, []netip.AddrPort) error {
	return ErrNotSupported
}

// OnBPFFS is false here.
func OnBPFFS(string) bool { return false }

// Teardown has nothing to remove here.
func Teardown(string) error { return nil }

// Flows is empty here.
func (e *Engine) Flows() []FlowInfo { return nil }
