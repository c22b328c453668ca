package loadtool

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
)

// The tools' results, each printed as one JSON object on stdout. The JSON
// is the interface: scripts, internal/deploy and the perf suite's report
// (report.json) read it, so field names and types do not change.
type (
	// Reply is a tagged echo server's answer to one request.
	Reply struct {
		Tag  string `json:"tag"`
		Peer string `json:"peer"`
		ID   string `json:"id"`
	}

	// Answer is one request of an AskResult, as the client saw it.
	Answer struct {
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

	// AskResult is udpask's and tcpask's output.
	AskResult struct {
		Proto    string   `json:"proto"`
		Addr     string   `json:"addr"`
		Sent     int      `json:"sent"`
		Answered int      `json:"answered"`
		P50us    int64    `json:"p50_us"`
		P99us    int64    `json:"p99_us"`
		Answers  []Answer `json:"answers"`
	}

	// FloodResult is udpflood's output. Seconds spans the timed sending,
	// after the warm-up.
	FloodResult struct {
		Sent    uint64  `json:"sent"`
		Seconds float64 `json:"seconds"`
		Errors  uint64  `json:"errors"`
		Warmup  int     `json:"warmup"`
	}

	// SinkResult is udpsink's output. Seconds spans the first to the last
	// data packet received; warm-up packets are counted apart.
	SinkResult struct {
		Received     uint64  `json:"received"`
		Seconds      float64 `json:"seconds"`
		FirstUnixNs  int64   `json:"first_unix_ns"`
		LastUnixNs   int64   `json:"last_unix_ns"`
		Warmup       uint64  `json:"warmup"`
		RcvbufErrors uint64  `json:"rcvbuf_errors"`
	}

	// RRResult is rr's output; latencies in microseconds.
	RRResult struct {
		Count  int     `json:"count"`
		Lost   int     `json:"lost"`
		P50us  float64 `json:"p50_us"`
		P99us  float64 `json:"p99_us"`
		P999us float64 `json:"p999_us"`
		MinUs  float64 `json:"min_us"`
		MaxUs  float64 `json:"max_us"`
		MeanUs float64 `json:"mean_us"`
	}
)

// ByTag counts answered requests per server tag.
func (a *AskResult) ByTag() map[string]int {
	m := map[string]int{}
	for _, x := range a.Answers {
		if x.OK {
			m[x.Tag]++
		}
	}
	return m
}

// FlowsByTag counts flows per server tag; a flow answered by several
// servers counts for each (see Sticky).
func (a *AskResult) FlowsByTag() map[string]int {
	m := map[string]int{}
	for _, tags := range a.flowTags() {
		for _, t := range tags {
			m[t]++
		}
	}
	return m
}

// Sticky returns the flows answered by more than one server (nil: every
// flow stuck to one server).
func (a *AskResult) Sticky() (mixed []int) {
	for f, tags := range a.flowTags() {
		if len(tags) > 1 {
			mixed = append(mixed, f)
		}
	}
	slices.Sort(mixed)
	return mixed
}

func (a *AskResult) flowTags() map[int][]string {
	m := map[int][]string{}
	for _, x := range a.Answers {
		if x.OK && !slices.Contains(m[x.Flow], x.Tag) {
			m[x.Flow] = append(m[x.Flow], x.Tag)
		}
	}
	return m
}

// Peers returns the distinct source addresses (IP only) servers saw.
func (a *AskResult) Peers() []netip.Addr {
	var out []netip.Addr
	for _, x := range a.Answers {
		if ap, err := netip.ParseAddrPort(x.Peer); err == nil && !slices.Contains(out, ap.Addr()) {
			out = append(out, ap.Addr())
		}
	}
	return out
}

// Froms returns the distinct addresses (IP only) replies came from.
func (a *AskResult) Froms() []netip.Addr {
	var out []netip.Addr
	for _, x := range a.Answers {
		if ap, err := netip.ParseAddrPort(x.From); err == nil && x.OK && !slices.Contains(out, ap.Addr()) {
			out = append(out, ap.Addr())
		}
	}
	return out
}

// Failures describes the failed requests ("flow/seq: error", at most 5),
// or "" if none failed.
func (a *AskResult) Failures() string {
	var out []string
	n := 0
	for _, x := range a.Answers {
		if x.OK {
			continue
		}
		if n++; n <= 5 {
			out = append(out, fmt.Sprintf("flow %d seq %d: %s", x.Flow, x.Seq, x.Err))
		}
	}
	if n > 5 {
		out = append(out, fmt.Sprintf("and %d more", n-5))
	}
	return strings.Join(out, "; ")
}

// FirstError returns the first failed request's error text, or "".
func (a *AskResult) FirstError() string {
	for _, x := range a.Answers {
		if !x.OK {
			return x.Err
		}
	}
	return ""
}

// Percentile returns the p-th percentile (0 ≤ p ≤ 100) of xs by the
// nearest-rank method on a sorted copy: the smallest value such that at
// least p % of the samples are ≤ it. NaN for no samples.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if p <= 0 {
		return s[0]
	}
	if p >= 100 {
		return s[len(s)-1]
	}
	// The epsilon keeps float error (99.9/100*1000 = 999.0000000000001)
	// from moving the rank up by one.
	rank := int(math.Ceil(p*float64(len(s))/100 - 1e-9))
	return s[max(rank, 1)-1]
}
