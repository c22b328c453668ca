package control

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/api"
)

// fromAddr does a request from source address src (127.0.0.0/8 is all
// local on Linux) and returns status and body.
func fromAddr(t *testing.T, src, method, url string) (int, []byte) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, n, a string) (net.Conn, error) { return d.DialContext(ctx, n, a) }}}
	req, _ := http.NewRequest(method, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestCallerByAddress: without cluster_id (or with Oakestra's "None"),
// root takes the one registered cluster whose cluster_address is the
// caller's source address (also written ::ffff:a.b.c.d or as a URL); no
// match, or two clusters at one address, records no interest and makes
// an interest drop a 400 naming cluster_id.
func TestCallerByAddress(t *testing.T) {
	_, rdb := startRedis(t)
	_, R := startRoot(t, rdb, rootOpts{sweep: -1})
	for _, c := range []string{
		`{"cluster_id":"x","cluster_address":"::ffff:127.0.0.2","cluster_port":"10110"}`,
		`{"cluster_id":"y","cluster_address":"http://127.0.0.3:9","cluster_port":9}`,
		`{"cluster_id":"z1","cluster_address":"127.0.0.4","cluster_port":9}`,
		`{"cluster_id":"z2","cluster_address":"127.0.0.4","cluster_port":10}`,
	} {
		mustCall(t, 200, "POST", R+"/api/net/cluster", c, "", nil)
	}
	mustCall(t, 200, "POST", R+"/api/net/service/deploy", `{"_id":"s1","deployment_descriptor":{"app_name":"a","app_ns":"n","microservice_name":"w","microservice_namespace":"d"}}`, "", nil)
	for _, tc := range []struct {
		src, query string
		drop       int // status of the interest drop after the query
		cluster    string
	}{
		{"127.0.0.2", "", 200, "x"},
		{"127.0.0.2", "?cluster_id=None", 200, "x"},
		{"127.0.0.3", "", 200, "y"},
		{"127.0.0.4", "", 400, ""}, // two clusters there
		{"127.0.0.5", "", 400, ""}, // none
	} {
		if st, b := fromAddr(t, tc.src, "GET", R+"/api/net/service/a_n_w_d/instances"+tc.query); st != 200 {
			t.Fatalf("query from %s: %d %s", tc.src, st, b)
		}
		st, b := fromAddr(t, tc.src, "DELETE", R+"/api/net/interest/a.n.w.d"+tc.query)
		var ci api.ClusterInterest
		_ = json.Unmarshal(b, &ci)
		if st != tc.drop || st == 200 && ci.ClusterID != tc.cluster || st == 400 && !strings.Contains(string(b), "cluster_id") {
			t.Errorf("drop from %s%s: %d %s, want %d for cluster %q", tc.src, tc.query, st, b, tc.drop, tc.cluster)
		}
	}
}
