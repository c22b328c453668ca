// Package nodeclient is the Go client of the cluster service manager's
// node-facing API (see docs/api.md): what a NetManager uses to register its
// node, resolve service IPs and job names, report its instances, and watch
// for changes. The wire types and the error classes are package api's,
// which the server (package control) shares; neither imports the other.
package nodeclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/api"
)

// APIError is a non-2xx answer. It is of the class of its status
// (api.ErrorFor): test it with errors.Is(err, api.ErrNotFound) and
// friends. A cluster that cannot be reached is api.ErrUnavailable.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("cluster: %d %s: %s", e.Status, e.Code, e.Message)
}

// Unwrap is the class of the status.
func (e *APIError) Unwrap() error { return api.ErrorFor(e.Status) }

// Client talks to one cluster service manager on behalf of one node. It is
// safe for concurrent use.
type Client struct {
	base       string
	nodeID     string
	token      string
	timeout    time.Duration
	http       *http.Client
	peerDeltas bool
}

// Options tune a Client. Zero values take defaults.
type Options struct {
	// Token is the bearer token; default: environment OAKWIRE_TOKEN.
	Token string
	// Timeout bounds every request except Watch (default 5 s); a watch is
	// bounded by its own timeout plus this.
	Timeout time.Duration
	// HTTPClient replaces the default transport.
	HTTPClient *http.Client
	// PeerDeltas makes Watch ask for peer-set changes as deltas
	// (Change.PeerDelta) instead of the whole set with every change: what
	// a node with many peers wants (docs/api.md, "Watch").
	PeerDeltas bool
}

// New returns a client of the cluster at base ("host:port" or a URL) acting
// for node nodeID.
func New(base, nodeID string, opt Options) *Client {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	if opt.Token == "" {
		opt.Token = os.Getenv("OAKWIRE_TOKEN")
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 5 * time.Second
	}
	hc := opt.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 90 * time.Second}}
	}
	return &Client{base: strings.TrimRight(base, "/"), nodeID: nodeID, token: opt.Token, timeout: opt.Timeout, http: hc,
		peerDeltas: opt.PeerDeltas}
}

// NodeID is the node this client acts for.
func (c *Client) NodeID() string { return c.nodeID }

func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w: %w", method, path, api.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w: %w", method, path, api.ErrUnavailable, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb api.ErrorBody
		_ = json.Unmarshal(b, &eb)
		if eb.Error == "" {
			eb.Error = strings.TrimSpace(string(b))
		}
		return fmt.Errorf("%s %s: %w", method, path, &APIError{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error})
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// Register registers the node (idempotent per node id) and returns its
// subnets, peers and the watch position to start from. tunnelPort 0 is
// api.DefaultTunnelPort.
func (c *Client) Register(ctx context.Context, nodeIP netip.Addr, tunnelPort int, loc *api.Location) (api.RegisterResponse, error) {
	return c.RegisterWith(ctx, api.RegisterRequest{NodeIP: nodeIP, TunnelPort: tunnelPort, Location: loc})
}

// RegisterWith is Register with every field of the request (a public
// address for a node behind a NAT); NodeID is the client's.
func (c *Client) RegisterWith(ctx context.Context, req api.RegisterRequest) (api.RegisterResponse, error) {
	var r api.RegisterResponse
	req.NodeID = c.nodeID
	err := c.do(ctx, c.timeout, http.MethodPost, "/api/node/register", req, &r)
	return r, err
}

// Deregister removes the node; its subnets return to the pool.
func (c *Client) Deregister(ctx context.Context) error {
	return c.do(ctx, c.timeout, http.MethodDelete, "/api/node/"+url.PathEscape(c.nodeID), nil, nil)
}

// ResolveByIP returns the entry of the service that owns ip (a service IP
// or an instance IP, v4 or v6) and registers the node's interest in it.
func (c *Client) ResolveByIP(ctx context.Context, ip netip.Addr) (api.ServiceEntry, error) {
	var e api.ServiceEntry
	q := url.Values{"node_id": {c.nodeID}, "ip": {ip.String()}}
	err := c.do(ctx, c.timeout, http.MethodGet, "/api/node/resolve?"+q.Encode(), nil, &e)
	return e, err
}

// ResolveByName returns the entry of job (dotted job name) and registers
// the node's interest in it.
func (c *Client) ResolveByName(ctx context.Context, job string) (api.ServiceEntry, error) {
	var e api.ServiceEntry
	q := url.Values{"node_id": {c.nodeID}, "job": {job}}
	err := c.do(ctx, c.timeout, http.MethodGet, "/api/node/resolve?"+q.Encode(), nil, &e)
	return e, err
}

// ReportDeployed tells the cluster that instance n of job now runs on this
// node at the given namespace IPs (nsIPv6 may be unset).
func (c *Client) ReportDeployed(ctx context.Context, job string, n int, nsIP, nsIPv6 netip.Addr) error {
	return c.do(ctx, c.timeout, http.MethodPost, "/api/node/instance/deployed",
		api.InstanceReport{NodeID: c.nodeID, JobName: job, InstanceNumber: n, NamespaceIP: nsIP, NamespaceIPv6: nsIPv6}, nil)
}

// ReportUndeployed tells the cluster that instance n of job stopped on this
// node. The instance keeps its instance IPs (it may be migrating); only its
// location is cleared, and only if it is still this node.
func (c *Client) ReportUndeployed(ctx context.Context, job string, n int) error {
	return c.do(ctx, c.timeout, http.MethodPost, "/api/node/instance/undeployed",
		api.InstanceReport{NodeID: c.nodeID, JobName: job, InstanceNumber: n}, nil)
}

// DropInterest stops changes of job being pushed to this node.
func (c *Client) DropInterest(ctx context.Context, job string) error {
	q := url.Values{"node_id": {c.nodeID}}
	return c.do(ctx, c.timeout, http.MethodDelete, "/api/node/interest/"+url.PathEscape(job)+"?"+q.Encode(), nil, nil)
}

// Peers returns the node's current peer set.
func (c *Client) Peers(ctx context.Context) (api.PeersResponse, error) {
	var r api.PeersResponse
	q := url.Values{"node_id": {c.nodeID}}
	err := c.do(ctx, c.timeout, http.MethodGet, "/api/node/peers?"+q.Encode(), nil, &r)
	return r, err
}

// Watch waits up to wait (server-capped) for changes after version since of
// epoch (empty: any) and returns them; an empty Changes with Resync unset
// means the wait timed out. When Resync is set, replace all tables with
// Services and Peers. With Options.PeerDeltas, peers changes carry deltas.
func (c *Client) Watch(ctx context.Context, epoch string, since uint64, wait time.Duration) (api.WatchResponse, error) {
	var r api.WatchResponse
	q := url.Values{"node_id": {c.nodeID}, "since": {strconv.FormatUint(since, 10)},
		"timeout": {strconv.FormatFloat(wait.Seconds(), 'f', 3, 64)}}
	if epoch != "" {
		q.Set("epoch", epoch)
	}
	if c.peerDeltas {
		q.Set("peers", "delta")
	}
	err := c.do(ctx, wait+c.timeout, http.MethodGet, "/api/node/watch?"+q.Encode(), nil, &r)
	return r, err
}
