package fastpath

import (
	"net/netip"
	"time"
)

// fragCache remembers, per worker, the translation chosen for a fragmented
// datagram's first fragment so the later fragments (which carry no ports)
// get the same one. Direct-mapped, fixed size, no allocation: a colliding
// datagram overwrites an older entry (its later fragments then miss and are
// dropped on egress, passed untranslated on ingress). Fragments of one
// datagram must reach the same worker: egress fragments come from one
// container port (one socket, one worker); on ingress the outer UDP header
// is the same for all of them, so RSS keeps them on one queue.
//
// The first fragment must arrive before the later ones (Linux sends them in
// order); a later fragment that arrives first is handled as unknown.
//
// The slot hash is seeded per cache (NewWorkerCtx): a container picks its
// fragment IDs, and with a fixed hash it could aim them at the slots other
// containers' datagrams use and have their later fragments dropped.
type fragCache struct {
	e    [fragSlots]fragEntry
	seed uint32
}

const (
	fragSlots   = 256
	fragTimeout = int64(5 * time.Second)
)

type fragEntry struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8
	expires  int64
	inst     uint32     // egress: instance number chosen for the flow
	hash     uint32     // egress: flow hash (same tunnel source port)
	addr     netip.Addr // ingress: service IP to restore as source
}

func fragSlot(seed uint32, src, dst netip.Addr, id uint32, proto uint8) int {
	s := src.As16()
	d := dst.As16()
	h := seed ^ uint32(proto)*0x9E3779B1 ^ id*0x85EBCA77
	for i := 12; i < 16; i++ {
		h = (h ^ uint32(s[i])) * 0x01000193
		h = (h ^ uint32(d[i])) * 0x01000193
	}
	return int(h % fragSlots)
}

func (c *fragCache) put(p *Parsed, inst uint32, addr netip.Addr, hash uint32, now int64) {
	e := &c.e[fragSlot(c.seed, p.Src, p.Dst, p.FragID, p.Proto)]
	*e = fragEntry{src: p.Src, dst: p.Dst, id: p.FragID, proto: p.Proto, expires: now + fragTimeout, inst: inst, addr: addr, hash: hash}
}

func (c *fragCache) get(p *Parsed, now int64) *fragEntry {
	e := &c.e[fragSlot(c.seed, p.Src, p.Dst, p.FragID, p.Proto)]
	if e.expires < now || e.id != p.FragID || e.proto != p.Proto || e.src != p.Src || e.dst != p.Dst {
		return nil
	}
	return e
}
