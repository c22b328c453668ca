//go:build !linux

package netmanager

import (
	"github.com/vishvananda/netns"

	"github.com/oakwire/oakwire/ipam"
)

func setupNode(*Config, ipam.SubnetPair, ipam.Pair, map[string]string) error { return ErrNotSupported }
func teardownNode(map[string]string) error                                   { return ErrNotSupported }
func applyNft(string) error                                                  { return ErrNotSupported }
func openNetns(int, string, uint64) (netns.NsHandle, error)                  { return -1, ErrNotSupported }
func attach(*Container, netns.NsHandle, ipam.Pair, bool) error               { return ErrNotSupported }
func detach(*Container) error                                                { return ErrNotSupported }
func readopt(*Container) (bool, error)                                       { return false, ErrNotSupported }
func socketAnswers(string) bool                                              { return false }

const gatewayDev = "ow0"
