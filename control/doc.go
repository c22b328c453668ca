// Package control is Oakwire's control plane: the root service manager
// (global pools, services, instances, clusters, interests) and the cluster
// service manager (node registration, the node-facing API, per-node change
// streams and the watch), both as fasthttp handlers over Redis.
//
// Every piece of state lives in Redis under a configurable key prefix, so
// any number of replicas of a role serve as one and a restart loses
// nothing. Multi-key changes are single Lua scripts; the root's keys share
// the hash tag {r} and a cluster's keys the tag {c:<cluster id>}, so every
// script touches one slot and works unchanged on Redis Cluster. Addresses
// and subnets come from an ipam.Allocator, whose keys sit in another slot:
// a change of both (deploying or deleting a service or an instance) is
// two-phase with its intent recorded first, so a failure between the
// phases is finished by the retry, the next call or a sweep (pending.go).
//
// Across clusters, root keeps every cluster's node tunnel endpoints and
// hands each cluster those of the clusters it shares a service with, as
// versioned deltas over the same notifier as job updates; the cluster
// passes them to its nodes through their watch (peerscripts.go,
// rootpeers.go, clusterpeers.go; docs/design.md, "Peers across clusters").
//
// Errors are sentinel errors mapped to HTTP status codes in one table
// (errors.go); answers are {"error": ..., "code": ...}. docs/api.md lists
// every endpoint.
package control
