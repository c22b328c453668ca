package ipam

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"time"
)

// V6IndexCap bounds the index space of every IPv6 kind range: kind k hands
// out the offsets 1 … V6IndexCap-1 of its /21 (about 4.3 billion addresses
// of 2^107). The Redis scripts keep indexes in Lua numbers (IEEE doubles,
// exact to 2^53) and format them with %.0f; 2^32 keeps every index, sum
// and counter far inside that. An address of a kind range at or beyond the
// cap is outside the pool (ErrOutOfPool).
const V6IndexCap = 1 << 32

const (
	subnetV4Bits = 26
	subnetV6Bits = 120
	kindV6Bits   = 21
	kindStep     = 0x1000 // kind k's range starts at second hextet k*kindStep
)

// DefaultConfig is the address plan of SPEC §2.
func DefaultConfig() Config {
	return Config{
		WorkerV4First: netip.MustParsePrefix("10.18.0.0/26"),
		WorkerV6First: netip.MustParsePrefix("fc00::/120"),
		WorkerCount:   12288,
		ServiceV4:     netip.MustParsePrefix("10.30.0.0/16"),
		ServiceV6Base: netip.MustParsePrefix("fdff::/16"),
		Quarantine:    60 * time.Second,
	}
}

// WithDefaults returns c with every zero field replaced by DefaultConfig's.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	if !c.WorkerV4First.IsValid() {
		c.WorkerV4First = d.WorkerV4First
	}
	if !c.WorkerV6First.IsValid() {
		c.WorkerV6First = d.WorkerV6First
	}
	if c.WorkerCount == 0 {
		c.WorkerCount = d.WorkerCount
	}
	if !c.ServiceV4.IsValid() {
		c.ServiceV4 = d.ServiceV4
	}
	if !c.ServiceV6Base.IsValid() {
		c.ServiceV6Base = d.ServiceV6Base
	}
	if c.Quarantine == 0 {
		c.Quarantine = d.Quarantine
	}
	return c
}

// Validate checks the plan after defaults are applied (see WithDefaults).
// Every error names the field.
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	checkPrefix := func(name string, p netip.Prefix, is4 bool, bitsWant int) {
		switch {
		case is4 && !p.Addr().Is4():
			bad("%s %s: not an IPv4 prefix", name, p)
		case !is4 && (!p.Addr().Is6() || p.Addr().Is4In6()):
			bad("%s %s: not an IPv6 prefix", name, p)
		case p.Addr().Zone() != "":
			bad("%s %s: has a zone", name, p)
		case bitsWant >= 0 && p.Bits() != bitsWant:
			bad("%s %s: must be a /%d", name, p, bitsWant)
		case p.Masked() != p:
			bad("%s %s: host bits set (want %s)", name, p, p.Masked())
		default:
			return
		}
	}
	checkPrefix("WorkerV4First", c.WorkerV4First, true, subnetV4Bits)
	checkPrefix("WorkerV6First", c.WorkerV6First, false, subnetV6Bits)
	checkPrefix("ServiceV4", c.ServiceV4, true, -1)
	checkPrefix("ServiceV6Base", c.ServiceV6Base, false, 16)
	if c.WorkerCount < 0 {
		bad("WorkerCount %d: negative", c.WorkerCount)
	} else if c.WorkerV4First.Addr().Is4() {
		first := u32(c.WorkerV4First.Addr())
		if uint64(first)+uint64(c.WorkerCount)*64 > 1<<32 {
			bad("WorkerCount %d: %d /26 blocks from %s run past 255.255.255.255", c.WorkerCount, c.WorkerCount, c.WorkerV4First)
		}
	}
	if c.WorkerCount > 1<<24 {
		bad("WorkerCount %d: more than 2^24 nodes", c.WorkerCount)
	} else if c.WorkerV6First.Addr().Is6() {
		if _, carry := add128(c.WorkerV6First.Addr(), uint64(c.WorkerCount)*256); carry {
			bad("WorkerCount %d: /120 blocks from %s run past the end of IPv6", c.WorkerCount, c.WorkerV6First)
		}
	}
	if c.ServiceV4.Addr().Is4() && c.ServiceV4.Bits() > 30 {
		bad("ServiceV4 %s: needs at least a /30 (its first and last address are never handed out)", c.ServiceV4)
	}
	if len(errs) > 0 {
		return fmt.Errorf("ipam config: %w", errors.Join(errs...))
	}
	return nil
}

// plan is a validated Config with its index spaces worked out. Every pool
// is a range [lo, hi] of indexes; index i of a service pool is the address
// at offset i from the pool's network address, index i of the subnet pool
// is worker block i.
type plan struct {
	cfg        Config
	v4Lo, v4Hi uint64
	v6Lo, v6Hi uint64
	subnets    uint64
	// quarantineMs is the quarantine in milliseconds (the Redis clock's
	// resolution); negative means none.
	quarantineMs int64
}

func newPlan(cfg Config, v6Cap uint64) (plan, error) {
	if err := cfg.Validate(); err != nil {
		return plan{}, err
	}
	cfg = cfg.WithDefaults()
	p := plan{
		cfg:     cfg,
		v4Lo:    1,
		v4Hi:    (uint64(1) << (32 - cfg.ServiceV4.Bits())) - 2,
		v6Lo:    1,
		v6Hi:    v6Cap - 1,
		subnets: uint64(cfg.WorkerCount),
	}
	p.quarantineMs = -1
	if cfg.Quarantine >= 0 {
		p.quarantineMs = cfg.Quarantine.Milliseconds()
	}
	return p, nil
}

// KindPrefix is kind k's IPv6 range: the /21 at ServiceV6Base with k*0x1000
// in the second hextet.
func (c Config) KindPrefix(k Kind) (netip.Prefix, error) {
	if k >= MaxKinds {
		return netip.Prefix{}, fmt.Errorf("kind %d: %w", k, ErrBadRequest)
	}
	c = c.WithDefaults()
	b := c.ServiceV6Base.Masked().Addr().As16()
	b[2] |= byte(uint16(k) * kindStep >> 8)
	return netip.PrefixFrom(netip.AddrFrom16(b), kindV6Bits), nil
}

// SubnetAt returns worker block i: the i-th /26 from WorkerV4First and the
// i-th /120 from WorkerV6First.
func (c Config) SubnetAt(i int) (SubnetPair, error) {
	c = c.WithDefaults()
	if i < 0 || i >= c.WorkerCount {
		return SubnetPair{}, fmt.Errorf("subnet index %d of %d: %w", i, c.WorkerCount, ErrOutOfPool)
	}
	v4 := from32(u32(c.WorkerV4First.Addr()) + uint32(i)*64)
	v6, _ := add128(c.WorkerV6First.Addr(), uint64(i)*256)
	return SubnetPair{V4: netip.PrefixFrom(v4, subnetV4Bits), V6: netip.PrefixFrom(v6, subnetV6Bits)}, nil
}

// SubnetIndex returns the worker block index of a node's IPv4 /26 or IPv6
// /120 (the inverse of SubnetAt).
func (c Config) SubnetIndex(p netip.Prefix) (int, error) {
	c = c.WithDefaults()
	var off uint64
	var ok bool
	switch {
	case p.Addr().Is4() && p.Bits() == subnetV4Bits:
		a, f := u32(p.Addr()), u32(c.WorkerV4First.Addr())
		ok = a >= f && (a-f)%64 == 0
		off = uint64(a-f) / 64
	case p.Addr().Is6() && p.Bits() == subnetV6Bits:
		var d uint64
		d, ok = sub128(p.Addr(), c.WorkerV6First.Addr())
		ok = ok && d%256 == 0
		off = d / 256
	default:
		return 0, fmt.Errorf("subnet %s: %w", p, ErrBadRequest)
	}
	if !ok || off >= uint64(c.WorkerCount) {
		return 0, fmt.Errorf("subnet %s: %w", p, ErrOutOfPool)
	}
	return int(off), nil
}

// subnetAt is SubnetAt for an index known to be in range.
func (p *plan) subnetAt(i uint64) SubnetPair {
	s, _ := p.cfg.SubnetAt(int(i))
	return s
}

// v4At is the service-pool IPv4 address with index i.
func (p *plan) v4At(i uint64) netip.Addr {
	return from32(u32(p.cfg.ServiceV4.Addr()) + uint32(i))
}

// v6At is kind k's IPv6 address with index i.
func (p *plan) v6At(k Kind, i uint64) netip.Addr {
	pfx, _ := p.cfg.KindPrefix(k)
	a, _ := add128(pfx.Addr(), i)
	return a
}

// v4Index is the index of a service-pool IPv4 address.
func (p *plan) v4Index(a netip.Addr) (uint64, error) {
	if !a.Is4() || a.Zone() != "" {
		return 0, fmt.Errorf("%s is not an IPv4 address: %w", a, ErrBadRequest)
	}
	if !p.cfg.ServiceV4.Contains(a) {
		return 0, fmt.Errorf("%s not in %s: %w", a, p.cfg.ServiceV4, ErrOutOfPool)
	}
	i := uint64(u32(a) - u32(p.cfg.ServiceV4.Addr()))
	if i < p.v4Lo || i > p.v4Hi {
		return 0, fmt.Errorf("%s is never handed out: %w", a, ErrOutOfPool)
	}
	return i, nil
}

// v6Index is the kind and index of a service-pool IPv6 address.
func (p *plan) v6Index(a netip.Addr) (Kind, uint64, error) {
	if !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return 0, 0, fmt.Errorf("%s is not an IPv6 address: %w", a, ErrBadRequest)
	}
	if !p.cfg.ServiceV6Base.Contains(a) {
		return 0, 0, fmt.Errorf("%s not in %s: %w", a, p.cfg.ServiceV6Base, ErrOutOfPool)
	}
	k := Kind(a.As16()[2] >> 4)
	pfx, _ := p.cfg.KindPrefix(k)
	if !pfx.Contains(a) {
		return 0, 0, fmt.Errorf("%s not in any kind's range: %w", a, ErrOutOfPool)
	}
	i, ok := sub128(a, pfx.Addr())
	if !ok || i < p.v6Lo || i > p.v6Hi {
		return 0, 0, fmt.Errorf("%s outside %s's index space 1..%d: %w", a, pfx, p.v6Hi, ErrOutOfPool)
	}
	return k, i, nil
}

// customIndexes checks a request's custom addresses against the pools:
// has4/has6 say which were given.
func (p *plan) customIndexes(r Request) (i4 uint64, has4 bool, i6 uint64, has6 bool, err error) {
	if r.Custom4.IsValid() {
		if i4, err = p.v4Index(r.Custom4); err != nil {
			return 0, false, 0, false, fmt.Errorf("custom v4: %w", err)
		}
		has4 = true
	}
	if r.Custom6.IsValid() {
		var k Kind
		if k, i6, err = p.v6Index(r.Custom6); err != nil {
			return 0, false, 0, false, fmt.Errorf("custom v6: %w", err)
		}
		if k != r.Kind {
			pfx, _ := p.cfg.KindPrefix(r.Kind)
			return 0, false, 0, false, fmt.Errorf("custom v6: %s not in kind %d's %s: %w", r.Custom6, r.Kind, pfx, ErrOutOfPool)
		}
		has6 = true
	}
	return i4, has4, i6, has6, nil
}

// checkRequest validates the parts of a request that need no pool state.
func checkRequest(r Request) error {
	if r.Owner == "" {
		return fmt.Errorf("empty owner: %w", ErrBadRequest)
	}
	if r.Kind >= MaxKinds {
		return fmt.Errorf("kind %d (max %d): %w", r.Kind, MaxKinds-1, ErrBadRequest)
	}
	return nil
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func from32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func split128(a netip.Addr) (hi, lo uint64) {
	b := a.As16()
	for i := range 8 {
		hi = hi<<8 | uint64(b[i])
		lo = lo<<8 | uint64(b[8+i])
	}
	return hi, lo
}

func join128(hi, lo uint64) netip.Addr {
	var b [16]byte
	for i := 7; i >= 0; i-- {
		b[i], b[8+i] = byte(hi), byte(lo)
		hi >>= 8
		lo >>= 8
	}
	return netip.AddrFrom16(b)
}

// add128 returns a+d; carry reports overflow past ffff:…:ffff.
func add128(a netip.Addr, d uint64) (netip.Addr, bool) {
	hi, lo := split128(a)
	lo, c := bits.Add64(lo, d, 0)
	hi, c = bits.Add64(hi, 0, c)
	return join128(hi, lo), c != 0
}

// sub128 returns a-b when it is in [0, 2^64).
func sub128(a, b netip.Addr) (uint64, bool) {
	ah, al := split128(a)
	bh, bl := split128(b)
	lo, borrow := bits.Sub64(al, bl, 0)
	hi, borrow := bits.Sub64(ah, bh, borrow)
	return lo, borrow == 0 && hi == 0
}
