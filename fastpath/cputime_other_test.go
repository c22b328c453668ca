//go:build !linux

package fastpath

func threadCPU() int64 { return 0 }
