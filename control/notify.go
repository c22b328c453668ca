package control

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// NotifyConfig tunes root → cluster change notifications.
type NotifyConfig struct {
	// Timeout bounds one attempt (default 2 s).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// attempts at one cluster (defaults 100 ms, 30 s).
	MinBackoff, MaxBackoff time.Duration
	// UnreachableAfter consecutive failures mark a cluster unreachable
	// (metric oakwire_cluster_unreachable, one log line) (default 3).
	UnreachableAfter int
	// QueueLen bounds the pending notifications per cluster; beyond it the
	// oldest are dropped and counted (clusters' periodic refresh repairs
	// what they missed) (default 10000).
	QueueLen int
}

func (c NotifyConfig) withDefaults() NotifyConfig {
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(30*time.Second, c.MinBackoff)
	}
	if c.UnreachableAfter <= 0 {
		c.UnreachableAfter = 3
	}
	if c.QueueLen <= 0 {
		c.QueueLen = 10000
	}
	return c
}

// notice is one notification to a cluster: a POST of body to path.
type notice struct {
	path string
	body string
}

// jobNotice is a job update (POST /api/net/job/update).
func jobNotice(u api.JobUpdate) notice {
	b, _ := json.Marshal(u)
	return notice{path: "/api/net/job/update", body: string(b)}
}

// peersPath is where root hints a cluster to fetch peers again
// (api.PeersHint).
const peersPath = "/api/net/peers/update"

// notifier delivers job updates and peer hints to clusters: one queue and
// one goroutine per cluster, in order, with retry and exponential backoff,
// so a slow or dead cluster delays only itself and never the request that
// caused the change.
type notifier struct {
	cfg    NotifyConfig
	token  string
	log    *slog.Logger
	client *fasthttp.Client
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex // guards queues and the unreachable gauge's series
	queues map[string]*clusterQueue

	sent        *prometheus.CounterVec
	failed      *prometheus.CounterVec
	dropped     *prometheus.CounterVec
	unreachable *prometheus.GaugeVec
}

type clusterQueue struct {
	id     string
	cancel context.CancelFunc
	wake   chan struct{} // capacity 1: items were queued
	moved  chan struct{} // capacity 1: the cluster re-registered at another URL

	mu    sync.Mutex // guards url and items
	url   string
	items []notice
}

func newNotifier(cfg NotifyConfig, token string, log *slog.Logger, reg prometheus.Registerer) *notifier {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	n := &notifier{
		cfg: cfg, token: token, log: log, ctx: ctx, cancel: cancel,
		client: &fasthttp.Client{Name: "oakwire-root", ReadTimeout: cfg.Timeout, WriteTimeout: cfg.Timeout,
			MaxIdleConnDuration: time.Minute, MaxConnsPerHost: 16},
		queues: map[string]*clusterQueue{},
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "oakwire_notify_sent_total",
			Help: "Job updates delivered to clusters."}, []string{"cluster"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "oakwire_notify_failed_attempts_total",
			Help: "Failed attempts to deliver a job update (each is retried)."}, []string{"cluster"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "oakwire_notify_dropped_total",
			Help: "Job updates dropped: queue full, or rejected by the cluster with a 4xx."}, []string{"cluster"}),
		unreachable: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "oakwire_cluster_unreachable",
			Help: "1 while a cluster has failed UnreachableAfter consecutive notifications."}, []string{"cluster"}),
	}
	reg.MustRegister(n.sent, n.failed, n.dropped, n.unreachable)
	return n
}

func clusterURL(ci api.Cluster) string {
	a := ci.ClusterAddress
	if strings.Contains(a, "://") {
		u := strings.TrimRight(a, "/")
		// a URL without a port gets cluster_port
		rest := u[strings.Index(u, "://")+3:]
		if _, _, err := net.SplitHostPort(rest); err != nil {
			u += ":" + strconv.Itoa(int(ci.ClusterPort))
		}
		return u
	}
	return "http://" + net.JoinHostPort(strings.Trim(a, "[]"), strconv.Itoa(int(ci.ClusterPort)))
}

// enqueue queues u for ci. A peer hint already waiting behind the one in
// flight is not queued twice: the cluster fetches the current state
// whichever copy it acts on.
func (n *notifier) enqueue(ci api.Cluster, u notice) {
	n.mu.Lock()
	q := n.queues[ci.ClusterID]
	if q == nil {
		ctx, cancel := context.WithCancel(n.ctx)
		q = &clusterQueue{id: ci.ClusterID, cancel: cancel, wake: make(chan struct{}, 1), moved: make(chan struct{}, 1)}
		n.queues[ci.ClusterID] = q
		n.wg.Add(1)
		go n.run(ctx, q)
	}
	n.mu.Unlock()

	q.mu.Lock()
	q.url = clusterURL(ci)
	if u.path == peersPath && len(q.items) > 1 && slices.Contains(q.items[1:], u) {
		q.mu.Unlock()
		return
	}
	if len(q.items) >= n.cfg.QueueLen {
		q.items = q.items[1:]
		n.dropped.WithLabelValues(q.id).Inc()
	}
	q.items = append(q.items, u)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// retarget points the queue of a cluster that re-registered at the address
// it registered with now. Updates queued while it was unreachable at the old
// one are retried there at once, not after the backoff (nor only when the
// next update is queued).
func (n *notifier) retarget(ci api.Cluster) {
	n.mu.Lock()
	q := n.queues[ci.ClusterID]
	n.mu.Unlock()
	if q == nil {
		return
	}
	url := clusterURL(ci)
	q.mu.Lock()
	changed := q.url != url
	q.url = url
	q.mu.Unlock()
	if changed {
		select {
		case q.moved <- struct{}{}:
		default:
		}
	}
}

// forget stops notifying a deregistered cluster.
func (n *notifier) forget(cid string) {
	n.mu.Lock()
	q := n.queues[cid]
	delete(n.queues, cid)
	n.unreachable.DeleteLabelValues(cid)
	n.mu.Unlock()
	if q != nil {
		q.cancel()
	}
}

// setUnreachable sets q's gauge unless q was forgotten meanwhile (a stale
// series would report a deregistered cluster as down forever).
func (n *notifier) setUnreachable(q *clusterQueue, v float64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.queues[q.id] == q {
		n.unreachable.WithLabelValues(q.id).Set(v)
	}
}

func (n *notifier) close() {
	n.cancel()
	n.wg.Wait()
}

func (n *notifier) run(ctx context.Context, q *clusterQueue) {
	defer n.wg.Done()
	backoff := n.cfg.MinBackoff
	fails := 0
	for {
		q.mu.Lock()
		var item notice
		have := len(q.items) > 0
		if have {
			item = q.items[0]
		}
		url := q.url
		q.mu.Unlock()
		if !have {
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			case <-q.moved:
			}
			continue
		}
		status, err := n.post(url, item)
		switch {
		case err == nil && status/100 == 2, err == nil && status/100 == 4:
			if status/100 == 4 {
				n.dropped.WithLabelValues(q.id).Inc()
				n.log.Warn("cluster rejected notification", "cluster", q.id, "status", status, "path", item.path, "body", item.body)
			} else {
				n.sent.WithLabelValues(q.id).Inc()
			}
			q.mu.Lock()
			if len(q.items) > 0 && q.items[0] == item {
				q.items = q.items[1:]
			}
			q.mu.Unlock()
			if fails >= n.cfg.UnreachableAfter {
				n.log.Info("cluster reachable again", "cluster", q.id)
			}
			fails, backoff = 0, n.cfg.MinBackoff
			n.setUnreachable(q, 0)
		default:
			if err == nil {
				err = fmt.Errorf("status %d", status)
			}
			fails++
			n.failed.WithLabelValues(q.id).Inc()
			if fails == n.cfg.UnreachableAfter {
				n.setUnreachable(q, 1)
				n.log.Warn("cluster unreachable; retrying with backoff", "cluster", q.id, "url", url, "err", err)
			}
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-q.moved:
				// Another address: try it now, from the shortest backoff.
				t.Stop()
				backoff = n.cfg.MinBackoff
				continue
			case <-t.C:
			}
			backoff = min(backoff*2, n.cfg.MaxBackoff)
		}
	}
}

func (n *notifier) post(url string, u notice) (int, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url + u.path)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	if n.token != "" {
		req.Header.Set("Authorization", "Bearer "+n.token)
	}
	req.SetBodyString(u.body)
	if err := n.client.DoTimeout(req, resp, n.cfg.Timeout); err != nil {
		return 0, err
	}
	return resp.StatusCode(), nil
}
