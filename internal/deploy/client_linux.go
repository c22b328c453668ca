package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/internal/testbed"
)

// nsClient is an HTTP client whose connections are made inside namespace
// ns (a socket stays in the namespace it was created in).
func nsClient(ns string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				derr := testbed.Do(ns, func() error {
					c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
					return err
				})
				if c == nil && derr != nil {
					return nil, derr
				}
				return c, err
			},
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     10 * time.Second,
		},
	}
}

// unixClient talks HTTP over the unix socket path (netmanager's API).
func unixClient(path string) *http.Client {
	return &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		},
	}
}

func (d *Deployment) ready(base string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/readyz", nil)
	resp, err := d.ctlHTTP.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == 200
}

// redisPing sends PING to 127.0.0.1:port inside ns.
func redisPing(ns string, port int) bool {
	var c net.Conn
	err := testbed.Do(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		return err
	})
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// APIError is a non-2xx answer of root, the cluster or a netmanager.
type APIError struct {
	Method, URL string
	Status      int
	Body        string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d: %s", e.Method, e.URL, e.Status, strings.TrimSpace(e.Body))
}

func doJSON(ctx context.Context, c *http.Client, method, url, token string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	if resp.StatusCode/100 != 2 {
		return &APIError{Method: method, URL: url, Status: resp.StatusCode, Body: string(b)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: answer: %w", method, url, err)
		}
	}
	return nil
}

// RootCall calls root's API (path like "/api/net/service/deploy") with the
// token, from the control node's namespace; out (if not nil) receives the
// JSON answer.
func (d *Deployment) RootCall(ctx context.Context, method, path string, in, out any) error {
	return doJSON(ctx, d.ctlHTTP, method, d.RootURL+path, d.Token, in, out)
}

// ClusterCall calls the (first) cluster's API like RootCall.
func (d *Deployment) ClusterCall(ctx context.Context, method, path string, in, out any) error {
	return d.ClusterCallOn(ctx, d.Clusters[0], method, path, in, out)
}

// ClusterCallOn calls cluster cl's API like RootCall.
func (d *Deployment) ClusterCallOn(ctx context.Context, cl *Cluster, method, path string, in, out any) error {
	return doJSON(ctx, d.ctlHTTP, method, cl.URL+path, d.Token, in, out)
}

// NodeCall calls n's netmanager API over its unix socket.
func (d *Deployment) NodeCall(ctx context.Context, n *Node, method, path string, in, out any) error {
	return doJSON(ctx, n.http, method, "http://netmanager"+path, "", in, out)
}

// NodeStatus is the part of netmanager's GET /status the harness reads.
type NodeStatus struct {
	NodeID     string            `json:"node_id"`
	Registered bool              `json:"registered"`
	Confirmed  bool              `json:"cluster_confirmed"`
	LastError  string            `json:"last_error"`
	NodeIP     string            `json:"node_ip"`
	Subnet     string            `json:"subnet"`
	SubnetV6   string            `json:"subnet_v6"`
	Gateway    string            `json:"gateway"`
	GatewayV6  string            `json:"gateway_v6"`
	Containers []StatusContainer `json:"containers"`
	Dataplane  struct {
		Mode     string            `json:"mode"`
		Tables   map[string]int    `json:"tables"`
		Counters map[string]uint64 `json:"counters"`
	} `json:"dataplane"`
}

// StatusContainer is one container of NodeStatus.
type StatusContainer struct {
	Job         string `json:"service"`
	Instance    int    `json:"instance"`
	Netns       string `json:"netns"`
	ContainerID string `json:"container_id"`
	Client      bool   `json:"client"`
	NSIP        string `json:"ns_ip"`
	NSIP6       string `json:"ns_ip6"`
}

// Status is n's netmanager GET /status.
func (d *Deployment) Status(ctx context.Context, n *Node) (*NodeStatus, error) {
	var s NodeStatus
	if err := d.NodeCall(ctx, n, "GET", "/status", nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// DumpStatus writes every netmanager's GET /status (counters, drop
// reasons, tables) to w, for diagnosing a failed run.
func (d *Deployment) DumpStatus(ctx context.Context, w io.Writer) {
	for _, n := range d.Nodes {
		var raw json.RawMessage
		if err := d.NodeCall(ctx, n, "GET", "/status", nil, &raw); err != nil {
			fmt.Fprintf(w, "---- netmanager %s /status: %v\n", n.Name, err)
			continue
		}
		fmt.Fprintf(w, "---- netmanager %s /status\n%s\n", n.Name, raw)
	}
}
