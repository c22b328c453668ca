// Package deploy runs an emulated Oakwire deployment on one machine, for
// the end-to-end tests (e2e/) and the demo (RunDemo, `make demo`).
//
// Up builds the binaries (servicemanager, netmanager, owload) unless given,
// makes a testbed (internal/testbed) with N worker nodes ("a", "b", "c",
// ... = 198.18.0.1, .2, .3, ...) and a control node "ctl" (the next
// address) on a bridged underlay, and starts real processes, each in its
// node's namespace: a private redis-server on the control node's loopback,
// `servicemanager root` and one `servicemanager cluster` per cluster (each
// with its own Redis key prefix; Options.ClusterNodes splits the nodes
// among clusters) on the control node's underlay address, and one
// `netmanager` per worker node registered with its cluster. Every process
// gets the same random OAKWIRE_TOKEN.
//
// The orchestrator side (DeployService, DeployInstance, UndeployInstance,
// MoveInstance, AddClient) goes through the same APIs an orchestrator uses:
// root's HTTP API (Oakestra's paths) and each node's NetManager unix-socket
// API. A container is an empty named network namespace that the harness
// creates; the NetManager attaches it (veth, namespace IPs, routes).
// Workloads inside containers are owload processes (cmd/owload): UDP/TCP
// echo servers that name themselves, and clients that report which server
// answered each request.
//
// Safety (DESIGN.md "Testbed"): every address lives in namespaces the
// deployment made; the underlay is 198.18.0.0/24 with no route out; every
// traffic run is bounded in count and time; Close kills every process it
// started by PID (children also get SIGKILL if the parent dies) and deletes
// every namespace it made by exact name. CloseOnSignal does the same on
// Ctrl-C. Linux only, as root.
package deploy
