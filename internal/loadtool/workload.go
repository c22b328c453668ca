package loadtool

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
)

// The Workload suite's own tools, on the net package (any OS): tagged echo
// servers answer every request with one JSON Reply naming themselves
// (--tag), the peer address they saw and the request's id, and exit after
// --max-seconds; udpask/tcpask open a new socket (a new flow) per flow,
// send --per-flow requests on it one at a time and print an AskResult:
// which server answered each request, the source address it saw, where the
// reply came from and the round-trip time.

func serverFlags(name string, args []string, stderr io.Writer) (listen, tag string, maxRun time.Duration, err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
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

func tagEchoUDP(args []string, stderr io.Writer) error {
	listen, tag, maxRun, err := serverFlags("udpecho", args, stderr)
	if err != nil {
		return err
	}
	c, err := net.ListenPacket("udp", listen)
	if err != nil {
		return err
	}
	defer c.Close()
	ready(stderr, c.LocalAddr().String())
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

func tagEchoTCP(args []string, stderr io.Writer) error {
	listen, tag, maxRun, err := serverFlags("tcpecho", args, stderr)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	ready(stderr, l.Addr().String())
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
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return s
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return s
	}
	if v4 := ip.To4(); v4 != nil && strings.Contains(host, ":") {
		host = v4.String()
	}
	return net.JoinHostPort(host, port)
}

func ask(proto string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(proto+"ask", flag.ContinueOnError)
	fs.SetOutput(stderr)
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
	rep := AskResult{Proto: proto, Addr: *addr}
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
	return json.NewEncoder(stdout).Encode(rep)
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
