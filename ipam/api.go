package ipam

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Sentinel errors. Callers test them with errors.Is; control maps them to
// HTTP status codes in one table.
var (
	// ErrExhausted: the pool has no free address (or subnet) left outside
	// quarantine.
	ErrExhausted = errors.New("ipam: pool exhausted")
	// ErrConflict: a requested custom address is allocated, quarantined, or
	// the owner already holds a different address.
	ErrConflict = errors.New("ipam: address not free")
	// ErrOutOfPool: a requested address lies outside the pool it was asked
	// from, or is one of the addresses never handed out (network, last).
	ErrOutOfPool = errors.New("ipam: address outside pool")
	// ErrNotFound: release of an owner or address that holds nothing.
	ErrNotFound = errors.New("ipam: not allocated")
	// ErrBadRequest: malformed request (empty owner, unknown kind, wrong
	// family of a custom address).
	ErrBadRequest = errors.New("ipam: bad request")
	// ErrUnavailable wraps every failure to reach the backing store (Redis
	// down, timeout). Nothing was changed when it is returned.
	ErrUnavailable = errors.New("ipam: store unavailable")
)

// Kind selects the IPv6 range of a service-pool address: instance IPs, or
// service IPs of one balancing policy. IPv4 addresses of every kind come
// from one shared pool. Kind 0 is the instance kind; kind k ≥ 1 holds the
// service IPs of the balancing policy with ID k (package policy: the
// control plane passes ipam.Kind(id)). Kind k's IPv6 range is
// Config.ServiceV6Base + k*0x1000 in the second hextet, /21.
type Kind uint8

const (
	KindInstance Kind = 0
	// MaxKinds bounds the number of kinds (16 /21 blocks at 0x1000 steps).
	MaxKinds = 16
)

// Pair is one dual-stack allocation.
type Pair struct {
	V4 netip.Addr
	V6 netip.Addr
}

// SubnetPair is a worker node's subnets: an IPv4 /26 and an IPv6 /120.
type SubnetPair struct {
	V4 netip.Prefix
	V6 netip.Prefix
}

// Request asks for one dual-stack service-pool allocation.
//
// Owner is an opaque non-empty string naming the holder (the control plane
// uses "svc/<id>/<policy>/<generation>" and "inst/<id>/<n>/<generation>").
// Allocation is idempotent per owner: a request whose owner already holds
// a pair returns that pair (unless a custom address that differs is asked
// for: ErrConflict).
//
// Custom4/Custom6, when valid, ask for that exact address: it must lie in
// the pool (ErrOutOfPool) and be free, not quarantined (ErrConflict).
type Request struct {
	Owner   string
	Kind    Kind
	Custom4 netip.Addr
	Custom6 netip.Addr
}

// Config is the address plan. Zero values are replaced by DefaultConfig's.
type Config struct {
	// WorkerV4First is the first worker /26; WorkerCount consecutive /26
	// blocks follow it (default 10.18.0.0/26, 12288 blocks).
	WorkerV4First netip.Prefix
	// WorkerV6First is the first worker /120; block i is WorkerV6First
	// advanced by i*256 (default fc00::/120).
	WorkerV6First netip.Prefix
	WorkerCount   int

	// ServiceV4 is the shared IPv4 service and instance pool; its first and
	// last address are never handed out (default 10.30.0.0/16).
	ServiceV4 netip.Prefix
	// ServiceV6Base is the base of the kind ranges (default fdff::/16); kind
	// k gets the /21 starting at base + k*0x1000 in the second hextet. Each
	// kind's first address (the /21's network address) is never handed out.
	ServiceV6Base netip.Prefix

	// Quarantine is how long a released address or subnet stays unusable by
	// other owners (default 60 s). Negative means no quarantine.
	Quarantine time.Duration
}

// Allocator is the control plane's view of the pools. The Redis store is the
// real one; every method is one atomic server-side script, safe to call from
// any number of processes at once.
//
// Order of reuse: never-used addresses first (ascending), then released
// ones past quarantine, least recently released first. An owner that
// re-allocates may take back its own previous address or subnet even while
// it is quarantined (a node re-registering keeps its subnets).
type Allocator interface {
	// AllocSubnet returns the node's subnet pair, allocating one if the node
	// holds none.
	AllocSubnet(ctx context.Context, nodeID string) (SubnetPair, error)
	// ReleaseSubnet frees the node's subnets into quarantine.
	ReleaseSubnet(ctx context.Context, nodeID string) error
	// LookupSubnet returns the node's subnets, or ErrNotFound.
	LookupSubnet(ctx context.Context, nodeID string) (SubnetPair, error)

	// Alloc performs all requests atomically: every pair is allocated, or
	// none is and the error says why (the first failing request).
	Alloc(ctx context.Context, reqs []Request) ([]Pair, error)
	// Release frees everything the owners hold, atomically. Owners that hold
	// nothing are ignored.
	Release(ctx context.Context, owners []string) error
	// Owner returns the owner of an allocated service-pool address (v4 or
	// v6), or ErrNotFound.
	Owner(ctx context.Context, addr netip.Addr) (string, error)
	// Peek returns the address the next allocation of kind would get for the
	// given family (4 or 6), without allocating. Read only.
	Peek(ctx context.Context, kind Kind, family int) (netip.Addr, error)
}
