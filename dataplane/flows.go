package dataplane

import (
	"net/netip"
	"time"
)

// FlowInfo is one live flow, as an operator sees it (netmanager flows):
// who talks to whom, through which service and instance, in which tier.
type FlowInfo struct {
	Proto uint8
	// Src and Dst are the flow's 5-tuple as it arrives: from a container
	// (egress: its nsIP to the address it sent to) or out of the tunnel
	// (ingress: a peer's instance IP to a local nsIP).
	Src, Dst netip.AddrPort
	// Ingress says the flow arrives through the tunnel.
	Ingress bool
	// Service is the service IP the client addressed (service flows; a
	// reply's restored source on ingress), else invalid.
	Service netip.Addr
	// Instance is the instance number the flow's policy chose (service
	// flows).
	Instance    uint32
	HasInstance bool
	// Kernel says the kernel tier executes the flow; Pending that it was
	// handed over but its gate is not open yet.
	Kernel, Pending bool
	// Packets and Bytes the kernel tier executed (the workers do not count
	// per flow).
	Packets, Bytes uint64
	// Idle is the time since the flow's last packet.
	Idle time.Duration
	// Closing says TCP FIN or RST was seen (kernel tier).
	Closing bool
}
