//go:build !linux

package netmanager

import "context"

// watchUplink is Linux-only (netlink address events).
func (d *Daemon) watchUplink(context.Context) {}
