package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/oakwire/oakwire/control/nodeclient"
	"github.com/oakwire/oakwire/ipam"
	"github.com/valyala/fasthttp"
)

// rootClient is the cluster's client of the root API.
type rootClient struct {
	base    string
	token   string
	timeout time.Duration
	c       *fasthttp.Client
}

func newRootClient(base, token string, timeout time.Duration) *rootClient {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &rootClient{base: strings.TrimRight(base, "/"), token: token, timeout: timeout,
		c: &fasthttp.Client{Name: "oakwire-cluster", ReadTimeout: timeout, WriteTimeout: timeout,
			MaxIdleConnDuration: time.Minute, MaxConnsPerHost: 256}}
}

// sentinelOf maps a root answer's status back to a sentinel, so the
// cluster answers its own callers consistently (one table, reversed).
func sentinelOf(status int) error {
	switch status {
	case http.StatusBadRequest:
		return ErrBadRequest
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	case http.StatusInsufficientStorage:
		return ipam.ErrExhausted
	case http.StatusUnauthorized:
		return ErrUpstream // our token is wrong at root: not the caller's fault
	default:
		return ErrUpstream
	}
}

func (rc *rootClient) do(ctx context.Context, method, path string, in, out any) error {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(rc.base + path)
	req.Header.SetMethod(method)
	if rc.token != "" {
		req.Header.Set("Authorization", "Bearer "+rc.token)
	}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("root %s %s: encode: %w", method, path, err)
		}
		req.Header.SetContentType("application/json")
		req.SetBodyRaw(b)
	}
	timeout := rc.timeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if err := rc.c.DoTimeout(req, resp, timeout); err != nil {
		return newErr(ErrUpstream, "root_unreachable", "root %s %s: %v", method, path, err)
	}
	if sc := resp.StatusCode(); sc/100 != 2 {
		var eb errorBody
		_ = json.Unmarshal(resp.Body(), &eb)
		code := eb.Code
		if sc >= 500 || sc == 401 {
			code = "root_error"
		}
		return newErr(sentinelOf(sc), code, "root: %s (%d)", eb.Error, sc)
	}
	if out != nil {
		if err := json.Unmarshal(resp.Body(), out); err != nil {
			return newErr(ErrUpstream, "root_error", "root %s %s: decode answer: %v", method, path, err)
		}
	}
	return nil
}

func (rc *rootClient) serviceByJob(ctx context.Context, job, cid string) (nodeclient.ServiceEntry, error) {
	var e nodeclient.ServiceEntry
	err := rc.do(ctx, "GET", "/api/net/service/"+url.PathEscape(job)+"/instances?cluster_id="+url.QueryEscape(cid), nil, &e)
	return e, err
}

func (rc *rootClient) serviceByIP(ctx context.Context, ip, cid string) (nodeclient.ServiceEntry, error) {
	var e nodeclient.ServiceEntry
	err := rc.do(ctx, "GET", "/api/net/service/ip/"+url.PathEscape(ip)+"/instances?cluster_id="+url.QueryEscape(cid), nil, &e)
	return e, err
}

func (rc *rootClient) dropInterest(ctx context.Context, job, cid string) error {
	return rc.do(ctx, "DELETE", "/api/net/interest/"+url.PathEscape(job)+"?cluster_id="+url.QueryEscape(cid), nil, nil)
}

func (rc *rootClient) subnet(ctx context.Context, node string) (subnetAnswer, error) {
	var s subnetAnswer
	err := rc.do(ctx, "GET", "/api/net/subnet?node_id="+url.QueryEscape(node), nil, &s)
	return s, err
}

func (rc *rootClient) releaseSubnet(ctx context.Context, node string) error {
	return rc.do(ctx, "DELETE", "/api/net/subnet/"+url.PathEscape(node), nil, nil)
}

func (rc *rootClient) registerCluster(ctx context.Context, ci clusterInfo) error {
	return rc.do(ctx, "POST", "/api/net/cluster", ci, nil)
}

type statusOut struct {
	InstanceNumber int    `json:"instance_number"`
	NamespaceIP    string `json:"namespace_ip,omitempty"`
	NamespaceIPv6  string `json:"namespace_ip_v6,omitempty"`
	HostIP         string `json:"host_ip"`
	HostPort       int    `json:"host_port"`
}

func (rc *rootClient) deployStatus(ctx context.Context, undeploy bool, jobID string, s statusOut) error {
	path := "/api/net/service/net_deploy_status"
	if undeploy {
		path = "/api/net/service/net_undeploy_status"
	}
	return rc.do(ctx, "POST", path, map[string]any{"job_id": jobID, "instances": []statusOut{s}}, nil)
}
