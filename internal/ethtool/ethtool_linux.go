//go:build linux

package ethtool

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// value is struct ethtool_value (linux/ethtool.h).
type value struct {
	cmd  uint32
	data uint32
}

// channels is struct ethtool_channels (linux/ethtool.h).
type channels struct {
	cmd           uint32
	maxRx         uint32
	maxTx         uint32
	maxOther      uint32
	maxCombined   uint32
	rxCount       uint32
	txCount       uint32
	otherCount    uint32
	combinedCount uint32
}

// ifreq is struct ifreq with ifr_data.
type ifreq struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte
}

func ioctl(ifname string, data unsafe.Pointer) error {
	if len(ifname) >= unix.IFNAMSIZ {
		return fmt.Errorf("ethtool %s: name too long", ifname)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	var ifr ifreq
	copy(ifr.name[:], ifname)
	ifr.data = data
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	if errno != 0 {
		return errno
	}
	return nil
}

// Set issues a legacy ETHTOOL_S* value command (unix.ETHTOOL_STXCSUM,
// ETHTOOL_STSO, ETHTOOL_SGSO, ...) on ifname.
func Set(ifname string, cmd, val uint32) error {
	v := &value{cmd: cmd, data: val}
	if err := ioctl(ifname, unsafe.Pointer(v)); err != nil {
		return fmt.Errorf("ethtool %s cmd %#x: %w", ifname, cmd, err)
	}
	return nil
}

// Get issues a legacy ETHTOOL_G* value command on ifname.
func Get(ifname string, cmd uint32) (uint32, error) {
	v := &value{cmd: cmd}
	if err := ioctl(ifname, unsafe.Pointer(v)); err != nil {
		return 0, fmt.Errorf("ethtool %s cmd %#x: %w", ifname, cmd, err)
	}
	return v.data, nil
}

// ActiveRxQueues is the number of RX queues ifname has active: its RX-only
// plus combined channels (ETHTOOL_GCHANNELS), which is the kernel's
// real_num_rx_queues for every driver that reports channels. ok is false
// when the driver does not report channels (EOPNOTSUPP); the caller then
// falls back to another source.
func ActiveRxQueues(ifname string) (n int, ok bool, err error) {
	c := &channels{cmd: unix.ETHTOOL_GCHANNELS}
	if err := ioctl(ifname, unsafe.Pointer(c)); err != nil {
		if err == unix.EOPNOTSUPP {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("ethtool %s channels: %w", ifname, err)
	}
	return int(c.rxCount + c.combinedCount), true, nil
}

// SetRxTxQueues sets the RX and TX channel counts of ifname (ethtool -L
// rx N tx N), for drivers with separate RX and TX channels such as veth.
func SetRxTxQueues(ifname string, rx, tx int) error {
	c := &channels{cmd: unix.ETHTOOL_GCHANNELS}
	if err := ioctl(ifname, unsafe.Pointer(c)); err != nil {
		return fmt.Errorf("ethtool %s channels: %w", ifname, err)
	}
	c.cmd = unix.ETHTOOL_SCHANNELS
	c.rxCount, c.txCount = uint32(rx), uint32(tx)
	if err := ioctl(ifname, unsafe.Pointer(c)); err != nil {
		return fmt.Errorf("ethtool %s set channels rx %d tx %d: %w", ifname, rx, tx, err)
	}
	return nil
}
