package dataplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/oakwire/oakwire/fastpath"
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

// savedFlows is the file SaveFlows writes: the worker pool's flows, so a
// daemon stopped gracefully (SIGTERM) and started again keeps every
// flow's instance.
type savedFlows struct {
	Version int         `json:"version"`
	Flows   []savedFlow `json:"flows"`
}

type savedFlow struct {
	Fwd  fastpath.FlowKey `json:"fwd"`
	Rev  fastpath.FlowKey `json:"rev"`
	Inst uint32           `json:"inst"`
}

// savedFlowsVersion is bumped whenever FlowKey's layout changes; a file of
// another version is ignored.
const savedFlowsVersion = 1

// SaveFlows writes the worker pool's flows to path (atomically: a temporary
// file renamed).
func (e *Engine) SaveFlows(path string) error {
	sf := savedFlows{Version: savedFlowsVersion}
	e.flows.Range(func(r fastpath.FlowRecord) bool {
		sf.Flows = append(sf.Flows, savedFlow{Fwd: r.Fwd, Rev: r.Rev, Inst: r.Inst})
		return true
	})
	b, err := json.Marshal(&sf)
	if err != nil {
		return fmt.Errorf("save flows: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save flows: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save flows: %w", err)
	}
	return nil
}

// LoadFlows inserts the flows SaveFlows wrote to path and removes the file
// (a flow file is good for one start). A missing file is no error.
func (e *Engine) LoadFlows(path string) (int, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("load flows: %w", err)
	}
	defer os.Remove(path)
	var sf savedFlows
	if err := json.Unmarshal(b, &sf); err != nil {
		return 0, fmt.Errorf("load flows %s: %w", path, err)
	}
	if sf.Version != savedFlowsVersion {
		return 0, fmt.Errorf("load flows %s: version %d, want %d", path, sf.Version, savedFlowsVersion)
	}
	recs := make([]fastpath.FlowRecord, len(sf.Flows))
	for i, f := range sf.Flows {
		recs[i] = fastpath.FlowRecord{Fwd: f.Fwd, Rev: f.Rev, Inst: f.Inst}
	}
	return e.flows.Import(recs, fastpath.Monotonic()), nil
}
