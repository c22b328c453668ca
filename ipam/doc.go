// Package ipam allocates Oakwire's addresses (SPEC §2): worker-node subnet
// pairs (an IPv4 /26 and an IPv6 /120 per node), dual-stack service and
// instance IPs (one shared IPv4 pool, one IPv6 /21 per kind), and, on a
// node, the namespace addresses of its containers (NodeSubnet).
//
// Everything is on net/netip. api.go is the contract the control plane
// uses: the Allocator interface and its sentinel errors, which control maps
// to HTTP status codes in one table.
//
// # Implementations
//
// RedisAllocator keeps all state in Redis so any number of control-service
// replicas can allocate at once. MemoryAllocator has the same semantics in
// process memory with an injected clock; it is the model the Lua scripts
// were written from, and both are tested against an independent, slow
// reference model with random operation sequences and fuzzing.
//
// # Pools and order of reuse
//
// Every pool is a range of indexes: the offset of an address from its
// pool's network address (service pools: IPv4 1 … size-2, IPv6 1 …
// V6IndexCap-1), or the number of a worker block (subnets: 0 …
// WorkerCount-1; block i is the i-th /26 and the i-th /120). An allocation
// for an owner yields, in this order: the index it already holds; a
// requested custom index if free and not quarantined; the index the owner
// itself released last, if still free (quarantine does not apply to the
// owner that released it: a node re-registering keeps its subnets); the
// lowest never-used index; the least recently released index whose
// quarantine has passed. Otherwise ErrExhausted.
//
// An IPv4 and an IPv6 address are allocated together as a Pair, atomically
// for a whole batch of requests; the IPv6 one comes from the request's
// Kind. An owner holds at most one pair.
//
// # Redis key layout
//
// With prefix P, the keys are
//
//	P{subnets}:pool          hash: the subnet pool's state (below)
//	P{subnets}:released      zset: released subnet indexes
//	P{svcpool}:owners        hash: owner → kind of the pair it holds
//	P{svcpool}:v4            hash: the shared IPv4 pool
//	P{svcpool}:v4:released   zset
//	P{svcpool}:v6.<k>        hash: kind k's IPv6 pool, k = 0 … 15
//	P{svcpool}:v6.<k>:released
//
// A pool hash holds the fields "next" (the lowest index never handed out,
// as a hint), "seq" (release sequence number), "i:<index>" → owner,
// "o:<owner>" → index, "r:<index>" → "<release ms> <owner>" for released
// indexes, and "l:<owner>" → the index the owner released last while that
// index is still free. The released zset scores each released index by
// its sequence number, so its first member is the least recently released.
// Memory stays bounded: entries of a released index are deleted when the
// index is handed out again.
//
// # Why it is atomic
//
// Each operation that reads and writes (AllocSubnet, ReleaseSubnet, Alloc
// batch, Release batch, Peek) is a single Lua script; Redis runs a script
// to completion before serving any other command, so no replica can see or
// change a pool half way through an operation. Lookups (LookupSubnet,
// Owner) are a single HGET. Every script's keys carry the same hash tag
// ({subnets} or {svcpool}), so under Redis Cluster they sit in one slot on
// one master and the script still runs there as a unit. The IPv4 pool and
// all IPv6 kinds share the {svcpool} tag because one Alloc batch spans them.
//
// Redis does not undo a script's writes when it fails half way, so the
// scripts never raise Lua errors for domain failures: they return a reply
// {code, …} that the Go side maps to ErrExhausted, ErrConflict or
// ErrNotFound, and an Alloc batch that fails at request n first undoes the
// writes of requests 1 … n-1 from a log of previous values. Quarantine uses
// the Redis server's clock (TIME), so all replicas agree on it; under
// effect replication (the default since Redis 5, the only mode since 7) the
// non-deterministic TIME is allowed before writes.
//
// A connectivity failure is ErrUnavailable. When it happens after the
// script was sent (a read timeout), Redis may still have run it; because
// allocation is idempotent per owner and release ignores owners holding
// nothing, retrying the same operation is safe and returns the same result.
package ipam
