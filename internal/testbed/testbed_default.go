//go:build !linux

package testbed

// Bed and Node exist only on Linux (network namespaces); these empty
// types let packages that name them in their options compile elsewhere.
type (
	Bed  struct{}
	Node struct{}
)
