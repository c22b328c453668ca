//go:build !linux

package ethtool

import (
	"errors"
	"fmt"
)

var errNotSupported = fmt.Errorf("ethtool: %w", errors.ErrUnsupported)

// Set is not supported here.
func Set(string, uint32, uint32) error { return errNotSupported }

// Get is not supported here.
func Get(string, uint32) (uint32, error) { return 0, errNotSupported }

// ActiveRxQueues is not supported here.
func ActiveRxQueues(string) (int, bool, error) { return 0, false, errNotSupported }

// SetRxTxQueues is not supported here.
func SetRxTxQueues(string, int, int) error { return errNotSupported }
