//go:build !linux

// Command netbench is Oakwire's performance suite; it needs Linux (network
// namespaces, AF_XDP), see main.go.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "netbench: needs Linux (network namespaces)")
	os.Exit(1)
}
