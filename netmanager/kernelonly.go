package netmanager

import (
	"context"
	"net/netip"
	"sync"

	"github.com/oakwire/oakwire/fastpath"
)

// KernelOnly is the data plane of `dataplane: none`: it attaches nothing,
// so containers get plain kernel routing (same-node traffic, Internet via
// masquerade, port mappings) but no service IPs and no overlay. It only
// counts ports. For debugging a node and for tests of the node side; never
// the default.
type KernelOnly struct {
	mu    sync.Mutex // guards ports
	ports map[int]Port
}

func (k *KernelOnly) Start(context.Context, NodeInfo) error { return nil }

func (k *KernelOnly) AddPort(p Port) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ports == nil {
		k.ports = map[int]Port{}
	}
	k.ports[p.HostIndex] = p
	return nil
}

func (k *KernelOnly) RemovePort(p Port) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.ports, p.HostIndex)
	return nil
}

// SetServices has no table to fill: service IPs do not work without a
// data plane.
func (k *KernelOnly) SetServices([]fastpath.ServiceSpec, []fastpath.InstanceSpec, []netip.AddrPort) error {
	return nil
}

// Flows has no flows to list: the kernel routes.
func (k *KernelOnly) Flows() []Flow { return nil }

func (k *KernelOnly) Stats() DataplaneStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return DataplaneStats{Mode: "none", Tables: map[string]int{"ports": len(k.ports)}, Counters: map[string]uint64{}}
}

func (k *KernelOnly) Close() error { return nil }
