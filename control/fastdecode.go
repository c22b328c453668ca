package control

import (
	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// decodeDeployInstance is decodeBody for the busiest body, an instance
// deploy, without reflection: pprof of BenchmarkControlPlane put
// encoding/json and the required-field walk at about a sixth of root's CPU
// per deploy. It reads the plain shape orchestrators send (an object of
// the four known keys, each once, strings of printable ASCII without
// escapes, a non-negative integer of up to nine digits) and leaves
// anything else, valid or not, to decodeBody, so answers and errors are
// decodeBody's exactly.
func decodeDeployInstance(ctx *fasthttp.RequestCtx, v *api.DeployInstance) error {
	if fastDeployInstance(ctx.PostBody(), v) {
		return nil
	}
	*v = api.DeployInstance{}
	return decodeBody(ctx, v)
}

// fastDeployInstance parses b into v if it has the plain shape; false:
// use decodeBody.
func fastDeployInstance(b []byte, v *api.DeployInstance) bool {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	var seen [4]bool
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return false // required fields missing
	}
	for {
		key, j, ok := plainString(b, i)
		if !ok {
			return false
		}
		j = skipWS(b, j)
		if j >= len(b) || b[j] != ':' {
			return false
		}
		j = skipWS(b, j+1)
		k := -1
		switch key {
		case "_id":
			k = 0
			v.ID, j, ok = plainString(b, j)
		case "system_job_id":
			k = 1
			v.SystemJobID, j, ok = plainString(b, j)
		case "instance_number":
			k = 2
			v.InstanceNumber, j, ok = plainUint(b, j)
		case "cluster_id":
			k = 3
			v.ClusterID, j, ok = plainString(b, j)
		}
		if k < 0 || !ok || seen[k] {
			return false
		}
		seen[k] = true
		j = skipWS(b, j)
		if j >= len(b) {
			return false
		}
		if b[j] == '}' {
			return seen[2] && seen[3] && skipWS(b, j+1) == len(b)
		}
		if b[j] != ',' {
			return false
		}
		i = skipWS(b, j+1)
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a JSON string at b[i] of printable ASCII without
// escapes; it returns the string and the index after it.
func plainString(b []byte, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return string(b[i+1 : j]), j + 1, true
		case c == '\\' || c < 0x20 || c > 0x7e:
			return "", j, false
		}
	}
	return "", len(b), false
}

// plainUint reads a JSON integer at b[i]: 0, or up to nine digits without
// a leading zero, not followed by a fraction or exponent.
func plainUint(b []byte, i int) (int, int, bool) {
	n, j := 0, i
	for j < len(b) && b[j] >= '0' && b[j] <= '9' && j-i < 10 {
		n = n*10 + int(b[j]-'0')
		j++
	}
	switch {
	case j == i || j-i > 9 || (b[i] == '0' && j-i > 1):
		return 0, j, false
	case j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E' || (b[j] >= '0' && b[j] <= '9')):
		return 0, j, false
	}
	return n, j, true
}
