package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/internal/version"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// MaxBody is the largest request body accepted (SPEC §5); larger → 413.
const MaxBody = 1 << 20

// MaxDrain is how much of a body over MaxBody the server reads and
// discards before it answers 413 and closes the connection: a client that
// sends its whole body before reading the answer then gets the 413, not a
// connection reset (closing a socket with unread data sends RST, RFC 1122
// 4.2.2.13). A larger body is cut off (the client may see a reset).
const MaxDrain = 64 << 20

// handlerFunc serves one route. params are the path's ":name" segments in
// order, already copied out of the request (they outlive nothing).
type handlerFunc func(ctx *fasthttp.RequestCtx, params []string) error

type route struct {
	method string
	segs   []string // literal segments, or "" for a parameter
	name   string   // metrics label: the pattern
	roles  Role     // who may call it (auth.go)
	h      handlerFunc
}

// server is what root and cluster share: routing, auth, metrics, health
// and error answers.
type server struct {
	log  *slog.Logger
	rdb  redis.UniversalClient
	auth roleDigests // the tokens' digests per role (off: no tokens)
	// metricsOpen serves /metrics without a token (configuration
	// metrics-open); otherwise it takes a token of any role.
	metricsOpen bool
	routes      []route
	reg         *prometheus.Registry
	reqs        *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	metrics     fasthttp.RequestHandler
}

func newServer(log *slog.Logger, rdb redis.UniversalClient, tokens Tokens, metricsOpen bool) *server {
	if log == nil {
		log = slog.Default()
	}
	a := &server{log: log, rdb: rdb, reg: prometheus.NewRegistry(), auth: newRoleDigests(tokens), metricsOpen: metricsOpen}
	a.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oakwire_http_requests_total", Help: "HTTP requests by route and status code.",
	}, []string{"route", "code"})
	a.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "oakwire_http_request_duration_seconds", Help: "HTTP request latency by route and status code.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"route", "code"})
	a.reg.MustRegister(a.reqs, a.latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		version.Get().Collector())
	a.metrics = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	return a
}

// handle registers pattern "METHOD /a/:x/b", served to callers of roles.
func (a *server) handle(pattern string, roles Role, h handlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	var segs []string
	for _, s := range strings.Split(strings.Trim(path, "/"), "/") {
		if strings.HasPrefix(s, ":") {
			s = ""
		}
		segs = append(segs, s)
	}
	a.routes = append(a.routes, route{method: method, segs: segs, name: method + " " + path, roles: roles, h: h})
}

// match finds the route of path; a path that matches only with another
// method is ErrMethod. Parameters are copied strings.
func (a *server) match(method, path string) (*route, []string, error) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	methodMiss := false
	for i := range a.routes {
		r := &a.routes[i]
		if len(r.segs) != len(parts) {
			continue
		}
		ok := true
		for j, s := range r.segs {
			if s != "" && s != parts[j] || s == "" && parts[j] == "" {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if r.method != method {
			methodMiss = true
			continue
		}
		var params []string
		for j, s := range r.segs {
			if s == "" {
				params = append(params, parts[j])
			}
		}
		return r, params, nil
	}
	if methodMiss {
		return nil, nil, newErr(api.ErrMethod, api.CodeMethodNotAllowed, "%s %s: method not allowed", method, path)
	}
	return nil, nil, notFoundf("%s %s: no such endpoint", method, path)
}

// serve is the fasthttp entry point. Every answer, including a request
// fasthttp refused to read (NewServer passes those here), is counted in the
// request metrics.
func (a *server) serve(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	path := string(ctx.Path()) // a copy: nothing below keeps request bytes
	method := string(ctx.Method())
	var name string
	rej, rejected := ctx.UserValue(rejectionKey{}).(*rejection)
	if !rejected {
		if err := readBody(ctx); err != nil {
			rej, rejected = &rejection{err: err}, true
		}
	}
	if rejected {
		rej.handled = true
		name = "other"
		if r, _, _ := a.match(method, path); r != nil {
			name = r.name
		}
		a.writeErr(ctx, rej.err)
	} else {
		name = a.dispatch(ctx, method, path)
	}
	if name == "" {
		return
	}
	code := strconv.Itoa(ctx.Response.StatusCode())
	a.reqs.WithLabelValues(name, code).Inc()
	a.latency.WithLabelValues(name, code).Observe(time.Since(start).Seconds())
}

// dispatch answers one request and returns its metrics label ("" for
// /metrics itself, which is not counted).
func (a *server) dispatch(ctx *fasthttp.RequestCtx, method, path string) string {
	switch path {
	case "/healthz":
		ctx.SetContentType("text/plain")
		ctx.SetBodyString("ok\n")
		return "healthz"
	case "/readyz":
		if err := a.ready(ctx); err != nil {
			a.writeErr(ctx, err)
		} else {
			ctx.SetContentType("text/plain")
			ctx.SetBodyString("ready\n")
		}
		return "readyz"
	case "/metrics":
		if !a.metricsOpen && a.auth.roles(ctx) == 0 {
			a.writeErr(ctx, errUnauthorized())
			return "unauthorized"
		}
		a.metrics(ctx)
		return ""
	}
	var roles Role
	if strings.HasPrefix(path, "/api/") {
		if roles = a.auth.roles(ctx); roles == 0 {
			a.writeErr(ctx, errUnauthorized())
			return "unauthorized"
		}
	}
	name := "other"
	r, params, err := a.match(method, path)
	if r != nil {
		name = r.name
		if r.roles&roles == 0 {
			err = errForbidden(r.name, r.roles)
		} else {
			err = r.h(ctx, params)
		}
	}
	if err != nil {
		a.writeErr(ctx, err)
	}
	return name
}

// rejection is a request fasthttp refused to read (body over MaxBody,
// malformed header), handed to serve by NewServer's ErrorHandler under
// rejectionKey so it is answered and counted like any other.
type rejection struct {
	err     error
	handled bool // set by serve
}

type rejectionKey struct{}

// requestErr is fasthttp's reason for refusing a request as an error of
// its class: its status comes from the one table like every other.
func requestErr(err error) error {
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		return newErr(api.ErrTooLarge, api.CodeBodyTooLarge, "body: larger than %d bytes", MaxBody)
	}
	return badf(api.CodeBadRequest, "request: %v", err)
}

// readBody reads a request body that fasthttp streams (NewServer sets
// StreamRequestBody) into the request, at most MaxBody bytes. A larger
// body is read on and discarded up to MaxDrain, then refused with 413 and
// the connection closed, so a client that writes its whole body before
// it reads gets the answer instead of a reset.
func readBody(ctx *fasthttp.RequestCtx) error {
	if !ctx.Request.IsBodyStream() {
		return nil
	}
	if n := ctx.Request.Header.ContentLength(); n >= 0 && n <= min(prefetched, MaxBody) {
		// fasthttp has already read all of it (it reads the first
		// min(length, 8 KiB, MaxBody) before the handler runs): taking
		// it from the stream reads no connection, so cannot fail, and
		// needs no buffer of ours. Every instance deploy's body is this
		// size.
		ctx.Request.Body()
		return nil
	}
	st := ctx.RequestBodyStream()
	var buf bytes.Buffer
	n, err := io.CopyN(&buf, st, MaxBody+1)
	if n > MaxBody {
		_, _ = io.CopyN(io.Discard, st, MaxDrain)
		ctx.SetConnectionClose()
		return newErr(api.ErrTooLarge, api.CodeBodyTooLarge, "body: larger than %d bytes", MaxBody)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		ctx.SetConnectionClose()
		return badf(api.CodeBadRequest, "body: %v", err)
	}
	ctx.Request.SetBody(buf.Bytes())
	return nil
}

// prefetched is how much of a body of known length fasthttp reads before
// it calls the handler (readBodyWithStreaming in fasthttp's http.go).
const prefetched = 8 << 10

// detach returns the parent for contexts of work done on behalf of a
// request. fasthttp recycles a RequestCtx once the handler returns, and a
// context derived from it starts a goroutine that reads it (to propagate
// cancellation) which may outlive the handler; so request work derives
// from base instead, never from the RequestCtx.
func detach(ctx, base context.Context) context.Context {
	if _, ok := ctx.(*fasthttp.RequestCtx); ok {
		return base
	}
	return ctx
}

func (a *server) ready(ctx context.Context) error {
	c, cancel := context.WithTimeout(detach(ctx, context.Background()), time.Second)
	defer cancel()
	return redisErr("readyz: ping", a.rdb.Ping(c).Err())
}

func (a *server) writeErr(ctx *fasthttp.RequestCtx, err error) {
	status, code, msg := errStatus(err)
	if status >= 500 {
		a.log.Warn("request failed", "path", string(ctx.Path()), "status", status, "err", err)
	}
	writeJSON(ctx, status, api.ErrorBody{Error: msg, Code: code})
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode answer","code":"internal"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

// NewServer wraps a role's handler (a Root's or Cluster's Handler) in a
// fasthttp server with the body limit. A request fasthttp refuses itself
// (body over MaxBody: 413; unreadable: 400) goes to h marked as rejected,
// so its answer comes from the one status table and is counted in h's
// request metrics.
func NewServer(h fasthttp.RequestHandler, log *slog.Logger) *fasthttp.Server {
	if log == nil {
		log = slog.Default()
	}
	return &fasthttp.Server{
		Handler:            h,
		Name:               "oakwire",
		MaxRequestBodySize: MaxBody,
		// Bodies over MaxBody reach serve as a stream: readBody drains
		// them and answers 413 (fasthttp itself would close the
		// connection with the body unread).
		StreamRequestBody: true,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		Concurrency:       256 * 1024,
		CloseOnShutdown:   true,
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			rej := &rejection{err: requestErr(err)}
			ctx.SetUserValue(rejectionKey{}, rej)
			h(ctx)
			if !rej.handled {
				// h is not one of ours: answer without it.
				ctx.Response.Reset()
				status, code, msg := errStatus(rej.err)
				writeJSON(ctx, status, api.ErrorBody{Error: msg, Code: code})
			}
		},
		Logger: slogPrintf{log},
	}
}

type slogPrintf struct{ l *slog.Logger }

func (s slogPrintf) Printf(format string, args ...any) { s.l.Debug(fmt.Sprintf(format, args...)) }
