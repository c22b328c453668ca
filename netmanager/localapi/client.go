package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// DefaultSocket is where the daemon listens unless configured otherwise
// (Oakestra's path).
const DefaultSocket = "/etc/netmanager/netmanager.sock"

// ErrUnreachable wraps every failure to reach the daemon at all (no
// socket, nobody listening, no answer in time), as opposed to an answer
// that is an error (*Error).
var ErrUnreachable = errors.New("netmanager not reachable")

// Client calls a daemon's local API over its unix socket. The zero value
// is not usable: use New.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client of the daemon listening on socket ("" means
// DefaultSocket). timeout bounds each call from dial to the last byte of
// the answer (0 means 30 s): a daemon that accepts and never answers
// costs at most that.
func New(socket string, timeout time.Duration) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	dial := min(timeout, 2*time.Second)
	return &Client{socket: socket, hc: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{Timeout: dial}).DialContext(ctx, "unix", socket)
			},
			DisableKeepAlives: true,
		},
	}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Do sends method path with in as JSON (nil: no body) and decodes a 2xx
// answer into out (nil: discarded). A non-2xx answer is an *Error; a
// failure to reach the daemon wraps ErrUnreachable.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://netmanager"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %s %s: %w", ErrUnreachable, c.socket, method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%w at %s: %s %s: reading the answer: %w", ErrUnreachable, c.socket, method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = string(bytes.TrimSpace(b))
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: answer: %w", method, path, err)
		}
	}
	return nil
}

// Status is GET /status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.Do(ctx, "GET", "/status", nil, &s)
}

// Flows is GET /flows, filtered by the daemon when service (a job name
// or service/instance IP) or instance (an instance number or IP) is set.
func (c *Client) Flows(ctx context.Context, service, instance string) ([]Flow, error) {
	q := url.Values{}
	if service != "" {
		q.Set("service", service)
	}
	if instance != "" {
		q.Set("instance", instance)
	}
	path := "/flows"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var fs []Flow
	return fs, c.Do(ctx, "GET", path, nil, &fs)
}

// Services is GET /services.
func (c *Client) Services(ctx context.Context) (*Services, error) {
	var s Services
	return &s, c.Do(ctx, "GET", "/services", nil, &s)
}

// Deploy is POST /container/deploy.
func (c *Client) Deploy(ctx context.Context, r DeployRequest) (*DeployResponse, error) {
	var resp DeployResponse
	return &resp, c.Do(ctx, "POST", "/container/deploy", r, &resp)
}

// Undeploy is POST /container/undeploy.
func (c *Client) Undeploy(ctx context.Context, r UndeployRequest) error {
	return c.Do(ctx, "POST", "/container/undeploy", r, nil)
}
