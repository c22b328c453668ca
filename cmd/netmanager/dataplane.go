package main

import (
	"errors"
	"log/slog"

	"github.com/oakwire/oakwire/internal/nodeplane"
	"github.com/oakwire/oakwire/netmanager"
)

// newDataplane is the seam where the AF_XDP fast path (fastpath, bpfprog)
// plugs in: it returns the netmanager.Dataplane for cfg.Dataplane.
func newDataplane(cfg netmanager.Config, log *slog.Logger) (netmanager.Dataplane, error) {
	switch cfg.Dataplane {
	case "none":
		log.Warn("dataplane: none: kernel routing only; service IPs and the overlay are off")
		return &netmanager.KernelOnly{}, nil
	case "xdp":
		// Fed from the cluster once the node is registered: watch,
		// resolution of unknown service IPs, interest expiry.
		return &nodeplane.Dataplane{Logger: log}, nil
	}
	return nil, errors.New("dataplane: want xdp or none")
}
