// Package ethtool issues the few legacy SIOCETHTOOL commands Oakwire needs:
// offload switches (ETHTOOL_S/GTXCSUM, TSO, GSO) on a container's veth and
// the channel counts of an uplink (ETHTOOL_GCHANNELS), which tell how many
// RX queues are active — not how many the device allocated (a plain veth on
// a 2-CPU machine allocates 2 and activates 1; a NIC after `ethtool -L`
// likewise), and an AF_XDP socket binds only to an active queue.
//
// Every call acts in the network namespace of the calling thread: it opens
// a fresh AF_INET socket per call, so callers in another namespace
// (netns.Set on a locked thread) get that namespace's devices.
package ethtool
