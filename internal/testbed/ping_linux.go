package testbed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Ping sends up to count ICMP/ICMPv6 echo requests from namespace ns to dst,
// one at a time, each waiting up to wait for its reply, and returns nil at
// the first reply. Bounded by count×wait; no ping binary needed.
func Ping(ns string, dst netip.Addr, count int, wait time.Duration) error {
	network, reqType, repType := "ip4:icmp", byte(8), byte(0)
	if dst.Is6() && !dst.Is4In6() {
		network, reqType, repType = "ip6:ipv6-icmp", 128, 129
	}
	var c net.Conn
	err := Do(ns, func() (err error) {
		c, err = net.Dial(network, dst.Unmap().String())
		return err
	})
	if err != nil {
		return fmt.Errorf("ping %v in %s: %w", dst, ns, err)
	}
	defer c.Close()
	id := uint16(time.Now().UnixNano())
	buf := make([]byte, 1500)
	for seq := 1; seq <= count; seq++ {
		msg := []byte{reqType, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'o', 'w'}
		if reqType == 8 { // the kernel fills in ICMPv6 checksums itself
			binary.BigEndian.PutUint16(msg[2:], inetChecksum(msg))
		}
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("ping %v in %s: %w", dst, ns, err)
		}
		deadline := time.Now().Add(wait)
		_ = c.SetReadDeadline(deadline)
		for {
			// ReadFrom strips the IPv4 header (Read would not).
			n, _, err := c.(*net.IPConn).ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return fmt.Errorf("ping %v in %s: %w", dst, ns, err)
			}
			if n >= 8 && buf[0] == repType && binary.BigEndian.Uint16(buf[4:]) == id &&
				binary.BigEndian.Uint16(buf[6:]) == uint16(seq) {
				return nil
			}
		}
	}
	return fmt.Errorf("ping %v in %s: no reply to %d echo requests", dst, ns, count)
}

// inetChecksum is the RFC 1071 Internet checksum of b.
func inetChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
