package fastpath

import (
	"encoding/binary"
	"net/netip"
)

// In-place header views in the style of gVisor's header package: each is a
// []byte starting at the header. Accessors assume the caller checked the
// length once (Decode does; the Min* constants say how much is needed).

// Header sizes and protocol numbers.
const (
	EthernetLen = 14
	VLANTagLen  = 4
	IPv4MinLen  = 20
	IPv6Len     = 40
	UDPLen      = 8
	TCPMinLen   = 20
	ICMPMinLen  = 8

	EtherTypeIPv4  = 0x0800
	EtherTypeIPv6  = 0x86DD
	EtherTypeVLAN  = 0x8100
	EtherTypeQinQ  = 0x88A8
	ProtoICMP      = 1
	ProtoTCP       = 6
	ProtoUDP       = 17
	ProtoICMPv6    = 58
	protoHopByHop  = 0
	protoRouting   = 43
	protoFragment  = 44
	protoAH        = 51
	protoNoNext    = 59
	protoDestOpts  = 60
	outerOverhead4 = IPv4MinLen + UDPLen // 28
	outerOverhead6 = IPv6Len + UDPLen    // 48
)

// ICMP types used by the translator.
const (
	ICMPv4EchoReply     = 0
	ICMPv4DestUnreach   = 3
	ICMPv4EchoRequest   = 8
	ICMPv4TimeExceeded  = 11
	ICMPv4ParamProblem  = 12
	ICMPv4FragNeeded    = 4 // code of ICMPv4DestUnreach
	ICMPv6DestUnreach   = 1
	ICMPv6PacketTooBig  = 2
	ICMPv6TimeExceeded  = 3
	ICMPv6ParamProblem  = 4
	ICMPv6EchoRequest   = 128
	ICMPv6EchoReply     = 129
	ipv4FlagDF          = 0x4000
	ipv4FlagMF          = 0x2000
	ipv4FragOffMask     = 0x1fff
	minIPv4ErrorQuoteTo = 576  // RFC 1812 4.3.2.3: as much as fits in 576 bytes
	minIPv6MTU          = 1280 // RFC 4443 2.4(c)
)

// Ethernet is an Ethernet II header (14 bytes).
type Ethernet []byte

func (e Ethernet) Dst() [6]byte     { return [6]byte(e[0:6]) }
func (e Ethernet) Src() [6]byte     { return [6]byte(e[6:12]) }
func (e Ethernet) Type() uint16     { return binary.BigEndian.Uint16(e[12:]) }
func (e Ethernet) SetDst(m [6]byte) { copy(e[0:6], m[:]) }
func (e Ethernet) SetSrc(m [6]byte) { copy(e[6:12], m[:]) }
func (e Ethernet) SetType(t uint16) { binary.BigEndian.PutUint16(e[12:], t) }

// IPv4 is an IPv4 header (20..60 bytes) followed by its payload.
type IPv4 []byte

func (h IPv4) Version() int         { return int(h[0] >> 4) }
func (h IPv4) HeaderLen() int       { return int(h[0]&0xf) * 4 }
func (h IPv4) TotalLen() int        { return int(binary.BigEndian.Uint16(h[2:])) }
func (h IPv4) ID() uint16           { return binary.BigEndian.Uint16(h[4:]) }
func (h IPv4) FlagsFrag() uint16    { return binary.BigEndian.Uint16(h[6:]) }
func (h IPv4) DF() bool             { return h.FlagsFrag()&ipv4FlagDF != 0 }
func (h IPv4) MF() bool             { return h.FlagsFrag()&ipv4FlagMF != 0 }
func (h IPv4) FragOffset() int      { return int(h.FlagsFrag()&ipv4FragOffMask) * 8 }
func (h IPv4) TTL() uint8           { return h[8] }
func (h IPv4) Protocol() uint8      { return h[9] }
func (h IPv4) Checksum() uint16     { return binary.BigEndian.Uint16(h[10:]) }
func (h IPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(h[10:], c) }
func (h IPv4) Src() netip.Addr      { return netip.AddrFrom4([4]byte(h[12:16])) }
func (h IPv4) Dst() netip.Addr      { return netip.AddrFrom4([4]byte(h[16:20])) }

// IPv6 is an IPv6 fixed header (40 bytes) followed by its payload.
type IPv6 []byte

func (h IPv6) Version() int      { return int(h[0] >> 4) }
func (h IPv6) PayloadLen() int   { return int(binary.BigEndian.Uint16(h[4:])) }
func (h IPv6) NextHeader() uint8 { return h[6] }
func (h IPv6) HopLimit() uint8   { return h[7] }
func (h IPv6) Src() netip.Addr   { return netip.AddrFrom16([16]byte(h[8:24])) }
func (h IPv6) Dst() netip.Addr   { return netip.AddrFrom16([16]byte(h[24:40])) }

// TCP is a TCP header.
type TCP []byte

func (h TCP) SrcPort() uint16      { return binary.BigEndian.Uint16(h[0:]) }
func (h TCP) DstPort() uint16      { return binary.BigEndian.Uint16(h[2:]) }
func (h TCP) DataOffset() int      { return int(h[12]>>4) * 4 }
func (h TCP) Checksum() uint16     { return binary.BigEndian.Uint16(h[16:]) }
func (h TCP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(h[16:], c) }

// UDP is a UDP header.
type UDP []byte

func (h UDP) SrcPort() uint16      { return binary.BigEndian.Uint16(h[0:]) }
func (h UDP) DstPort() uint16      { return binary.BigEndian.Uint16(h[2:]) }
func (h UDP) Length() int          { return int(binary.BigEndian.Uint16(h[4:])) }
func (h UDP) Checksum() uint16     { return binary.BigEndian.Uint16(h[6:]) }
func (h UDP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(h[6:], c) }

// ICMPv4 is an ICMPv4 header (8 bytes: type, code, checksum, rest).
type ICMPv4 []byte

func (h ICMPv4) Type() uint8          { return h[0] }
func (h ICMPv4) Code() uint8          { return h[1] }
func (h ICMPv4) Checksum() uint16     { return binary.BigEndian.Uint16(h[2:]) }
func (h ICMPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(h[2:], c) }
func (h ICMPv4) Ident() uint16        { return binary.BigEndian.Uint16(h[4:]) }

// ICMPv6 is an ICMPv6 header (8 bytes: type, code, checksum, rest).
type ICMPv6 []byte

func (h ICMPv6) Type() uint8          { return h[0] }
func (h ICMPv6) Code() uint8          { return h[1] }
func (h ICMPv6) Checksum() uint16     { return binary.BigEndian.Uint16(h[2:]) }
func (h ICMPv6) SetChecksum(c uint16) { binary.BigEndian.PutUint16(h[2:], c) }
func (h ICMPv6) Ident() uint16        { return binary.BigEndian.Uint16(h[4:]) }

func isICMPv4Error(t uint8) bool {
	return t == ICMPv4DestUnreach || t == ICMPv4TimeExceeded || t == ICMPv4ParamProblem
}

func isICMPv6Error(t uint8) bool { return t < 128 }
