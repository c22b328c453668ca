//go:build !linux

package loadtool

import (
	"errors"
	"fmt"
	"io"
)

// errNeedsLinux: a raw-socket tool elsewhere (an errors.ErrUnsupported).
var errNeedsLinux = fmt.Errorf("loadtool: needs Linux: %w", errors.ErrUnsupported)

// The raw-socket tools (udpflood, udpsink, the Bench suite's udpecho, rr)
// and PinCPU need Linux.

func runFlood([]string, io.Writer, io.Writer) error { return errNeedsLinux }
func runSink([]string, io.Writer, io.Writer) error  { return errNeedsLinux }
func runEcho([]string, io.Writer) error             { return errNeedsLinux }
func runRR([]string, io.Writer, io.Writer) error    { return errNeedsLinux }

// PinCPU needs Linux; cpu < 0 (no pinning) is fine anywhere.
func PinCPU(cpu int) error {
	if cpu < 0 {
		return nil
	}
	return fmt.Errorf("pin cpu %d: %w", cpu, errNeedsLinux)
}
