//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfprog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Tier is the loaded kernel tier (c/tier.c): its TC and XDP programs and
// maps, on the node maps of an Objects. Safe for concurrent use, except
// that the slots (Slot) are shared memory whose users agree on who writes
// what (see TierSlot).
type Tier struct {
	objs    ktObjects
	reasons []string
	mem     []byte // tier_slots, mapped
	slots   []TierSlot
	pin     string

	closeOnce sync.Once
	closeErr  error
}

// TierSlot is one slot of tier_slots (struct tier_slot), in memory shared
// with the programs: Gate, Packets, Bytes, TCPFlags and LastNs change under
// the daemon's feet and are read with atomics; the action fields are
// written only while no key publishes the slot.
type TierSlot = ktTierSlot

// TierKey is a flow of the kernel tier (struct tier_key).
type TierKey = ktTierKey

// Tier slot flags (enum tier_flags) and kinds (enum tier_kind).
const (
	TierSNAT    = uint32(ktTierFlagsTIER_F_SNAT)
	TierDNAT    = uint32(ktTierFlagsTIER_F_DNAT)
	TierEncap   = uint32(ktTierFlagsTIER_F_ENCAP)
	TierDeliver = uint32(ktTierFlagsTIER_F_DELIVER)
	TierDecap   = uint32(ktTierFlagsTIER_F_DECAP)

	TierKindService  = uint32(ktTierKindTIER_KIND_SERVICE)
	TierKindInstance = uint32(ktTierKindTIER_KIND_INSTANCE)
	TierKindIngress  = uint32(ktTierKindTIER_KIND_INGRESS)
)

// TierGateActive is the gate bit that hands a flow to the kernel.
const TierGateActive = uint64(1) << 63

// TierOuterLen is the size of the outer headers a slot encapsulates with.
const TierOuterLen = len(TierSlot{}.Outer)

// TierConfig parameterises LoadTier.
type TierConfig struct {
	// Share holds the node maps the tier uses (services, node, peers,
	// ports, endpoints); required.
	Share *Objects
	// Flows is the capacity of the flow table and the slots (0: 65536).
	Flows int
	// Queues is the number of punt queues (XSKMAP slots; 0: 64).
	Queues int
	// PinPath, when set, is a bpffs directory where the tier's flows,
	// slots, config and counters are pinned (and found again by the next
	// load with the same layout), so decided flows outlive the daemon.
	PinPath string
}

// tierPinned are the maps pinned with TierConfig.PinPath. The punt XSKMAP
// is not: its sockets die with the daemon.
var tierPinned = []string{ktMapTierFlows, ktMapTierSlots, ktMapTierConfig, ktMapTierStats}

// LoadTier loads the kernel tier's programs and maps. It attaches nothing.
func LoadTier(cfg TierConfig) (*Tier, error) {
	if cfg.Share == nil || cfg.Share.objs.Peers == nil {
		return nil, errors.New("tier config: Share is closed or not loaded")
	}
	if cfg.Flows < 0 || cfg.Queues < 0 {
		return nil, fmt.Errorf("tier config: negative Flows (%d) or Queues (%d)", cfg.Flows, cfg.Queues)
	}
	spec, err := loadKt()
	if err != nil {
		return nil, fmt.Errorf("load tier spec: %w", err)
	}
	reasons, err := enumNames(spec, "tier_reason", "TIER_")
	if err != nil {
		return nil, err
	}
	if cfg.Flows > 0 {
		spec.Maps[ktMapTierFlows].MaxEntries = uint32(cfg.Flows)
		spec.Maps[ktMapTierSlots].MaxEntries = uint32(cfg.Flows)
	}
	if cfg.Queues > 0 {
		spec.Maps[ktMapTierXsks].MaxEntries = uint32(cfg.Queues)
	}
	s := &cfg.Share.objs
	spec.Maps[ktMapPeers].MaxEntries = s.Peers.MaxEntries()
	spec.Maps[ktMapEndpoints].MaxEntries = s.Endpoints.MaxEntries()
	spec.Maps[ktMapPorts].MaxEntries = s.Ports.MaxEntries()
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		ktMapServices: s.Services, ktMapNodeCfg: s.NodeCfg, ktMapPeers: s.Peers,
		ktMapPorts: s.Ports, ktMapEndpoints: s.Endpoints,
	}}
	if cfg.PinPath != "" {
		if err := os.MkdirAll(cfg.PinPath, 0o700); err != nil {
			return nil, fmt.Errorf("tier pin path: %w", err)
		}
		for _, m := range tierPinned {
			spec.Maps[m].Pinning = ebpf.PinByName
		}
		opts.Maps.PinPath = cfg.PinPath
	}
	t := &Tier{reasons: reasons, pin: cfg.PinPath}
	err = spec.LoadAndAssign(&t.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Pinned by a version with another layout: its flows cannot be
		// read, so they go (new flows are decided again).
		for _, m := range tierPinned {
			_ = os.Remove(filepath.Join(cfg.PinPath, m))
		}
		err = spec.LoadAndAssign(&t.objs, opts)
	}
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load tier programs: %+v", verr)
		}
		return nil, fmt.Errorf("load tier programs: %w", err)
	}
	if err := t.mapSlots(); err != nil {
		return nil, errors.Join(err, t.Close())
	}
	return t, nil
}

// mapSlots maps tier_slots (BPF_F_MMAPABLE) into memory.
func (t *Tier) mapSlots() error {
	n := int(t.objs.TierSlots.MaxEntries())
	size := int(unsafe.Sizeof(TierSlot{}))
	if size%8 != 0 || int(t.objs.TierSlots.ValueSize()) != size {
		return fmt.Errorf("tier slots: value size %d, Go struct %d", t.objs.TierSlots.ValueSize(), size)
	}
	page := os.Getpagesize()
	length := (n*size + page - 1) / page * page
	mem, err := unix.Mmap(t.objs.TierSlots.FD(), 0, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("tier slots: mmap: %w", err)
	}
	t.mem = mem
	t.slots = unsafe.Slice((*TierSlot)(unsafe.Pointer(&mem[0])), n)
	return nil
}

// NumSlots is the number of slots (and the capacity of the flow table).
func (t *Tier) NumSlots() int { return len(t.slots) }

// Slot returns slot i in shared memory. It stays valid until Close.
func (t *Tier) Slot(i uint32) *TierSlot { return &t.slots[i] }

// SetConfig tells the programs where punted packets leave (punt0) and
// which interface is the uplink.
func (t *Tier) SetConfig(puntIfindex, uplinkIfindex int) error {
	c := ktTierCfg{PuntIfindex: uint32(puntIfindex), UplinkIfindex: uint32(uplinkIfindex)}
	if err := t.objs.TierConfig.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("tier config map update: %w", err)
	}
	return nil
}

// NewTierKey is the key of a flow arriving on ifindex with protocol proto
// from src to dst (addresses of one family; IPv4-mapped ones count as
// IPv4).
func NewTierKey(ifindex int, proto uint8, src, dst netip.AddrPort) TierKey {
	k := TierKey{Ifindex: uint32(ifindex), Proto: proto, Family: 6}
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if s.Is4() {
		k.Family = 4
		a, b := s.As4(), d.As4()
		k.Saddr[0], k.Daddr[0] = word(a[:]), word(b[:])
	} else {
		k.Saddr, k.Daddr = words(s.As16()), words(d.As16())
	}
	k.Sport, k.Dport = htons(src.Port()), htons(dst.Port())
	return k
}

// htons turns a port into the network-order value the programs compare
// with the wire.
func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// TierKeyAddrs returns the flow's source and destination.
func TierKeyAddrs(k *TierKey) (src, dst netip.AddrPort) {
	return netip.AddrPortFrom(keyAddr(k.Family, k.Saddr), htons(k.Sport)),
		netip.AddrPortFrom(keyAddr(k.Family, k.Daddr), htons(k.Dport))
}

func keyAddr(family uint8, w [4]uint32) netip.Addr {
	var b [16]byte
	for i, x := range w {
		binary.NativeEndian.PutUint32(b[4*i:], x)
	}
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// AddrWords returns a as the program stores addresses (network order
// words; IPv4 in the first).
func AddrWords(a netip.Addr) [4]uint32 {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return [4]uint32{word(b[:])}
	}
	return words(a.As16())
}

// OuterTemplate returns the outer IPv4 and UDP headers a slot
// encapsulates with, from node to peer (DF, TTL 64, UDP from sport to
// dport, checksum 0; lengths and header checksum zero: the program fills
// them in), and the one's complement sum of the header's 16-bit words as
// the program reads them (native order), which it finishes the checksum
// from.
func OuterTemplate(node, peer netip.Addr, sport, dport uint16) (outer [TierOuterLen]byte, sum uint32) {
	o := outer[:]
	o[0], o[6], o[8], o[9] = 0x45, 0x40, 64, 17
	n, p := node.Unmap().As4(), peer.Unmap().As4()
	copy(o[12:], n[:])
	copy(o[16:], p[:])
	binary.BigEndian.PutUint16(o[20:], sport)
	binary.BigEndian.PutUint16(o[22:], dport)
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.NativeEndian.Uint16(o[i:]))
	}
	return outer, sum
}

// Publish makes the programs find slot for k. It fails with
// ebpf.ErrKeyExist when k is published already.
func (t *Tier) Publish(k *TierKey, slot uint32) error {
	if err := t.objs.TierFlows.Update(k, slot, ebpf.UpdateNoExist); err != nil {
		return fmt.Errorf("tier flows update: %w", err)
	}
	return nil
}

// Unpublish removes k; not an error if unknown.
func (t *Tier) Unpublish(k *TierKey) error {
	err := t.objs.TierFlows.Delete(k)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("tier flows delete: %w", err)
	}
	return nil
}

// Published calls f for every published key and its slot (the daemon
// re-adopting the flows of the one before it).
func (t *Tier) Published(f func(k TierKey, slot uint32)) error {
	var k TierKey
	var slot uint32
	it := t.objs.TierFlows.Iterate()
	for it.Next(&k, &slot) {
		f(k, slot)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("tier flows iterate: %w", err)
	}
	return nil
}

// RegisterXSK puts a worker's socket on punt queue queue.
func (t *Tier) RegisterXSK(queue, fd int) error {
	if err := t.objs.TierXsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("tier xskmap update slot %d: %w", queue, err)
	}
	return nil
}

// Counters returns the tier's counters ("fast_port", "punt_miss", ...),
// summed over CPUs.
func (t *Tier) Counters() (map[string]uint64, error) {
	out := make(map[string]uint64, len(t.reasons))
	for i, name := range t.reasons {
		v, err := sumPerCPU(t.objs.TierStats, uint32(i))
		if err != nil {
			return nil, err
		}
		out[name] = v
	}
	return out, nil
}

// Programs, for the test-run facility.
func (t *Tier) PortProgram() *ebpf.Program   { return t.objs.TcPort }
func (t *Tier) UplinkProgram() *ebpf.Program { return t.objs.TcUplink }
func (t *Tier) PuntProgram() *ebpf.Program   { return t.objs.TcPunt }

// AttachPort attaches tc_port to ifindex's ingress (a container's host
// veth). With a pin path the link is pinned (ports/<ifindex>) and
// survives the daemon; an existing pinned link gets this program instead
// (an upgrade or a restart).
func (t *Tier) AttachPort(ifindex int) (link.Link, error) {
	return t.attachTCX(t.objs.TcPort, ifindex, fmt.Sprintf("port-%d", ifindex))
}

// AttachUplink attaches tc_uplink to the uplink's ingress (pin "uplink").
func (t *Tier) AttachUplink(ifindex int) (link.Link, error) {
	return t.attachTCX(t.objs.TcUplink, ifindex, "uplink")
}

// AttachPunt attaches tc_punt to punt0's ingress (pin "punt").
func (t *Tier) AttachPunt(ifindex int) (link.Link, error) {
	return t.attachTCX(t.objs.TcPunt, ifindex, "punt")
}

// AttachPuntXDP attaches xdp_punt to punt1 in native mode. Not pinned:
// without the daemon's sockets it has nothing to deliver to.
func (t *Tier) AttachPuntXDP(ifindex int) (link.Link, error) {
	return attach(t.objs.XdpPunt, "xdp_punt", ifindex, ModeNative)
}

// LinkPin is where the tier pins the link named name ("uplink", "punt",
// "port-<ifindex>"), or "" without a pin path.
func (t *Tier) LinkPin(name string) string {
	if t.pin == "" {
		return ""
	}
	return filepath.Join(t.pin, "link-"+name)
}

func (t *Tier) attachTCX(p *ebpf.Program, ifindex int, name string) (link.Link, error) {
	pin := t.LinkPin(name)
	if pin != "" {
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if info, ierr := l.Info(); ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
				if err := l.Update(p); err == nil {
					return l, nil
				}
			}
			// Stale (the interface went, or the link is broken): start over.
			_ = l.Unpin()
			_ = l.Close()
		}
	}
	l, err := link.AttachTCX(link.TCXOptions{Program: p, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, fmt.Errorf("attach %s to ifindex %d: %w", name, ifindex, err)
	}
	if pin != "" {
		if err := l.Pin(pin); err != nil {
			return nil, errors.Join(fmt.Errorf("pin %s: %w", name, err), l.Close())
		}
	}
	return l, nil
}

// Close unmaps the slots and releases programs and maps (idempotent).
// Pinned maps and links stay in the kernel.
func (t *Tier) Close() error {
	t.closeOnce.Do(func() {
		var errs []error
		if t.mem != nil {
			errs = append(errs, unix.Munmap(t.mem))
			t.mem, t.slots = nil, nil
		}
		errs = append(errs, t.objs.Close())
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}
