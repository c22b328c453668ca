// Command owload is the small workload program the emulated deployment
// (internal/deploy) runs inside container namespaces:
//
//	owload udpecho --listen :7000 --tag NAME [--max-seconds 600]
//	owload tcpecho --listen :7001 --tag NAME [--max-seconds 600]
//	owload udpask  --addr IP:PORT [--flows 1] [--per-flow 1] [--timeout 1s]
//	owload tcpask  --addr IP:PORT [--flows 1] [--per-flow 1] [--timeout 1s]
//	owload udpsink --listen :7002 [--seconds 5] [--idle 1s]
//	owload udpflood --addr IP:PORT [--seconds 2] [--size 64] [--max-packets 10000000]
//
// Servers answer every request with one JSON line naming themselves (tag),
// the peer address they saw and the request's id, print "listening ADDR"
// once bound and exit after --max-seconds. Clients open a new socket (a new
// flow) per flow, send --per-flow requests on it one at a time and print a
// JSON report (Ask): which server answered each request, the source address
// it saw, where the reply came from and the round-trip time. Every loop is
// bounded in count and time.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/oakwire/oakwire/internal/version"
)

// Reply is a server's answer to one request.
type Reply struct {
	Tag  string `json:"tag"`
	Peer string `json:"peer"`
	ID   string `json:"id"`
}

// Answer is one request of an Ask, as the client saw it.
type Answer struct {
	Flow  int    `json:"flow"`
	Seq   int    `json:"seq"`
	OK    bool   `json:"ok"`
	Tag   string `json:"tag,omitempty"`
	Peer  string `json:"peer,omitempty"` // source address the server saw
	From  string `json:"from,omitempty"` // where the reply came from
	Local string `json:"local,omitempty"`
	RTTus int64  `json:"rtt_us,omitempty"`
	Err   string `json:"err,omitempty"`
}

// Ask is the report of udpask/tcpask.
type Ask struct {
	Proto    string   `json:"proto"`
	Addr     string   `json:"addr"`
	Sent     int      `json:"sent"`
	Answered int      `json:"answered"`
	P50us    int64    `json:"p50_us"`
	P99us    int64    `json:"p99_us"`
	Answers  []Answer `json:"answers"`
}

// Sink is the report of udpsink; Flood of udpflood.
type Sink struct {
	Received int     `json:"received"`
	Bytes    int64   `json:"bytes"`
	Seconds  float64 `json:"seconds"` // first to last packet
}

// Flood is the report of udpflood.
type Flood struct {
	Sent    int     `json:"sent"`
	Errors  int     `json:"errors"`
	Seconds float64 `json:"seconds"`
}

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Print(version.Get().Text("owload"))
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: owload udpecho|tcpecho|udpask|tcpask|udpsink|udpflood [flags]")
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "udpecho":
		err = udpEcho(args)
	case "tcpecho":
		err = tcpEcho(args)
	case "udpask", "tcpask":
		err = ask(strings.TrimSuffix(cmd, "ask"), args)
	case "udpsink":
		err = udpSink(args)
	case "udpflood":
		err = udpFlood(args)
	default:
		err = fmt.Errorf("unknown subcommand %q", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "owload:", err)
		os.Exit(1)
	}
}

func serverFlags(name string, args []string) (listen, tag string, maxRun time.Duration, err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&listen, "listen", ":7000", "listen address (dual-stack when the host is empty)")
	fs.StringVar(&tag, "tag", "", "name put into every reply (default: hostname)")
	secs := fs.Int("max-seconds", 600, "exit after this many seconds")
	if err = fs.Parse(args); err != nil {
		return
	}
	if tag == "" {
		tag, _ = os.Hostname()
	}
	if *secs <= 0 || *secs > 3600 {
		err = errors.New("--max-seconds: want 1..3600")
	}
	return listen, tag, time.Duration(*secs) * time.Second, err
}

func udpEcho(args []string) error {
	listen, tag, maxRun, err := serverFlags("udpecho", args)
	if err != nil {
		return err
	}
	c, err := net.ListenPacket("udp", listen)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("listening %s\n", c.LocalAddr())
	_ = c.SetReadDeadline(time.Now().Add(maxRun))
	buf := make([]byte, 65536)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		out, _ := json.Marshal(Reply{Tag: tag, Peer: unmapAddr(peer.String()), ID: string(buf[:n])})
		_, _ = c.WriteTo(out, peer)
	}
}

func tcpEcho(args []string) error {
	listen, tag, maxRun, err := serverFlags("tcpecho", args)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", l.Addr())
	time.AfterFunc(maxRun, func() { l.Close() })
	for {
		c, err := l.Accept()
		if err != nil {
			return nil // closed by the timer
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(maxRun))
			peer := unmapAddr(c.RemoteAddr().String())
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				out, _ := json.Marshal(Reply{Tag: tag, Peer: peer, ID: sc.Text()})
				if _, err := c.Write(append(out, '\n')); err != nil {
					return
				}
			}
		}()
	}
}

// unmapAddr turns "[::ffff:10.0.0.1]:80" into "10.0.0.1:80".
func unmapAddr(s string) string {
	if ap, err := netParseAddrPort(s); err == nil {
		return ap
	}
	return s
}

func netParseAddrPort(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return "", errors.New("not an IP")
	}
	if v4 := ip.To4(); v4 != nil && strings.Contains(host, ":") {
		host = v4.String()
	}
	return net.JoinHostPort(host, port), nil
}

func ask(proto string, args []string) error {
	fs := flag.NewFlagSet(proto+"ask", flag.ContinueOnError)
	addr := fs.String("addr", "", "server IP:PORT")
	flows := fs.Int("flows", 1, "flows (a new socket each)")
	perFlow := fs.Int("per-flow", 1, "requests per flow, one at a time")
	timeout := fs.Duration("timeout", time.Second, "wait for one reply (and the connect)")
	maxFail := fs.Int("max-fail", 0, "after this many failed requests in a row, report the rest as failed without sending (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" {
		return errors.New("--addr: missing")
	}
	if *flows < 1 || *flows > 10000 || *perFlow < 1 || *perFlow > 100000 || *flows**perFlow > 200000 {
		return errors.New("--flows × --per-flow: want 1..10000 × 1..100000, at most 200000 requests")
	}
	if *timeout <= 0 || *timeout > 30*time.Second {
		return errors.New("--timeout: want (0, 30s]")
	}
	rep := Ask{Proto: proto, Addr: *addr}
	var rtts []int64
	failRun := 0
	for f := range *flows {
		var answers []Answer
		if *maxFail > 0 && failRun >= *maxFail {
			for s := range *perFlow {
				answers = append(answers, Answer{Flow: f, Seq: s, Err: fmt.Sprintf("not sent: %d failures in a row", failRun)})
			}
		} else {
			answers = askFlow(proto, *addr, f, *perFlow, *timeout, *maxFail)
		}
		for _, a := range answers {
			rep.Sent++
			if a.OK {
				rep.Answered++
				rtts = append(rtts, a.RTTus)
				failRun = 0
			} else {
				failRun++
			}
		}
		rep.Answers = append(rep.Answers, answers...)
	}
	if len(rtts) > 0 {
		slices.Sort(rtts)
		rep.P50us = rtts[len(rtts)*50/100]
		rep.P99us = rtts[min(len(rtts)-1, len(rtts)*99/100)]
	}
	return json.NewEncoder(os.Stdout).Encode(rep)
}

// askFlow sends n requests, one at a time, on one new socket (one flow). A
// UDP request without a reply in time is reported and the flow goes on; any
// other failure ends the flow and reports the remaining requests as failed.
// With maxFail > 0, maxFail UDP timeouts in a row end the flow too.
func askFlow(proto, addr string, flow, n int, timeout time.Duration, maxFail int) []Answer {
	out := make([]Answer, 0, n)
	fail := func(from int, err error) []Answer {
		for s := from; s < n; s++ {
			out = append(out, Answer{Flow: flow, Seq: s, Err: err.Error()})
		}
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	c, err := (&net.Dialer{}).DialContext(ctx, proto, addr)
	cancel()
	if err != nil {
		return fail(0, err)
	}
	defer c.Close()
	var rd *bufio.Reader
	if proto == "tcp" {
		rd = bufio.NewReader(c)
	}
	buf := make([]byte, 65536)
	timeouts := 0
	for s := range n {
		id := fmt.Sprintf("f%d-s%d", flow, s)
		start := time.Now()
		_ = c.SetDeadline(start.Add(timeout))
		msg := []byte(id)
		if proto == "tcp" {
			msg = append(msg, '\n')
		}
		if _, err := c.Write(msg); err != nil {
			return fail(s, err)
		}
		var line []byte
		for {
			if proto == "tcp" {
				line, err = rd.ReadBytes('\n')
			} else {
				var k int
				k, err = c.Read(buf)
				line = buf[:k]
			}
			if err != nil {
				break
			}
			var r Reply
			if json.Unmarshal(line, &r) == nil && r.ID == id {
				out = append(out, Answer{Flow: flow, Seq: s, OK: true, Tag: r.Tag, Peer: r.Peer,
					From: unmapAddr(c.RemoteAddr().String()), Local: unmapAddr(c.LocalAddr().String()),
					RTTus: time.Since(start).Microseconds()})
				break
			}
			// A late reply to an earlier request: read on (UDP only).
		}
		if err != nil {
			if proto == "tcp" || errors.Is(err, io.EOF) {
				return fail(s, err)
			}
			out = append(out, Answer{Flow: flow, Seq: s, Err: err.Error()})
			if timeouts++; maxFail > 0 && timeouts >= maxFail {
				return fail(s+1, fmt.Errorf("not sent: %d timeouts in a row", timeouts))
			}
		} else {
			timeouts = 0
		}
	}
	return out
}

func udpSink(args []string) error {
	fs := flag.NewFlagSet("udpsink", flag.ContinueOnError)
	listen := fs.String("listen", ":7002", "listen address")
	secs := fs.Float64("seconds", 5, "exit after this many seconds")
	idle := fs.Duration("idle", time.Second, "exit this long after the last packet")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *secs <= 0 || *secs > 600 {
		return errors.New("--seconds: want (0, 600]")
	}
	c, err := net.ListenPacket("udp", *listen)
	if err != nil {
		return err
	}
	defer c.Close()
	if uc, ok := c.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(8 << 20)
	}
	fmt.Printf("listening %s\n", c.LocalAddr())
	end := time.Now().Add(time.Duration(*secs * float64(time.Second)))
	var s Sink
	var first, last time.Time
	buf := make([]byte, 65536)
	for {
		dl := end
		if !last.IsZero() && last.Add(*idle).Before(dl) {
			dl = last.Add(*idle)
		}
		_ = c.SetReadDeadline(dl)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			break
		}
		last = time.Now()
		if first.IsZero() {
			first = last
		}
		s.Received++
		s.Bytes += int64(n)
	}
	if !first.IsZero() {
		s.Seconds = last.Sub(first).Seconds()
	}
	return json.NewEncoder(os.Stdout).Encode(s)
}

func udpFlood(args []string) error {
	fs := flag.NewFlagSet("udpflood", flag.ContinueOnError)
	addr := fs.String("addr", "", "destination IP:PORT")
	secs := fs.Float64("seconds", 2, "send for this long")
	size := fs.Int("size", 64, "UDP payload bytes")
	maxPk := fs.Int("max-packets", 10_000_000, "stop after this many packets")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" {
		return errors.New("--addr: missing")
	}
	if *secs <= 0 || *secs > 60 || *size < 1 || *size > 1400 || *maxPk < 1 {
		return errors.New("--seconds (0, 60], --size 1..1400, --max-packets ≥ 1")
	}
	c, err := net.Dial("udp", *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	msg := make([]byte, *size)
	start := time.Now()
	end := start.Add(time.Duration(*secs * float64(time.Second)))
	var f Flood
	for f.Sent < *maxPk {
		if (f.Sent+f.Errors)%256 == 0 && time.Now().After(end) {
			break
		}
		if _, err := c.Write(msg); err != nil {
			f.Errors++ // e.g. ECONNREFUSED from an ICMP error, ENOBUFS
			if f.Errors > *maxPk {
				break
			}
			continue
		}
		f.Sent++
	}
	f.Seconds = time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(f)
}
