package netmanager

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/oakwire/oakwire/api"
)

// Client-only containers (a CNI ADD that names no service).
//
// The data plane translates a sender's nsIP to its own instance IP (SPEC
// §7.3 egress 4), and a server's node accepts a tunnelled packet only from
// a source its table places on that peer: so a container that wants to
// reach service IPs must be an instance of some service, placed at root
// like any other. The daemon places it as a new instance of its node's
// client service, through root's orchestrator API (what an orchestrator
// does for a workload, and what internal/deploy's AddClient does):
//
//   - one client service per node, `_id` "oakwire-client-<node-id>", job
//     "oakwire.<node>.client.default", created at root on first use (root
//     answers a repeated deploy with the same service): per node, because
//     the node then owns the instance numbers and picks them without
//     coordinating with other nodes (root's instance deploy is idempotent,
//     so two nodes sharing a service could silently share an instance);
//   - its instances numbered from 0, the lowest free on this node;
//   - placed at root in the node's cluster (cluster-id), then attached and
//     reported like any deploy;
//   - deleted at root when the container goes, which frees the instance
//     IPs (an orchestrator's instance outlives its containers; this one is
//     the container). A delete root does not take is kept in the state file
//     and retried.
//
// It needs `root` and `cluster-id` in the configuration, and a token root
// accepts (OAKWIRE_TOKEN). Its cost: the client service holds one service
// IP pair per policy (never addressed) for every node that ever ran a
// client-only container.

// clientRoot is the part of root's API client-only containers use.
type clientRoot interface {
	// ensureService creates the client service (idempotent).
	ensureService(ctx context.Context, id, job string) error
	// deployInstance places instance n in cluster and returns its
	// instance IPs (idempotent: an existing instance keeps its IPs).
	deployInstance(ctx context.Context, id string, n int, cluster string) (v4, v6 netip.Addr, err error)
	// deleteInstance deletes instance n; an unknown one is no error.
	deleteInstance(ctx context.Context, id string, n int) error
}

// clientIDs returns the _id and job of node's client service.
func clientIDs(node string) (id, job string) {
	tag := node
	if !api.ValidPart(tag) {
		sum := sha256.Sum256([]byte(node))
		tag = "n" + hex.EncodeToString(sum[:8])
	}
	id = "oakwire-client-" + node
	if len(id) > 128 {
		id = "oakwire-client-" + tag
	}
	return id, "oakwire." + tag + ".client.default"
}

// httpRoot is root's HTTP API (Oakestra's paths) with a bearer token.
type httpRoot struct {
	base  string
	token string
	hc    *http.Client

	mu      sync.Mutex // guards ensured
	ensured map[string]bool
}

func newHTTPRoot(base, token string) *httpRoot {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &httpRoot{base: strings.TrimRight(base, "/"), token: token,
		hc: &http.Client{Timeout: 10 * time.Second}, ensured: map[string]bool{}}
}

func (r *httpRoot) ensureService(ctx context.Context, id, job string) error {
	r.mu.Lock()
	done := r.ensured[id]
	r.mu.Unlock()
	if done {
		return nil
	}
	p := strings.Split(job, ".")
	body := map[string]any{"_id": id, "deployment_descriptor": map[string]any{
		"app_name": p[0], "app_ns": p[1], "microservice_name": p[2], "microservice_namespace": p[3]}}
	if _, err := r.call(ctx, "POST", "/api/net/service/deploy", body, nil); err != nil {
		return fmt.Errorf("client service %s: %w", job, err)
	}
	r.mu.Lock()
	r.ensured[id] = true
	r.mu.Unlock()
	return nil
}

func (r *httpRoot) deployInstance(ctx context.Context, id string, n int, cluster string) (v4, v6 netip.Addr, err error) {
	var ans struct {
		IP  string `json:"instance_ip"`
		IP6 string `json:"instance_ip_v6"`
	}
	body := map[string]any{"_id": id, "instance_number": n, "cluster_id": cluster}
	status, err := r.call(ctx, "POST", "/api/net/instance/deploy", body, &ans)
	if status == http.StatusNotFound {
		// The service went (deleted at root behind our back): make it again.
		r.mu.Lock()
		delete(r.ensured, id)
		r.mu.Unlock()
	}
	if err != nil {
		return v4, v6, fmt.Errorf("client instance %s/%d: %w", id, n, err)
	}
	v4, err4 := netip.ParseAddr(ans.IP)
	v6, err6 := netip.ParseAddr(ans.IP6)
	if err4 != nil || err6 != nil {
		return v4, v6, fmt.Errorf("client instance %s/%d: root answered instance IPs %q %q", id, n, ans.IP, ans.IP6)
	}
	return v4, v6, nil
}

func (r *httpRoot) deleteInstance(ctx context.Context, id string, n int) error {
	status, err := r.call(ctx, "DELETE", fmt.Sprintf("/api/net/%s/%d", id, n), nil, nil)
	if status == http.StatusNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete client instance %s/%d: %w", id, n, err)
	}
	return nil
}

// call sends one request; a non-2xx answer is an error with root's text.
func (r *httpRoot) call(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("root %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("root %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("root %s %s: %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("root %s %s: answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// deployClient attaches a client-only container: a new instance of the
// node's client service, placed at root first (see the top of this file).
func (d *Daemon) deployClient(ctx context.Context, r DeployRequest) (DeployResponse, error) {
	if r.ServiceName != "" || r.InstanceNumber != 0 {
		return DeployResponse{}, badRequest("bad_request", "client: give no serviceName or instanceNumber (the node picks its client service's)")
	}
	d.mu.Lock()
	if d.st == nil || d.st.Subnets == nil {
		err := d.notRegisteredLocked()
		d.mu.Unlock()
		return DeployResponse{}, err
	}
	if d.root == nil {
		d.mu.Unlock()
		return DeployResponse{}, conflict("client_unsupported",
			"client: this node places client-only containers only with root and cluster-id in its configuration")
	}
	if r.ContainerID != "" { // before placing anything at root
		if _, _, err := d.byContainerLocked(r.ContainerID, cmp.Or(r.IfName, d.cfg.ContainerIf)); err == nil {
			d.mu.Unlock()
			return DeployResponse{}, conflict("already_deployed", "containerId %s ifName %s: already attached", r.ContainerID, cmp.Or(r.IfName, d.cfg.ContainerIf))
		}
	}
	id, job := clientIDs(d.nodeID)
	n := d.reserveClientLocked(job)
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.clientReserved, n)
		d.mu.Unlock()
	}()

	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err := d.root.ensureService(rctx, id, job)
	var v4, v6 netip.Addr
	if err == nil {
		v4, v6, err = d.root.deployInstance(rctx, id, n, d.cfg.ClusterID)
	}
	cancel()
	if err != nil {
		d.metrics.deployErrors.Inc()
		return DeployResponse{}, fmt.Errorf("client container: %w: %w", ErrCluster, err)
	}
	r.ServiceName, r.InstanceNumber = job, n
	resp, err := d.deploy(ctx, r, true)
	if err != nil {
		d.releaseClient(ctx, n)
		return resp, err
	}
	resp.InstanceIP, resp.InstanceIPv6 = v4.String(), v6.String()
	return resp, nil
}

// reserveClientLocked reserves the lowest instance number of the client
// service job that no container, deploy or pending release holds. d.mu
// held.
func (d *Daemon) reserveClientLocked(job string) int {
	used := map[int]bool{}
	for _, c := range d.nftContainersLocked() {
		if c.Job == job {
			used[c.Instance] = true
		}
	}
	for _, n := range d.st.ClientReleases {
		used[n] = true
	}
	n := 0
	for used[n] || d.clientReserved[n] {
		n++
	}
	d.clientReserved[n] = true
	return n
}

// releaseClient deletes client instance n at root; when root does not
// take it, the number goes to the state's ClientReleases and
// retryClientReleases tries again.
func (d *Daemon) releaseClient(ctx context.Context, n int) {
	d.mu.Lock()
	id, _ := clientIDs(d.nodeID)
	d.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	err := d.root.deleteInstance(rctx, id, n)
	cancel()
	if err == nil {
		return
	}
	d.log.Warn("client instance not deleted at root; retrying later", "instance", n, "err", err)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !slices.Contains(d.st.ClientReleases, n) {
		d.st.ClientReleases = append(d.st.ClientReleases, n)
		if err := d.saveLocked(); err != nil {
			d.log.Error("save state", "err", err)
		}
	}
	d.releaseAt = time.Now().Add(10 * time.Second)
}

// retryClientReleases retries the pending deletes at root, in the
// background, at most every 10 s.
func (d *Daemon) retryClientReleases() {
	d.mu.Lock()
	if d.root == nil || d.st == nil || len(d.st.ClientReleases) == 0 || time.Now().Before(d.releaseAt) || !d.releasing.CompareAndSwap(false, true) {
		d.mu.Unlock()
		return
	}
	pending := slices.Clone(d.st.ClientReleases)
	id, _ := clientIDs(d.nodeID)
	d.releaseAt = time.Now().Add(10 * time.Second)
	d.mu.Unlock()
	go func() {
		defer d.releasing.Store(false)
		var done []int
		for _, n := range pending {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := d.root.deleteInstance(ctx, id, n); err == nil {
				done = append(done, n)
			}
			cancel()
		}
		if len(done) == 0 {
			return
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		d.st.ClientReleases = slices.DeleteFunc(d.st.ClientReleases, func(n int) bool { return slices.Contains(done, n) })
		if err := d.saveLocked(); err != nil {
			d.log.Error("save state", "err", err)
		}
	}()
}
