package api

import (
	"testing"

	"github.com/oakwire/oakwire/internal/golden"
)

// TestWireGolden: every wire type marshals exactly as the string-typed
// types it replaced did (testdata/wire.golden was recorded from them): a
// full value read from testdata/wire.in and written again, and the zero
// value. Names are the old ones.
func TestWireGolden(t *testing.T) {
	types := map[string]func() any{
		"ServiceIP": func() any { return new(ServiceIP) }, "Instance": func() any { return new(Instance) },
		"ServiceEntry": func() any { return new(ServiceEntry) }, "Location": func() any { return new(Location) },
		"Peer": func() any { return new(Peer) }, "PeerDelta": func() any { return new(PeerDelta) },
		"RegisterRequest": func() any { return new(RegisterRequest) }, "RegisterResponse": func() any { return new(RegisterResponse) },
		"InstanceReport": func() any { return new(InstanceReport) }, "PeersResponse": func() any { return new(PeersResponse) },
		"Change": func() any { return new(Change) }, "WatchResponse": func() any { return new(WatchResponse) },
		"ErrorBody": func() any { return new(ErrorBody) }, "clusterInfo": func() any { return new(Cluster) },
		"deployAnswer": func() any { return new(ServiceIPs) }, "instanceAnswer": func() any { return new(InstanceAnswer) },
		"statusOut": func() any { return new(InstanceStatus) }, "subnetAnswer": func() any { return new(Subnets) },
		"jobUpdate": func() any { return new(JobUpdate) }, "peersHint": func() any { return new(PeersHint) },
		"peersDelta": func() any { return new(EndpointsDelta) }, "peerView": func() any { return new(PeerView) },
		"clusterPeers": func() any { return new(ClusterPeers) }, "endpointsBody": func() any { return new(Endpoints) },
	}
	golden.Check(t, "testdata/wire.in", "testdata/wire.golden", types)
}
