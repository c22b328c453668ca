// Package api is the wire format of Oakwire's control plane (docs/api.md):
// the JSON types of the root, cluster and node-facing APIs, on net/netip
// fields; the rules for job names and ids; the default tunnel port; and
// the errors: machine codes, the error classes, and the one table between
// classes and HTTP status codes (Status, ErrorFor).
//
// It imports only the standard library. The server (package control), its
// Go client (control/nodeclient) and the node daemon (netmanager) share
// it, and none of them imports another for the wire format.
//
// The JSON of every type is Oakestra's where Oakestra defines it (field
// names, "" for an absent address, 0 for an absent port) and byte for byte
// what earlier versions sent (testdata/wire.golden): an invalid netip.Addr
// marshals as "" and "" unmarshals to it. Fields tagged omitzero are left
// out when unset, as omitempty left out the strings they were.
package api
