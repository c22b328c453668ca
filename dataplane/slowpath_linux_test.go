package dataplane

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/oakwire/oakwire/internal/pkttest"
)

// TestTunnelPayload: the slow path finds the outer destination and the
// UDP payload of frames the processor encapsulated, in both families, and
// refuses what is not a well-formed UDP datagram.
func TestTunnelPayload(t *testing.T) {
	inner := pkttest.UDP(netip.MustParseAddr("10.30.0.3"), netip.MustParseAddr("10.18.0.66"), 4000, 7000, []byte("hi"))
	for _, peer := range []netip.Addr{netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("2001:db8::2")} {
		self := netip.MustParseAddr("198.18.0.1")
		if peer.Is6() {
			self = netip.MustParseAddr("2001:db8::1")
		}
		frame := pkttest.Eth([6]byte{}, [6]byte{2}, pkttest.UDP(self, peer, 49152, DefaultTunnelPort, inner))
		dst, payload, ok := tunnelPayload(frame)
		if !ok || dst != netip.AddrPortFrom(peer, DefaultTunnelPort) || !bytes.Equal(payload, inner) {
			t.Errorf("%v: tunnelPayload = %v, %d bytes, %v; want the peer and the inner packet", peer, dst, len(payload), ok)
		}
		if got, ok := frameDst(frame); !ok || got != peer {
			t.Errorf("frameDst = %v, %v; want %v", got, ok, peer)
		}
		for _, bad := range [][]byte{frame[:20], frame[:len(frame)-len(inner)-4], pkttest.Eth([6]byte{}, [6]byte{2}, pkttest.TCP(self, peer, 1, 2, nil))} {
			if _, _, ok := tunnelPayload(bad); ok {
				t.Errorf("tunnelPayload accepted a %d-byte frame that is not a whole UDP datagram", len(bad))
			}
		}
	}
}
