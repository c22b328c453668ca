// Package control is Oakwire's control plane: the root service manager
// (global pools, services, instances, clusters, interests) and the cluster
// service manager (node registration, the node-facing API, per-node change
// streams and the watch), both as fasthttp handlers over Redis.
//
// # Layers
//
// A handler is decode → validate → store → encode. decodeBody reads the
// request into a type of package api (the wire format, shared with the
// clients) and checks its required fields; the handler validates the rest,
// naming the field of any error; one store operation does the work; the
// answer is an api type. Handlers are grouped by resource: root's in
// rootclusters.go, rootservices.go, rootinstances.go, rootpools.go and
// rootpeers.go, a cluster's in clusterservices.go, clusternodes.go,
// clusterwatch.go and clusterpeers.go.
//
// The stores (rootStore: rootstore.go, servicestore.go, pending.go;
// clusterStore: clusterstore.go; both: peerstore.go) are one typed Go
// function per operation, usually one Lua script (rootscripts.go,
// pendingscripts.go, peerscripts.go, clusterscripts.go), and return named
// errors (errNoService, errNoNode, ...) instead of the scripts' reply
// codes. They know nothing of HTTP.
//
// # State
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
// # Errors
//
// Every error is of a class of package api, whose one table gives its HTTP
// status; errors.go gives the errors of ipam and Redis theirs. Answers are
// {"error": ..., "code": ...}. docs/api.md lists every endpoint.
package control
