package control

import (
	"net/netip"
	"strconv"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// writeInstanceAnswer is writeJSON for the busiest answer, an instance
// deploy's, without reflection: pprof of the root process under perf's
// control load put encoding/json at about 5 % of root's CPU per deploy.
// Its bytes are json.Marshal's exactly (a test compares them); a string
// needing any escape (json.Marshal also escapes <, > and &) goes to
// writeJSON.
func writeInstanceAnswer(ctx *fasthttp.RequestCtx, a *api.InstanceAnswer) {
	var buf [512]byte
	b, ok := appendInstanceAnswer(buf[:0], a)
	if !ok {
		writeJSON(ctx, 200, a)
		return
	}
	ctx.SetStatusCode(200)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n')) // copied: buf stays on the stack
}

// appendInstanceAnswer appends a's JSON to b; false: a string (or an
// IPv6 zone) needs an escape.
func appendInstanceAnswer(b []byte, a *api.InstanceAnswer) ([]byte, bool) {
	in := &a.Instance
	if !plainJSON(a.JobName) || !plainJSON(in.ClusterID) {
		return b, false
	}
	for _, ip := range [...]netip.Addr{in.InstanceIP, in.InstanceIPv6, in.NamespaceIP, in.NamespaceIPv6, in.HostIP} {
		if !plainJSON(ip.Zone()) {
			return b, false
		}
	}
	b = append(b, `{"job_name":"`...)
	b = append(b, a.JobName...)
	b = append(b, `","instance_number":`...)
	b = strconv.AppendInt(b, int64(in.InstanceNumber), 10)
	b = appendAddrField(b, `,"instance_ip":"`, in.InstanceIP)
	b = appendAddrField(b, `,"instance_ip_v6":"`, in.InstanceIPv6)
	b = append(b, `,"cluster_id":"`...)
	b = append(b, in.ClusterID...)
	b = append(b, '"')
	b = appendAddrField(b, `,"namespace_ip":"`, in.NamespaceIP)
	b = appendAddrField(b, `,"namespace_ip_v6":"`, in.NamespaceIPv6)
	b = appendAddrField(b, `,"host_ip":"`, in.HostIP)
	b = append(b, `,"host_port":`...)
	b = strconv.AppendInt(b, int64(in.HostPort), 10)
	return append(b, '}'), true
}

// appendAddrField appends key (ending in its opening quote), a as
// MarshalText writes it ("" for the zero Addr) and the closing quote.
func appendAddrField(b []byte, key string, a netip.Addr) []byte {
	b = append(b, key...)
	if a.IsValid() {
		b = a.AppendTo(b)
	}
	return append(b, '"')
}

// plainJSON: s is printable ASCII that json.Marshal writes as it is.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
