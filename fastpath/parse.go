package fastpath

import (
	"encoding/binary"
	"net/netip"
)

// Fragment state of a parsed packet.
const (
	FragNone  uint8 = iota // not a fragment
	FragFirst              // offset 0, more fragments follow: carries the transport header
	FragLater              // offset > 0: no transport header
)

// Parsed is a decoded packet, in the style of tailscale's packet.Parsed: a
// struct reused by its owner (one per worker) and filled by Decode without
// allocating. Offsets are relative to the slice given to Decode. Parsed
// holds no reference to the bytes.
type Parsed struct {
	L3Off   int // start of the IP header
	L4Off   int // start of the upper-layer header (after IPv6 extension headers)
	End     int // end of the IP packet per its length field (Ethernet padding excluded)
	Version uint8
	Proto   uint8 // upper-layer protocol (IPv6: after extension headers)
	Src     netip.Addr
	Dst     netip.Addr
	// SrcPort and DstPort are the TCP/UDP ports, or the ICMP echo
	// identifier in both for echo requests and replies.
	SrcPort, DstPort uint16
	ICMPType         uint8
	ICMPCode         uint8
	Frag             uint8  // FragNone, FragFirst or FragLater
	FragID           uint32 // IPv4 ID or IPv6 fragment identification
	DF               bool   // IPv4 don't-fragment
	HasPorts         bool   // SrcPort/DstPort are valid (TCP, UDP, ICMP echo; not a later fragment)
}

// Decode parses an Ethernet frame. One 802.1Q or 802.1ad tag is tolerated
// (skipped; frames we emit are untagged); a second one is ReasonVLANStacked.
// It returns ReasonNone for a well-formed IPv4/IPv6 packet, ReasonNotIP for
// other EtherTypes, or the reason the frame is malformed. It never panics.
func (p *Parsed) Decode(b []byte) DropReason {
	if len(b) < EthernetLen {
		return ReasonTruncatedEth
	}
	off := 12
	et := binary.BigEndian.Uint16(b[off:])
	if et == EtherTypeVLAN || et == EtherTypeQinQ {
		off += VLANTagLen
		if len(b) < off+2 {
			return ReasonTruncatedEth
		}
		et = binary.BigEndian.Uint16(b[off:])
		if et == EtherTypeVLAN || et == EtherTypeQinQ {
			return ReasonVLANStacked
		}
	}
	off += 2
	switch et {
	case EtherTypeIPv4:
		// decodeIP(b, off, false, 4) without its family dispatch.
		*p = Parsed{L3Off: off}
		if off >= len(b) {
			return ReasonTruncatedIPv4
		}
		if b[off]>>4 != 4 {
			return ReasonBadIPv4
		}
		return p.decode4(b, off, false)
	case EtherTypeIPv6:
		return p.decodeIP(b, off, false, 6)
	}
	return ReasonNotIP
}

// TunnelInner decodes a tunnel frame (Ethernet, outer IP, UDP) into outer
// and the packet it carries into inner, with offsets relative to b, as the
// ingress path does. ok is false when either does not parse.
func TunnelInner(b []byte, outer, inner *Parsed) (ok bool) {
	if outer.Decode(b) != ReasonNone || outer.Proto != ProtoUDP || !outer.HasPorts {
		return false
	}
	l := int(binary.BigEndian.Uint16(b[outer.L4Off+4:]))
	if l < UDPLen || outer.L4Off+l > len(b) {
		return false
	}
	return inner.decodeIP(b[:outer.L4Off+l], outer.L4Off+UDPLen, false, 0) == ReasonNone
}

// DecodeIP parses an IP packet starting at b[off] (no link layer), telling
// the family by the first nibble.
func (p *Parsed) DecodeIP(b []byte, off int) DropReason { return p.decodeIP(b, off, false, 0) }

// decodeIP parses the IP packet at b[off:]. want forces the family (4 or 6)
// when the link layer said so; 0 takes it from the first nibble. quoted
// parses a packet quoted in an ICMP error: it may be cut short after the
// first 8 bytes of the transport header.
func (p *Parsed) decodeIP(b []byte, off int, quoted bool, want uint8) DropReason {
	*p = Parsed{L3Off: off}
	if off >= len(b) {
		if want == 6 {
			return ReasonTruncatedIPv6
		}
		return ReasonTruncatedIPv4
	}
	v := b[off] >> 4
	if want != 0 && v != want {
		if want == 6 {
			return ReasonBadIPv6 // wrong version under the IPv6 EtherType
		}
		return ReasonBadIPv4
	}
	switch v {
	case 4:
		return p.decode4(b, off, quoted)
	case 6:
		return p.decode6(b, off, quoted)
	}
	if want == 0 {
		return ReasonBadInner
	}
	return ReasonBadIPv4
}

func (p *Parsed) decode4(b []byte, off int, quoted bool) DropReason {
	if len(b)-off < IPv4MinLen {
		return ReasonTruncatedIPv4
	}
	h := (*[IPv4MinLen]byte)(b[off:]) // one length check for the fixed header
	hl := int(h[0]&0xf) * 4
	tl := int(binary.BigEndian.Uint16(h[2:]))
	if hl < IPv4MinLen || tl < hl {
		return ReasonBadIPv4
	}
	if len(b)-off < hl {
		return ReasonTruncatedIPv4
	}
	end := off + tl
	if end > len(b) {
		if !quoted {
			return ReasonTruncatedIPv4
		}
		end = len(b)
	}
	p.Version = 4
	p.Proto = h[9]
	p.Src = netip.AddrFrom4([4]byte(h[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(h[16:20]))
	p.L4Off = off + hl
	p.End = end
	ff := binary.BigEndian.Uint16(h[6:])
	p.DF = ff&ipv4FlagDF != 0
	if ff&(ipv4FlagMF|ipv4FragOffMask) != 0 {
		p.FragID = uint32(binary.BigEndian.Uint16(h[4:]))
		if ff&ipv4FragOffMask != 0 {
			p.Frag = FragLater
			return ReasonNone
		}
		p.Frag = FragFirst
	}
	return p.decodeL4(b[p.L4Off:end], quoted)
}

func (p *Parsed) decode6(b []byte, off int, quoted bool) DropReason {
	if len(b)-off < IPv6Len {
		return ReasonTruncatedIPv6
	}
	h := IPv6(b[off:])
	end := off + IPv6Len + h.PayloadLen()
	if end > len(b) {
		if !quoted {
			return ReasonTruncatedIPv6
		}
		end = len(b)
	}
	p.Version = 6
	p.Src = h.Src()
	p.Dst = h.Dst()
	p.End = end
	nh := h.NextHeader()
	pos := off + IPv6Len
	// Walk the extension headers to the upper layer (RFC 8200 §4). Bounded:
	// at most 8 headers.
	for i := 0; ; i++ {
		if i == 8 {
			return ReasonBadIPv6Ext
		}
		switch nh {
		case protoHopByHop, protoRouting, protoDestOpts, protoAH:
			if nh == protoHopByHop && i != 0 {
				return ReasonBadIPv6Ext // hop-by-hop must come first
			}
			if end-pos < 8 {
				return ReasonTruncatedIPv6
			}
			l := (int(b[pos+1]) + 1) * 8
			if nh == protoAH {
				l = (int(b[pos+1]) + 2) * 4
			}
			if end-pos < l {
				return ReasonTruncatedIPv6
			}
			nh = b[pos]
			pos += l
			continue
		case protoFragment:
			if end-pos < 8 {
				return ReasonTruncatedIPv6
			}
			fo := binary.BigEndian.Uint16(b[pos+2:])
			p.FragID = binary.BigEndian.Uint32(b[pos+4:])
			nh = b[pos]
			pos += 8
			if fo&0xfff8 != 0 {
				p.Frag = FragLater
			} else if fo&1 != 0 {
				p.Frag = FragFirst
			}
			// An atomic fragment (offset 0, M=0, RFC 6946) is a whole packet.
			continue
		}
		break
	}
	p.Proto = nh
	p.L4Off = pos
	if p.Frag == FragLater {
		return ReasonNone
	}
	return p.decodeL4(b[p.L4Off:p.End], quoted)
}

// readAddrs sets Src and Dst from the IP header in b (as Decode does), for
// a packet whose addresses were rewritten after decoding.
func (p *Parsed) readAddrs(b []byte) {
	if p.Version == 4 {
		h := (*[IPv4MinLen]byte)(b[p.L3Off:])
		p.Src = netip.AddrFrom4([4]byte(h[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(h[16:20]))
		return
	}
	h := IPv6(b[p.L3Off:])
	p.Src, p.Dst = h.Src(), h.Dst()
}

// decodeL4 reads ports (or the ICMP echo identifier) from l4, the bytes
// from p.L4Off to p.End.
func (p *Parsed) decodeL4(l4 []byte, quoted bool) DropReason {
	switch p.Proto {
	case ProtoTCP:
		if quoted {
			if len(l4) < 8 {
				return ReasonBadEmbedded
			}
		} else {
			if len(l4) < TCPMinLen {
				if p.Frag == FragFirst {
					return ReasonTinyFragment // RFC 1858
				}
				return ReasonTruncatedTCP
			}
			do := TCP(l4).DataOffset()
			if do < TCPMinLen {
				return ReasonBadTCP
			}
			if do > len(l4) {
				if p.Frag == FragFirst {
					return ReasonTinyFragment
				}
				return ReasonTruncatedTCP
			}
		}
		p.SrcPort, p.DstPort = TCP(l4).SrcPort(), TCP(l4).DstPort()
		p.HasPorts = true
	case ProtoUDP:
		if len(l4) < UDPLen {
			if quoted {
				return ReasonBadEmbedded
			}
			if p.Frag == FragFirst {
				return ReasonTinyFragment
			}
			return ReasonTruncatedUDP
		}
		if !quoted && p.Frag == FragNone {
			if ul := UDP(l4).Length(); ul < UDPLen || ul > len(l4) {
				return ReasonBadUDPLength
			}
		}
		p.SrcPort, p.DstPort = UDP(l4).SrcPort(), UDP(l4).DstPort()
		p.HasPorts = true
	case ProtoICMP, ProtoICMPv6:
		if (p.Proto == ProtoICMP) != (p.Version == 4) {
			return ReasonNone // ICMP of the wrong family: opaque payload
		}
		if len(l4) < ICMPMinLen {
			if quoted {
				return ReasonBadEmbedded
			}
			if p.Frag == FragFirst {
				return ReasonTinyFragment
			}
			return ReasonTruncatedICMP
		}
		p.ICMPType, p.ICMPCode = l4[0], l4[1]
		if p.isEcho() {
			id := binary.BigEndian.Uint16(l4[4:])
			p.SrcPort, p.DstPort = id, id
			p.HasPorts = true
		}
	}
	return ReasonNone
}

// isEcho reports an ICMP echo request or reply.
func (p *Parsed) isEcho() bool {
	switch p.Proto {
	case ProtoICMP:
		return p.Version == 4 && (p.ICMPType == ICMPv4EchoRequest || p.ICMPType == ICMPv4EchoReply)
	case ProtoICMPv6:
		return p.Version == 6 && (p.ICMPType == ICMPv6EchoRequest || p.ICMPType == ICMPv6EchoReply)
	}
	return false
}

// isICMPError reports an ICMP error message that quotes a packet (and is
// not itself a fragment continuation).
func (p *Parsed) isICMPError() bool {
	if p.Frag == FragLater {
		return false
	}
	switch p.Proto {
	case ProtoICMP:
		return p.Version == 4 && p.End-p.L4Off >= ICMPMinLen && isICMPv4Error(p.ICMPType)
	case ProtoICMPv6:
		return p.Version == 6 && p.End-p.L4Off >= ICMPMinLen && isICMPv6Error(p.ICMPType)
	}
	return false
}

// csumOff returns the offset of the upper-layer checksum field relative to
// L4Off, or -1 when the protocol has none we maintain.
func csumOff(proto uint8, version uint8) int {
	switch proto {
	case ProtoTCP:
		return 16
	case ProtoUDP:
		return 6
	case ProtoICMP:
		if version == 4 {
			return 2
		}
	case ProtoICMPv6:
		if version == 6 {
			return 2
		}
	}
	return -1
}
