package ipam

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Node-subnet layout (SPEC §2): in the IPv4 /26, .0 is the network, .1 the
// gateway of every container, .2–.62 containers, .63 broadcast. A
// container's IPv6 address uses the same host number in the /120 (::2–::3e),
// so the two addresses of a pair always match; ::1 is the gateway.
const (
	nodeGateway = 1
	nodeFirst   = 2
	nodeLast    = 62
)

// NodeSubnet hands out the namespace addresses of one worker node's subnet
// pair to its containers. It is the NetManager's local allocator: owner
// keyed (an owner gets the pair it holds), never-used addresses first in
// ascending order, then the least recently freed. There is no quarantine:
// the node itself removes a container's addresses before it frees them.
// Marshal it to the daemon's state file and unmarshal it on restart to
// re-adopt the containers' addresses. Safe for concurrent use.
type NodeSubnet struct {
	subnet SubnetPair

	mu    sync.Mutex // guards owner, own, used, freed
	owner [nodeLast + 1]string
	own   map[string]int
	used  uint64 // bit h: host number h was ever handed out (held or freed)
	freed []int  // freed host numbers, least recently freed first
}

// NewNodeSubnet returns an empty allocator for a node's subnets (an IPv4
// /26 and an IPv6 /120, as AllocSubnet returns them).
func NewNodeSubnet(s SubnetPair) (*NodeSubnet, error) {
	if err := checkNodeSubnet(s); err != nil {
		return nil, err
	}
	return &NodeSubnet{subnet: s, own: map[string]int{}}, nil
}

func checkNodeSubnet(s SubnetPair) error {
	if !s.V4.Addr().Is4() || s.V4.Bits() != subnetV4Bits || s.V4.Masked() != s.V4 {
		return fmt.Errorf("node subnet v4 %s: want a masked IPv4 /26: %w", s.V4, ErrBadRequest)
	}
	if !s.V6.Addr().Is6() || s.V6.Addr().Is4In6() || s.V6.Bits() != subnetV6Bits || s.V6.Masked() != s.V6 {
		return fmt.Errorf("node subnet v6 %s: want a masked IPv6 /120: %w", s.V6, ErrBadRequest)
	}
	return nil
}

// Subnet returns the subnet pair.
func (n *NodeSubnet) Subnet() SubnetPair { return n.subnet }

// Gateway returns the node's gateway pair (.1 and ::1).
func (n *NodeSubnet) Gateway() Pair { return n.pairAt(nodeGateway) }

func (n *NodeSubnet) pairAt(h int) Pair {
	v4 := from32(u32(n.subnet.V4.Addr()) + uint32(h))
	v6, _ := add128(n.subnet.V6.Addr(), uint64(h))
	return Pair{V4: v4, V6: v6}
}

// hostOf returns the host number of a container address (either family),
// or an error wrapping ErrOutOfPool.
func (n *NodeSubnet) hostOf(a netip.Addr) (int, error) {
	var h uint64
	switch {
	case a.Is4() && n.subnet.V4.Contains(a):
		h = uint64(u32(a) - u32(n.subnet.V4.Addr()))
	case a.Is6() && n.subnet.V6.Contains(a):
		h, _ = sub128(a, n.subnet.V6.Addr())
	default:
		return 0, fmt.Errorf("%s not in %s or %s: %w", a, n.subnet.V4, n.subnet.V6, ErrOutOfPool)
	}
	if h < nodeFirst || h > nodeLast {
		return 0, fmt.Errorf("%s is not a container address: %w", a, ErrOutOfPool)
	}
	return int(h), nil
}

// Alloc returns owner's pair, allocating one if it holds none; ErrExhausted
// when all 61 pairs are taken.
func (n *NodeSubnet) Alloc(owner string) (Pair, error) {
	if owner == "" {
		return Pair{}, fmt.Errorf("node alloc: empty owner: %w", ErrBadRequest)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if h, ok := n.own[owner]; ok {
		return n.pairAt(h), nil
	}
	h := n.lowestUnusedLocked()
	if h > nodeLast {
		if len(n.freed) == 0 {
			return Pair{}, fmt.Errorf("node alloc %s in %s: %w", owner, n.subnet.V4, ErrExhausted)
		}
		h = n.freed[0]
		n.freed = n.freed[1:]
	}
	n.takeLocked(h, owner)
	return n.pairAt(h), nil
}

// Adopt records that owner holds the pair with address a (either family),
// for a daemon that finds a container already addressed. Adopting what the
// owner already holds is a no-op; an address held by another owner, or an
// owner holding another address, is ErrConflict.
func (n *NodeSubnet) Adopt(owner string, a netip.Addr) (Pair, error) {
	if owner == "" {
		return Pair{}, fmt.Errorf("node adopt %s: empty owner: %w", a, ErrBadRequest)
	}
	h, err := n.hostOf(a)
	if err != nil {
		return Pair{}, fmt.Errorf("node adopt %s: %w", owner, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if cur, ok := n.own[owner]; ok {
		if cur != h {
			return Pair{}, fmt.Errorf("node adopt %s %s: holds %s: %w", owner, a, n.pairAt(cur).V4, ErrConflict)
		}
		return n.pairAt(h), nil
	}
	if o := n.owner[h]; o != "" {
		return Pair{}, fmt.Errorf("node adopt %s %s: held by %s: %w", owner, a, o, ErrConflict)
	}
	if i := slices.Index(n.freed, h); i >= 0 {
		n.freed = slices.Delete(n.freed, i, i+1)
	}
	n.takeLocked(h, owner)
	return n.pairAt(h), nil
}

func (n *NodeSubnet) takeLocked(h int, owner string) {
	n.owner[h] = owner
	n.own[owner] = h
	n.used |= 1 << h
}

// lowestUnusedLocked returns the lowest host number never handed out, or
// nodeLast+1.
func (n *NodeSubnet) lowestUnusedLocked() int {
	h := nodeFirst
	for h <= nodeLast && n.used&(1<<h) != 0 {
		h++
	}
	return h
}

// Release frees owner's pair; ErrNotFound if it holds none.
func (n *NodeSubnet) Release(owner string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	h, ok := n.own[owner]
	if !ok {
		return fmt.Errorf("node release %s: %w", owner, ErrNotFound)
	}
	delete(n.own, owner)
	n.owner[h] = ""
	n.freed = append(n.freed, h)
	return nil
}

// Lookup returns owner's pair, or ErrNotFound.
func (n *NodeSubnet) Lookup(owner string) (Pair, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	h, ok := n.own[owner]
	if !ok {
		return Pair{}, fmt.Errorf("node lookup %s: %w", owner, ErrNotFound)
	}
	return n.pairAt(h), nil
}

// Owners returns every owner and its pair.
func (n *NodeSubnet) Owners() map[string]Pair {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := make(map[string]Pair, len(n.own))
	for o, h := range n.own {
		m[o] = n.pairAt(h)
	}
	return m
}

// nodeSubnetJSON is the persisted form. Addresses are written out for
// people reading the state file; host numbers are derived from the IPv4
// ones and the IPv6 ones are checked against them. Addresses neither held
// nor freed are never-used.
type nodeSubnetJSON struct {
	SubnetV4 netip.Prefix   `json:"subnet_v4"`
	SubnetV6 netip.Prefix   `json:"subnet_v6"`
	Held     []nodeHeldJSON `json:"held"`
	Freed    []netip.Addr   `json:"freed"`
}

type nodeHeldJSON struct {
	Owner string     `json:"owner"`
	V4    netip.Addr `json:"v4"`
	V6    netip.Addr `json:"v6"`
}

// MarshalJSON writes the subnets, the held pairs, and the reuse order.
func (n *NodeSubnet) MarshalJSON() ([]byte, error) {
	n.mu.Lock()
	j := nodeSubnetJSON{SubnetV4: n.subnet.V4, SubnetV6: n.subnet.V6, Held: []nodeHeldJSON{}, Freed: []netip.Addr{}}
	for h := nodeFirst; h <= nodeLast; h++ {
		if o := n.owner[h]; o != "" {
			p := n.pairAt(h)
			j.Held = append(j.Held, nodeHeldJSON{Owner: o, V4: p.V4, V6: p.V6})
		}
	}
	for _, h := range n.freed {
		j.Freed = append(j.Freed, n.pairAt(h).V4)
	}
	n.mu.Unlock()
	return json.Marshal(j)
}

// UnmarshalJSON replaces n's state with a persisted one after checking it:
// no address is listed twice, no owner holds two pairs.
func (n *NodeSubnet) UnmarshalJSON(b []byte) error {
	var j nodeSubnetJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("node subnet state: %w", err)
	}
	s := SubnetPair{V4: j.SubnetV4, V6: j.SubnetV6}
	if err := checkNodeSubnet(s); err != nil {
		return fmt.Errorf("node subnet state: %w", err)
	}
	fresh := &NodeSubnet{subnet: s, own: map[string]int{}}
	seen := map[int]bool{}
	claim := func(a netip.Addr) (int, error) {
		if !a.Is4() {
			return 0, fmt.Errorf("%s: want the IPv4 address", a)
		}
		h, err := fresh.hostOf(a)
		if err != nil {
			return 0, err
		}
		if seen[h] {
			return 0, fmt.Errorf("%s: listed twice", a)
		}
		seen[h] = true
		return h, nil
	}
	for _, e := range j.Held {
		h, err := claim(e.V4)
		if err != nil {
			return fmt.Errorf("node subnet state: held %q: %w", e.Owner, err)
		}
		if e.Owner == "" {
			return fmt.Errorf("node subnet state: %s held by empty owner", e.V4)
		}
		if _, dup := fresh.own[e.Owner]; dup {
			return fmt.Errorf("node subnet state: owner %q holds two pairs", e.Owner)
		}
		if e.V6.IsValid() && e.V6 != fresh.pairAt(h).V6 {
			return fmt.Errorf("node subnet state: owner %q: v6 %s does not match %s", e.Owner, e.V6, e.V4)
		}
		fresh.takeLocked(h, e.Owner)
	}
	for _, a := range j.Freed {
		h, err := claim(a)
		if err != nil {
			return fmt.Errorf("node subnet state: freed: %w", err)
		}
		fresh.freed = append(fresh.freed, h)
		fresh.used |= 1 << h
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.subnet, n.owner, n.own, n.used, n.freed = fresh.subnet, fresh.owner, fresh.own, fresh.used, fresh.freed
	return nil
}
