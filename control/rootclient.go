package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/oakwire/oakwire/api"
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

// classOf is the class of a root answer's status (the one table,
// reversed), so the cluster answers its callers as root answered it;
// except that root failing (5xx), or refusing our token (401: not the
// caller's fault), is the upstream failing.
func classOf(status int) error {
	if status >= 500 || status == http.StatusUnauthorized {
		return api.ErrUpstream
	}
	return api.ErrorFor(status)
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
		return newErr(api.ErrUpstream, api.CodeRootUnreachable, "root %s %s: %v", method, path, err)
	}
	if sc := resp.StatusCode(); sc/100 != 2 {
		var eb api.ErrorBody
		_ = json.Unmarshal(resp.Body(), &eb)
		code := eb.Code
		if sc >= 500 || sc == 401 {
			code = api.CodeRootError
		}
		return newErr(classOf(sc), code, "root: %s (%d)", eb.Error, sc)
	}
	if out != nil {
		if err := json.Unmarshal(resp.Body(), out); err != nil {
			return newErr(api.ErrUpstream, api.CodeRootError, "root %s %s: decode answer: %v", method, path, err)
		}
	}
	return nil
}

func (rc *rootClient) serviceByJob(ctx context.Context, job, cid string) (api.ServiceEntry, error) {
	var e api.ServiceEntry
	err := rc.do(ctx, "GET", "/api/net/service/"+url.PathEscape(job)+"/instances?cluster_id="+url.QueryEscape(cid), nil, &e)
	return e, err
}

func (rc *rootClient) serviceByIP(ctx context.Context, ip netip.Addr, cid string) (api.ServiceEntry, error) {
	var e api.ServiceEntry
	err := rc.do(ctx, "GET", "/api/net/service/ip/"+url.PathEscape(ip.String())+"/instances?cluster_id="+url.QueryEscape(cid), nil, &e)
	return e, err
}

func (rc *rootClient) dropInterest(ctx context.Context, job, cid string) error {
	return rc.do(ctx, "DELETE", "/api/net/interest/"+url.PathEscape(job)+"?cluster_id="+url.QueryEscape(cid), nil, nil)
}

func (rc *rootClient) subnet(ctx context.Context, node string) (api.Subnets, error) {
	var s api.Subnets
	err := rc.do(ctx, "GET", "/api/net/subnet?node_id="+url.QueryEscape(node), nil, &s)
	return s, err
}

func (rc *rootClient) releaseSubnet(ctx context.Context, node string) error {
	return rc.do(ctx, "DELETE", "/api/net/subnet/"+url.PathEscape(node), nil, nil)
}

func (rc *rootClient) registerCluster(ctx context.Context, ci api.Cluster) error {
	return rc.do(ctx, "POST", "/api/net/cluster", ci, nil)
}

func (rc *rootClient) deployStatus(ctx context.Context, undeploy bool, jobID string, s api.InstanceStatus) error {
	path := "/api/net/service/net_deploy_status"
	if undeploy {
		path = "/api/net/service/net_undeploy_status"
	}
	return rc.do(ctx, "POST", path, api.DeployStatus{JobID: jobID, Instances: []api.InstanceStatus{s}}, nil)
}
