//go:build linux

package loadtool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Payload markers (first byte): warm-up packets are not counted by the sink.
const (
	markWarmup = 'W'
	markData   = 'D'
)

// PinCPU pins every thread of the process to one CPU (cpu < 0: no change).
// The calling goroutine is locked to its thread first; threads the runtime
// makes later inherit the affinity of the thread that makes them.
func PinCPU(cpu int) error {
	if cpu < 0 {
		return nil
	}
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("pin cpu %d: %w", cpu, err)
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pin cpu %d: tid %d: %w", cpu, tid, err)
		}
	}
	return nil
}

// udpSocket opens a blocking IPv4/IPv6 UDP socket for ap's family.
func udpSocket(ap netip.AddrPort) (int, unix.Sockaddr, error) {
	if ap.Addr().Is4() || ap.Addr().Is4In6() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	return fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, err
}

// mmsghdr is struct mmsghdr of sendmmsg(2)/recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// The load tools make their per-packet system calls with RawSyscall, as a
// C program would. Through Syscall, a call that blocks longer than 20 µs
// lets sysmon hand the tool's only P to a fresh thread, and the return has
// to get it back: bpftrace on the request/response pair showed ~50 µs
// between read returning and the next send, on every turn and for every
// data plane — the tool measuring Go's scheduler, not the network. The
// tools run nothing else (GOMAXPROCS=1, one goroutine locked to its
// thread), so holding the P across a blocking call costs nothing; every
// blocking socket has SO_RCVTIMEO, so a signal or a silent peer ends the
// call with EINTR or EAGAIN.

func mmsg(fd int, trap uintptr, hs []mmsghdr, flags int) (int, error) {
	n, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), uintptr(flags), 0, 0)
	if e != 0 {
		return int(n), e
	}
	return int(n), nil
}

// rawSendto is sendto(2) of p to the raw socket address to (nil: the
// connected peer).
func rawSendto(fd int, p []byte, to *unix.RawSockaddrAny, tolen uint32) error {
	var pp unsafe.Pointer
	if len(p) > 0 {
		pp = unsafe.Pointer(&p[0])
	}
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(pp), uintptr(len(p)), 0, uintptr(unsafe.Pointer(to)), uintptr(tolen))
	if e != 0 {
		return e
	}
	return nil
}

// rawRecvfrom is recvfrom(2) into p; from (may be nil) gets the sender and
// *fromlen its length.
func rawRecvfrom(fd int, p []byte, from *unix.RawSockaddrAny, fromlen *uint32) (int, error) {
	if from != nil {
		*fromlen = unix.SizeofSockaddrAny
	}
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), 0, uintptr(unsafe.Pointer(from)), uintptr(unsafe.Pointer(fromlen)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func runFlood(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("udpflood", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dst := fs.String("dst", "", "destination IP:PORT")
	fs.StringVar(dst, "addr", "", "same as --dst")
	size := fs.Int("size", 64, "UDP payload bytes")
	count := fs.Uint64("count", 2_000_000, "packets to send at most (bound)")
	fs.Uint64Var(count, "max-packets", 2_000_000, "same as --count")
	dur := fs.Duration("duration", 5*time.Second, "seconds to send at most (bound)")
	fs.Func("seconds", "same as --duration, in seconds", secondsFlag(dur))
	batch := fs.Int("batch", 64, "packets per sendmmsg")
	rate := fs.Float64("rate", 0, "packets per second to pace at (0: as fast as possible)")
	warm := fs.Int("warmup", 16, "warm-up packets before the clock (not counted by udpsink)")
	pause := fs.Duration("pause", 300*time.Millisecond, "pause after the warm-up")
	cpu := fs.Int("cpu", -1, "pin to this CPU (-1: no pinning)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*dst)
	if err != nil {
		return fmt.Errorf("--dst: %w", err)
	}
	if *size < 1 || *size > 65000 || *batch < 1 || *batch > 1024 || *dur <= 0 || *dur > 10*time.Minute || *rate < 0 || *rate > 1e8 {
		return errors.New("--size, --batch, --rate or --duration out of range")
	}
	var gap time.Duration // paced: the time one packet is worth
	if *rate > 0 {
		gap = time.Duration(float64(time.Second) / *rate)
		// Sleep precisely: the default 50 µs timer slack would turn
		// every pause into a burst.
		_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	}
	if err := PinCPU(*cpu); err != nil {
		return err
	}
	fd, sa, err := udpSocket(ap)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	if err := unix.Connect(fd, sa); err != nil {
		return fmt.Errorf("connect %v: %w", ap, err)
	}
	buf := make([]byte, *size)
	buf[0] = markWarmup
	for range *warm {
		_ = unix.Send(fd, buf, 0)
		time.Sleep(time.Millisecond)
	}
	time.Sleep(*pause)
	buf[0] = markData
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	hs := make([]mmsghdr, *batch)
	for i := range hs {
		hs[i].hdr.Iov = &iov
		hs[i].hdr.SetIovlen(1)
	}
	var res FloodResult
	res.Warmup = *warm
	t0 := time.Now()
	deadline := t0.Add(*dur)
	for res.Sent < *count {
		n := min(uint64(len(hs)), *count-res.Sent)
		if gap > 0 {
			// Paced: packet i leaves no earlier than t0 + i·gap, a
			// batch at a time.
			if ahead := time.Until(t0.Add(time.Duration(res.Sent) * gap)); ahead > 0 {
				ts := unix.NsecToTimespec(ahead.Nanoseconds())
				unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
			}
		}
		k, err := mmsg(fd, unix.SYS_SENDMMSG, hs[:n], 0)
		if k > 0 {
			res.Sent += uint64(k)
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ECONNREFUSED) {
				res.Errors++
			} else {
				return fmt.Errorf("sendmmsg: %w", err)
			}
		}
		if !time.Now().Before(deadline) {
			break
		}
	}
	res.Seconds = time.Since(t0).Seconds()
	return json.NewEncoder(stdout).Encode(res)
}

// udpRcvbufErrors reads Udp RcvbufErrors + InErrors of the calling
// namespace from /proc/net/snmp (and Udp6 from /proc/net/snmp6).
func udpRcvbufErrors() uint64 {
	var total uint64
	if b, err := os.ReadFile("/proc/net/snmp"); err == nil {
		var hdr []string
		for line := range strings.SplitSeq(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Udp:" {
				continue
			}
			if hdr == nil {
				hdr = f
				continue
			}
			for i := 1; i < len(f) && i < len(hdr); i++ {
				if hdr[i] == "RcvbufErrors" {
					v, _ := strconv.ParseUint(f[i], 10, 64)
					total += v
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/net/snmp6"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == "Udp6RcvbufErrors" {
				v, _ := strconv.ParseUint(f[1], 10, 64)
				total += v
			}
		}
	}
	return total
}

// bindSocket opens a UDP socket bound to listen (IP:PORT, or :PORT for
// both families), with SO_RCVTIMEO timeout.
func bindSocket(listen string, rcvbuf int, timeout time.Duration) (int, error) {
	dual := strings.HasPrefix(listen, ":")
	if dual {
		listen = "[::]" + listen
	}
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return -1, fmt.Errorf("--listen: %w", err)
	}
	fd, sa, err := udpSocket(ap)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if dual {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
	}
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
		}
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %v: %w", ap, err)
	}
	return fd, nil
}

func runSink(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("udpsink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "0.0.0.0:9000", "IP:PORT to receive on (:PORT: dual-stack)")
	dur := fs.Duration("duration", 10*time.Second, "seconds to run at most (bound)")
	fs.Func("seconds", "same as --duration, in seconds", secondsFlag(dur))
	idle := fs.Duration("idle", time.Second, "exit this long after the last data packet")
	rcvbuf := fs.Int("rcvbuf", 32<<20, "SO_RCVBUF bytes (SO_RCVBUFFORCE as root)")
	batch := fs.Int("batch", 64, "packets per recvmmsg")
	cpu := fs.Int("cpu", -1, "pin to this CPU (-1: no pinning)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *batch < 1 || *batch > 1024 || *dur <= 0 || *dur > 10*time.Minute {
		return errors.New("--batch or --duration out of range")
	}
	if err := PinCPU(*cpu); err != nil {
		return err
	}
	fd, err := bindSocket(*listen, *rcvbuf, 50*time.Millisecond)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	bufs := make([]byte, *batch*2048)
	iovs := make([]unix.Iovec, *batch)
	hs := make([]mmsghdr, *batch)
	for i := range hs {
		iovs[i].Base = &bufs[i*2048]
		iovs[i].SetLen(2048)
		hs[i].hdr.Iov = &iovs[i]
		hs[i].hdr.SetIovlen(1)
	}
	errs0 := udpRcvbufErrors()
	ready(stderr, boundAddr(fd))
	var res SinkResult
	var first, last time.Time
	deadline := time.Now().Add(*dur)
	for {
		now := time.Now()
		if !now.Before(deadline) || (!last.IsZero() && now.Sub(last) > *idle) {
			break
		}
		n, err := mmsg(fd, unix.SYS_RECVMMSG, hs, unix.MSG_WAITFORONE)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("recvmmsg: %w", err)
		}
		t := time.Now()
		var data uint64
		for i := range n {
			if hs[i].len > 0 && bufs[i*2048] == markWarmup {
				res.Warmup++
			} else {
				data++
			}
		}
		if data > 0 {
			if first.IsZero() {
				first = t
			}
			last = t
			res.Received += data
		}
	}
	if !first.IsZero() {
		res.FirstUnixNs, res.LastUnixNs = first.UnixNano(), last.UnixNano()
		res.Seconds = last.Sub(first).Seconds()
	}
	res.RcvbufErrors = udpRcvbufErrors() - errs0
	return json.NewEncoder(stdout).Encode(res)
}

func runEcho(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("udpecho", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "0.0.0.0:9001", "IP:PORT to answer on")
	dur := fs.Duration("duration", 60*time.Second, "seconds to run at most (bound)")
	maxPkts := fs.Uint64("count", 10_000_000, "packets to answer at most (bound)")
	cpu := fs.Int("cpu", -1, "pin to this CPU (-1: no pinning)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dur <= 0 || *dur > time.Hour {
		return errors.New("--duration out of range")
	}
	if err := PinCPU(*cpu); err != nil {
		return err
	}
	fd, err := bindSocket(*listen, 4<<20, 100*time.Millisecond)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ready(stderr, boundAddr(fd))
	buf := make([]byte, 65536)
	var from unix.RawSockaddrAny
	var fromlen uint32
	deadline := time.Now().Add(*dur)
	for n := uint64(0); n < *maxPkts && time.Now().Before(deadline); {
		k, err := rawRecvfrom(fd, buf, &from, &fromlen)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("recvfrom: %w", err)
		}
		n++
		_ = rawSendto(fd, buf[:k], &from, fromlen)
	}
	return nil
}

func runRR(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rr", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dst := fs.String("dst", "", "echo server IP:PORT")
	count := fs.Int("count", 20000, "requests to time (bound)")
	warm := fs.Int("warmup", 200, "untimed requests first")
	size := fs.Int("size", 64, "UDP payload bytes (≥ 8)")
	timeout := fs.Duration("timeout", 200*time.Millisecond, "a request without answer after this is lost")
	dur := fs.Duration("duration", 30*time.Second, "seconds to run at most (bound)")
	cpu := fs.Int("cpu", -1, "pin to this CPU (-1: no pinning)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*dst)
	if err != nil {
		return fmt.Errorf("--dst: %w", err)
	}
	if *size < 8 || *size > 65000 || *count < 1 || *dur <= 0 || *dur > 10*time.Minute {
		return errors.New("--size, --count or --duration out of range")
	}
	if err := PinCPU(*cpu); err != nil {
		return err
	}
	fd, sa, err := udpSocket(ap)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		return fmt.Errorf("connect %v: %w", ap, err)
	}
	out := make([]byte, *size)
	in := make([]byte, 65536)
	rtts := make([]float64, 0, *count)
	lost := 0
	deadline := time.Now().Add(*dur)
	for seq := uint64(1); seq <= uint64(*warm+*count) && time.Now().Before(deadline); seq++ {
		binary.LittleEndian.PutUint64(out, seq)
		t0 := time.Now()
		if err := rawSendto(fd, out, nil, 0); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
			return fmt.Errorf("send: %w", err)
		}
		ok := false
		for time.Since(t0) < *timeout {
			k, err := rawRecvfrom(fd, in, nil, nil)
			if err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNREFUSED) {
					continue
				}
				break // EAGAIN: timed out
			}
			if k >= 8 && binary.LittleEndian.Uint64(in) == seq {
				ok = true
				break
			}
		}
		rtt := time.Since(t0)
		if seq <= uint64(*warm) {
			continue
		}
		if !ok {
			lost++
			continue
		}
		rtts = append(rtts, float64(rtt.Nanoseconds())/1e3)
	}
	res := RRResult{Count: len(rtts), Lost: lost}
	if len(rtts) > 0 {
		res.P50us = Percentile(rtts, 50)
		res.P99us = Percentile(rtts, 99)
		res.P999us = Percentile(rtts, 99.9)
		res.MinUs = Percentile(rtts, 0)
		res.MaxUs = Percentile(rtts, 100)
		var sum float64
		for _, r := range rtts {
			sum += r
		}
		res.MeanUs = sum / float64(len(rtts))
	}
	return json.NewEncoder(stdout).Encode(res)
}

// boundAddr is fd's local address as IP:PORT, for the ready line.
func boundAddr(fd int) string {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "?"
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return "?"
}

// secondsFlag sets *d from a number of seconds (owload's spelling of
// --duration).
func secondsFlag(d *time.Duration) func(string) error {
	return func(s string) error {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		*d = time.Duration(f * float64(time.Second))
		return nil
	}
}
