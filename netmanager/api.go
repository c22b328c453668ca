package netmanager

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/oakwire/oakwire/internal/version"
	"github.com/oakwire/oakwire/netmanager/localapi"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxBody bounds request bodies; maxDrain is how much more of a larger
// one is read and discarded before the 413.
const (
	maxBody  = 1 << 20
	maxDrain = 64 << 20
)

// Handler is the local API of SPEC §7.1 (Oakestra's paths and JSON).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /register", d.handleRegister)
	mux.HandleFunc("POST /container/deploy", d.handleDeploy)
	mux.HandleFunc("POST /container/undeploy", d.handleUndeploy)
	mux.HandleFunc("POST /docker/undeploy", d.handleUndeploy)
	mux.HandleFunc("POST /unikernel/deploy", d.handleUnikernelDeploy)
	mux.HandleFunc("POST /unikernel/undeploy", d.handleUnikernelUndeploy)
	mux.HandleFunc("GET /status", d.handleStatus)
	mux.HandleFunc("GET /flows", d.handleFlows)
	mux.HandleFunc("GET /services", d.handleServices)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

// RegisterRequest is POST /register.
type RegisterRequest struct {
	ClientID       string `json:"client_id"`
	ClusterAddress string `json:"cluster_address"`
}

func (d *Daemon) handleRegister(w http.ResponseWriter, r *http.Request) {
	var req RegisterRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.ClientID == "" {
		writeError(w, badRequest("missing_field", "client_id: missing"))
		return
	}
	if err := d.Register(r.Context(), req.ClientID, req.ClusterAddress); err != nil {
		d.log.Warn("register", "client_id", req.ClientID, "cluster", req.ClusterAddress, "err", err)
		writeError(w, err)
		return
	}
	d.mu.Lock()
	sub := d.st.Subnets.Subnet()
	d.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{
		"client_id": req.ClientID, "cluster_address": req.ClusterAddress,
		"subnet": sub.V4.String(), "subnet_v6": sub.V6.String(),
	})
}

func (d *Daemon) handleDeploy(w http.ResponseWriter, r *http.Request) {
	var req DeployRequest
	if err := decodeBody(w, r, &req); err != nil {
		d.metrics.deployErrors.Inc()
		writeError(w, err)
		return
	}
	resp, err := d.Deploy(r.Context(), req)
	if err != nil {
		d.log.Warn("deploy", "service", req.ServiceName, "instance", req.InstanceNumber, "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (d *Daemon) handleUndeploy(w http.ResponseWriter, r *http.Request) {
	var req UndeployRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := d.Undeploy(r.Context(), req); err != nil {
		d.log.Warn("undeploy", "service", req.ServiceName, "instance", req.InstanceNumber, "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"serviceName": req.ServiceName, "instanceNumber": req.InstanceNumber})
}

// Status is GET /status.
type Status struct {
	localapi.StatusBase
	Containers []*Container `json:"containers"`
	Build      version.Info `json:"build"`
}

// Status returns the daemon's status.
func (d *Daemon) Status() Status {
	dps := d.dataplaneStats()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st == nil { // before Run loaded the state
		return Status{StatusBase: localapi.StatusBase{Uplink: d.cfg.Uplink, NodeIP: d.cfg.NodeIP, Dataplane: dps}, Build: d.build}
	}
	s := Status{StatusBase: localapi.StatusBase{
		NodeID: d.nodeID, Registered: d.st.Subnets != nil, Confirmed: d.confirmed,
		Cluster: d.clusterAddressLocked(), LastError: d.lastErr,
		Uplink: d.cfg.Uplink, NodeIP: d.cfg.NodeIP, TunnelPort: d.cfg.TunnelPort,
		Workers: d.cfg.Workers, XDPMode: d.cfg.XDPMode, MTU: d.cfg.MTU,
		Uptime:     time.Since(d.started).Round(time.Second).String(),
		Quarantine: len(d.st.Quarantine),
		Dataplane:  dps,
		Counters: map[string]uint64{
			"deploys":              d.metrics.deploys.Value(),
			"deploy_errors":        d.metrics.deployErrors.Value(),
			"undeploys":            d.metrics.undeploys.Value(),
			"cluster_report_error": d.metrics.reportErrors.Value(),
			"node_ip_changes":      d.metrics.nodeIPChanges.Value(),
			"client_releases":      uint64(len(d.st.ClientReleases)),
		},
	},
		Containers: append([]*Container{}, d.st.Containers...),
		Build:      d.build,
	}
	for o := range d.deploying {
		s.Deploying = append(s.Deploying, o)
	}
	slices.Sort(s.Deploying)
	if dps.Workers > 0 { // what the data plane really runs
		s.Workers = dps.Workers
	}
	if d.st.Subnets != nil {
		sub, gw := d.st.Subnets.Subnet(), d.st.Subnets.Gateway()
		s.Subnet, s.SubnetV6 = sub.V4.String(), sub.V6.String()
		s.Gateway, s.GatewayV6, s.GatewayDev = gw.V4.String(), gw.V6.String(), gatewayDev
	}
	return s
}

// handleFlows is GET /flows[?service=JOB|IP][&instance=N|IP]: the data
// plane's live flows, each with the instance IP of the instance it chose
// (from the node's service table), filtered by service (job name, or any
// of its service or instance IPs) and by instance (number or instance IP).
func (d *Daemon) handleFlows(w http.ResponseWriter, r *http.Request) {
	fs := d.flows()
	svc, inst := r.URL.Query().Get("service"), r.URL.Query().Get("instance")
	if svc != "" || inst != "" {
		match, err := d.flowFilter(svc, inst)
		if err != nil {
			writeError(w, err)
			return
		}
		fs = slices.DeleteFunc(fs, func(f Flow) bool { return !match(f) })
	}
	writeJSON(w, http.StatusOK, fs)
}

// flows lists the data plane's flows with their chosen instance's IP.
func (d *Daemon) flows() []Flow {
	fs := d.dp.Flows()
	if fs == nil {
		fs = []Flow{}
	}
	if svcs := d.svcs.Load(); svcs != nil {
		for i := range fs {
			f := &fs[i]
			if f.Instance == nil || f.Job == "" {
				continue
			}
			dst, err := netip.ParseAddrPort(f.Dst)
			if a, ok := svcs.View.InstanceIP(f.Job, int(*f.Instance), err == nil && dst.Addr().Is6()); ok {
				f.InstanceIP = a.String()
			}
		}
	}
	return fs
}

// flowFilter builds the match of GET /flows's query.
func (d *Daemon) flowFilter(svc, inst string) (func(Flow) bool, error) {
	job := ""
	if svc != "" {
		if a, err := netip.ParseAddr(svc); err == nil {
			if svcs := d.svcs.Load(); svcs != nil {
				job, _ = svcs.View.Lookup(a)
			}
			if job == "" {
				job = "\x00" // an address the node does not know: nothing matches
			}
		} else if job, err = normJob(svc); err != nil {
			return nil, badRequest("bad_service", "service: %v", err)
		}
	}
	num, instIP := -1, ""
	if inst != "" {
		if n, err := strconv.Atoi(inst); err == nil && n >= 0 {
			num = n
		} else if a, err := netip.ParseAddr(inst); err == nil {
			instIP = a.Unmap().String()
		} else {
			return nil, badRequest("bad_instance", "instance: %q: want an instance number or IP", inst)
		}
	}
	return func(f Flow) bool {
		if job != "" && f.Job != job {
			return false
		}
		if num >= 0 && (f.Instance == nil || int(*f.Instance) != num) {
			return false
		}
		return instIP == "" || f.InstanceIP == instIP
	}, nil
}

// handleServices is GET /services: the service table the node holds.
func (d *Daemon) handleServices(w http.ResponseWriter, _ *http.Request) {
	t := localapi.Services{Services: []localapi.ServiceInfo{}}
	if svcs := d.svcs.Load(); svcs != nil {
		t = svcs.View.Table()
	}
	writeJSON(w, http.StatusOK, t)
}

func (d *Daemon) handleStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, d.Status())
}

// decodeBody decodes a JSON body into v; errors name the field.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		var me *http.MaxBytesError
		switch {
		case errors.As(err, &te):
			return badRequest("bad_type", "%s: want %s, got JSON %s", te.Field, te.Type, te.Value)
		case errors.As(err, &se):
			return badRequest("malformed_json", "malformed JSON at byte %d: %v", se.Offset, err)
		case errors.As(err, &me):
			// Read on (bounded) before the 413: closing with unread data
			// resets the connection before a caller that writes its whole
			// body first reads the answer (RFC 1122 4.2.2.13).
			_, _ = io.CopyN(io.Discard, r.Body, maxDrain)
			return &apiError{kind: ErrTooLarge, code: "body_too_large", msg: fmt.Sprintf("body larger than %d bytes", maxBody)}
		case errors.Is(err, io.EOF):
			return badRequest("malformed_json", "empty body: want a JSON object")
		}
		return badRequest("malformed_json", "malformed JSON: %v", err)
	}
	if dec.More() {
		return badRequest("malformed_json", "malformed JSON: data after the object")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	status, code := httpStatus(err)
	writeJSON(w, status, map[string]string{"error": err.Error(), "code": code})
}
