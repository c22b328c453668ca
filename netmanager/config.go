package netmanager

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/bpfprog"
)

// Config is the daemon's configuration: every command-line flag of SPEC §8
// is also a YAML key of the same name, and flags win over the file.
// configs/netmanager.yaml documents every key with its default.
type Config struct {
	// NodeID identifies this node to its cluster. Required with Cluster;
	// without it the first POST /register names the node.
	NodeID string `yaml:"node-id"`
	// Uplink is the node's underlay interface (masquerade, tunnel).
	Uplink string `yaml:"uplink"`
	// NodeIP is the node's underlay address: tunnel endpoint and the only
	// address port mappings are matched on.
	NodeIP string `yaml:"node-ip"`
	// TunnelPort is the UDP port of the overlay tunnel.
	TunnelPort int `yaml:"tunnel-port"`
	// PublicIP and PublicPort are, for a node behind a NAT, the address
	// and UDP port its NAT forwards to NodeIP:TunnelPort (Oakestra's
	// NodePublicAddress and NodePublicPort): peers send the node's tunnel
	// traffic there and accept the node's from there. PublicPort 0 means
	// TunnelPort. Empty: the node is reached at NodeIP.
	PublicIP   string `yaml:"public-ip"`
	PublicPort int    `yaml:"public-port"`
	// Cluster is the cluster service manager (host, host:port or URL).
	// Empty: wait for POST /register.
	Cluster string `yaml:"cluster"`
	// ClusterPort is the port of a cluster address given without one
	// (POST /register with a bare host, as Oakestra's node engine sends).
	ClusterPort int `yaml:"cluster-port"`
	// Root is the root service manager (host:port or URL) and ClusterID
	// this node's cluster there: with both, a deploy that names no
	// service (a CNI ADD without one) places the container as an instance
	// of the node's client service at root (clientsvc.go). Empty: such
	// deploys are refused.
	Root      string `yaml:"root"`
	ClusterID string `yaml:"cluster-id"`
	// Socket is the path of the local API's unix socket.
	Socket string `yaml:"socket"`
	// StateDir holds the state file (state.json).
	StateDir string `yaml:"state-dir"`
	// Workers is the number of data-plane workers; 0 means the engine's
	// default (half the CPUs, at least one).
	Workers int `yaml:"workers"`
	// WorkerCPUs pins worker i to CPU WorkerCPUs[i % len], a comma-separated
	// list ("0,1"); empty leaves placement to the kernel's scheduler, which
	// measured best for latency (docs/design.md).
	WorkerCPUs string `yaml:"worker-cpus"`
	// WorkerYield is how a spinning worker yields: os (sched_yield), go
	// (runtime.Gosched) or none (busy spin; starves co-located apps).
	WorkerYield string `yaml:"worker-yield"`
	// WorkerSpin is how long an idle worker keeps polling before it sleeps
	// in poll(2).
	WorkerSpin time.Duration `yaml:"worker-spin"`
	// MTU of containers' interfaces (1450 fits the tunnel in a 1500 underlay).
	MTU int `yaml:"mtu"`
	// XDPMode is how XDP programs attach: generic or native (with offload
	// off; the kernel tier attaches TC programs instead). Default:
	// bpfprog.DefaultMode.
	XDPMode string `yaml:"xdp-mode"`
	// Offload turns the kernel tier on or off: on, TC programs execute
	// the flows the workers decided (TCP keeps its segmentation offloads,
	// latency is the kernel's) and go on while the daemon is down; off,
	// every packet crosses the AF_XDP workers.
	Offload string `yaml:"offload"`
	// BPFDir is a bpffs directory; the kernel tier pins its links and flows
	// under BPFDir/<node-id> so they outlive the daemon. Not on a bpffs
	// (or empty): nothing is pinned, and flows end with the daemon.
	BPFDir string `yaml:"bpf-dir"`
	// FlowsPerPort bounds the service flows one container holds in the
	// data plane's flow table; at the bound its new flow replaces its
	// least recently used one. 0: an eighth of the table (8192 of 65536).
	FlowsPerPort int `yaml:"flows-per-port"`
	// Quarantine is how long a freed namespace IP stays unused (SPEC §2);
	// 0 disables it.
	Quarantine time.Duration `yaml:"quarantine"`
	// ServiceMetricsMax bounds the (service, instance, direction) series
	// of the oakwire_service_* metrics; flows beyond it count under
	// service="_other" (flowmetrics.go).
	ServiceMetricsMax int `yaml:"service-metrics-max"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log-level"`
	// Insecure allows running without OAKWIRE_TOKEN (logs a warning).
	Insecure bool `yaml:"insecure"`
	// Dataplane selects the data plane: xdp (the AF_XDP fast path) or none
	// (kernel routing only: same-node traffic and port mappings work,
	// service IPs do not; for debugging and tests).
	Dataplane string `yaml:"dataplane"`
	// ContainerIf is the name of the interface inside containers.
	ContainerIf string `yaml:"container-if"`
	// PlatformV4 and PlatformV6 are the platform ranges (SPEC §2): routed
	// to the overlay on the node and never masqueraded.
	PlatformV4 string `yaml:"platform-v4"`
	PlatformV6 string `yaml:"platform-v6"`

	// Token is OAKWIRE_TOKEN from the environment; never in the file.
	// NodeToken (OAKWIRE_NODE_TOKEN) and OrchestratorToken
	// (OAKWIRE_ORCHESTRATOR_TOKEN), where the control hosts use per-role
	// tokens, win over it towards the cluster and root respectively.
	Token             string `yaml:"-"`
	NodeToken         string `yaml:"-"`
	OrchestratorToken string `yaml:"-"`
}

// Defaults returns the configuration with every default filled in.
func Defaults() Config {
	return Config{
		TunnelPort:        api.DefaultTunnelPort,
		ClusterPort:       DefaultClusterPort,
		Socket:            "/etc/netmanager/netmanager.sock",
		StateDir:          "/var/lib/netmanager",
		MTU:               1450,
		WorkerYield:       "os",
		WorkerSpin:        200 * time.Microsecond,
		XDPMode:           bpfprog.DefaultMode.String(),
		Offload:           "on",
		BPFDir:            "/sys/fs/bpf/oakwire",
		Quarantine:        60 * time.Second,
		LogLevel:          "info",
		ServiceMetricsMax: 500,
		Dataplane:         "xdp",
		ContainerIf:       "eth0",
		PlatformV4:        "10.16.0.0/12",
		PlatformV6:        "fc00::/7",
	}
}

// PinPath is where the kernel tier of node pins its objects ("" for none).
func (c *Config) PinPath(node string) string {
	if c.BPFDir == "" || node == "" {
		return ""
	}
	return filepath.Join(c.BPFDir, node)
}

// FlowsFile is where the data plane keeps its flows between a graceful
// stop and the next start.
func (c *Config) FlowsFile() string { return filepath.Join(c.StateDir, "flows.json") }

// StateFile is the path of the state file.
func (c *Config) StateFile() string { return filepath.Join(c.StateDir, "state.json") }

// bindFlags binds every key to a flag of the same name on fs, writing into c.
func (c *Config) bindFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "node id (required with --cluster)")
	fs.StringVar(&c.Uplink, "uplink", c.Uplink, "underlay interface")
	fs.StringVar(&c.NodeIP, "node-ip", c.NodeIP, "node's underlay IP (tunnel endpoint)")
	fs.IntVar(&c.TunnelPort, "tunnel-port", c.TunnelPort, "UDP port of the overlay tunnel")
	fs.StringVar(&c.Cluster, "cluster", c.Cluster, "cluster service manager (host:port or URL); empty: wait for POST /register")
	fs.StringVar(&c.PublicIP, "public-ip", c.PublicIP, "behind a NAT: the public address peers send tunnel traffic to (empty: node-ip)")
	fs.IntVar(&c.PublicPort, "public-port", c.PublicPort, "behind a NAT: the public UDP port forwarded to tunnel-port (0: tunnel-port)")
	fs.IntVar(&c.ClusterPort, "cluster-port", c.ClusterPort, "port of a cluster address given without one (POST /register with a bare host)")
	fs.StringVar(&c.Root, "root", c.Root, "root service manager (host:port or URL) for client-only containers; empty: refused")
	fs.StringVar(&c.ClusterID, "cluster-id", c.ClusterID, "this node's cluster id at root (with --root)")
	fs.StringVar(&c.Socket, "socket", c.Socket, "unix socket of the local API")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory of the state file")
	fs.IntVar(&c.Workers, "workers", c.Workers, "data-plane workers (0: half the CPUs, at least one)")
	fs.StringVar(&c.WorkerCPUs, "worker-cpus", c.WorkerCPUs, "pin worker i to CPU LIST[i % len], e.g. 0,1 (empty: unpinned)")
	fs.StringVar(&c.WorkerYield, "worker-yield", c.WorkerYield, "how spinning workers yield: os (sched_yield), go (runtime.Gosched) or none")
	fs.DurationVar(&c.WorkerSpin, "worker-spin", c.WorkerSpin, "how long an idle worker polls before it sleeps in poll(2)")
	fs.IntVar(&c.MTU, "mtu", c.MTU, "MTU of container interfaces")
	fs.StringVar(&c.XDPMode, "xdp-mode", c.XDPMode, "XDP attach mode: generic or native")
	fs.StringVar(&c.Offload, "offload", c.Offload, "kernel tier for decided flows: on or off")
	fs.StringVar(&c.BPFDir, "bpf-dir", c.BPFDir, "bpffs directory where the kernel tier pins its links and flows (per node id)")
	fs.IntVar(&c.FlowsPerPort, "flows-per-port", c.FlowsPerPort, "most service flows one container holds; at the bound its least recently used goes (0: an eighth of the flow table)")
	fs.DurationVar(&c.Quarantine, "quarantine", c.Quarantine, "how long a freed namespace IP stays unused (0: none)")
	fs.IntVar(&c.ServiceMetricsMax, "service-metrics-max", c.ServiceMetricsMax, "most (service, instance, direction) series of the oakwire_service_* metrics")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.BoolVar(&c.Insecure, "insecure", c.Insecure, "run without OAKWIRE_TOKEN")
	fs.StringVar(&c.Dataplane, "dataplane", c.Dataplane, "data plane: xdp or none (kernel routing only)")
	fs.StringVar(&c.ContainerIf, "container-if", c.ContainerIf, "interface name inside containers")
	fs.StringVar(&c.PlatformV4, "platform-v4", c.PlatformV4, "IPv4 platform range")
	fs.StringVar(&c.PlatformV6, "platform-v6", c.PlatformV6, "IPv6 platform range")
}

// LoadConfig builds the configuration from args (flags, without the program
// name): defaults, then the YAML file named by --config, then the flags
// given, then OAKWIRE_TOKEN from env. It does not validate.
func LoadConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	// First pass: find --config (and report bad flags once).
	pre := flag.NewFlagSet("netmanager", flag.ContinueOnError)
	pre.SetOutput(stderr)
	var file string
	pre.StringVar(&file, "config", "", "YAML configuration file")
	scratch := Defaults()
	scratch.bindFlags(pre)
	if err := pre.Parse(args); err != nil {
		return Config{}, err
	}
	if pre.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", pre.Arg(0))
	}
	cfg := Defaults()
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		if err := decodeYAML(b, &cfg); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", file, err)
		}
	}
	// Second pass: flags given on the command line overwrite the file.
	fs := flag.NewFlagSet("netmanager", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("config", "", "YAML configuration file")
	cfg.bindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	cfg.Token = getenv("OAKWIRE_TOKEN")
	cfg.NodeToken = getenv("OAKWIRE_NODE_TOKEN")
	cfg.OrchestratorToken = getenv("OAKWIRE_ORCHESTRATOR_TOKEN")
	return cfg, nil
}

// decodeYAML decodes b into c, rejecting unknown keys. An empty file is
// fine.
func decodeYAML(b []byte, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// Validate checks the configuration; the error names every bad key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
	}
	c.validateNode(bad)
	c.validateHost(bad)
	c.validateDataplane(bad)
	if len(errs) > 0 {
		return fmt.Errorf("config: %w", errors.Join(errs...))
	}
	return nil
}

// badKey reports one invalid key; Validate joins them.
type badKey func(key, format string, a ...any)

// validateNode checks who the node is and where its cluster and peers
// reach it.
func (c *Config) validateNode(bad badKey) {
	if c.NodeID == "" && c.Cluster != "" {
		bad("node-id", "required with cluster")
	}
	if c.NodeID != "" && !api.ValidID(c.NodeID) {
		bad("node-id", "%q: 1-128 characters of letters, digits and . _ - :", c.NodeID)
	}
	if c.Uplink == "" {
		bad("uplink", "required")
	} else if len(c.Uplink) > 15 || strings.ContainsAny(c.Uplink, "/ \t\"") {
		bad("uplink", "%q is not an interface name", c.Uplink)
	}
	if c.NodeIP == "" {
		bad("node-ip", "required")
	} else if a, err := netip.ParseAddr(c.NodeIP); err != nil || a.Zone() != "" || a.IsUnspecified() {
		bad("node-ip", "%q is not an IP address", c.NodeIP)
	}
	if c.Root != "" && c.ClusterID == "" {
		bad("cluster-id", "required with root")
	}
	if c.ClusterID != "" && !api.ValidID(c.ClusterID) {
		bad("cluster-id", "%q: 1-128 characters of letters, digits and . _ - :", c.ClusterID)
	}
	if c.TunnelPort < 1 || c.TunnelPort > 65535 {
		bad("tunnel-port", "%d not in 1-65535", c.TunnelPort)
	}
	if c.PublicIP != "" {
		a, err := netip.ParseAddr(c.PublicIP)
		if err != nil || a.Zone() != "" || a.IsUnspecified() || a.Is4In6() {
			bad("public-ip", "%q is not an IP address", c.PublicIP)
		} else if n := c.nodeAddr(); n.IsValid() && a.Is4() != n.Is4() {
			bad("public-ip", "%s is not of node-ip %s's family", a, n)
		}
	}
	if c.PublicPort < 0 || c.PublicPort > 65535 || c.PublicPort != 0 && c.PublicIP == "" {
		bad("public-port", "%d: want 1-65535 with public-ip (0: tunnel-port)", c.PublicPort)
	}
	if c.ClusterPort < 1 || c.ClusterPort > 65535 {
		bad("cluster-port", "%d not in 1-65535", c.ClusterPort)
	}
	if c.Cluster != "" {
		if _, err := clusterTarget(c.Cluster, c.ClusterPort); err != nil {
			bad("cluster", "%v", err)
		}
	}
}

// validateHost checks the paths, logging and credentials on the host.
func (c *Config) validateHost(bad badKey) {
	if c.Socket == "" || !filepath.IsAbs(c.Socket) {
		bad("socket", "%q must be an absolute path", c.Socket)
	} else if len(c.Socket) > 107 {
		bad("socket", "%q longer than 107 bytes", c.Socket)
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		bad("state-dir", "%q must be an absolute path", c.StateDir)
	}
	if c.BPFDir != "" && !filepath.IsAbs(c.BPFDir) {
		bad("bpf-dir", "%q must be an absolute path", c.BPFDir)
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		bad("log-level", "%v", err)
	}
	if c.ClusterToken() == "" && !c.Insecure {
		bad("insecure", "OAKWIRE_TOKEN is not set: set it, or pass --insecure to run without a token")
	}
}

// validateDataplane checks the data plane's keys: workers, XDP, the
// kernel tier and the addresses it gives containers.
func (c *Config) validateDataplane(bad badKey) {
	if c.Workers < 0 || c.Workers > 256 {
		bad("workers", "%d not in 0-256", c.Workers)
	}
	if _, err := ParseCPUList(c.WorkerCPUs); err != nil {
		bad("worker-cpus", "%v", err)
	}
	if c.WorkerYield != "os" && c.WorkerYield != "go" && c.WorkerYield != "none" {
		bad("worker-yield", "%q: want os, go or none", c.WorkerYield)
	}
	if c.WorkerSpin <= 0 || c.WorkerSpin > time.Second {
		bad("worker-spin", "%v not in (0, 1s]", c.WorkerSpin)
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		bad("mtu", "%d not in 1280-65535 (IPv6 needs 1280)", c.MTU)
	}
	if m, err := bpfprog.ParseMode(c.XDPMode); err != nil || m.String() != c.XDPMode {
		bad("xdp-mode", "%q: want %v or %v", c.XDPMode, bpfprog.ModeGeneric, bpfprog.ModeNative)
	}
	if c.Offload != "on" && c.Offload != "off" {
		bad("offload", "%q: want on or off", c.Offload)
	}
	if c.FlowsPerPort < 0 || c.FlowsPerPort > 1<<16 {
		bad("flows-per-port", "%d not in 0-65536 (0: an eighth of the flow table)", c.FlowsPerPort)
	}
	if c.Quarantine < 0 {
		bad("quarantine", "%v is negative", c.Quarantine)
	}
	if c.ServiceMetricsMax < 1 || c.ServiceMetricsMax > 100000 {
		bad("service-metrics-max", "%d not in 1-100000", c.ServiceMetricsMax)
	}
	if c.Dataplane != "xdp" && c.Dataplane != "none" {
		bad("dataplane", "%q: want xdp or none", c.Dataplane)
	}
	if c.ContainerIf == "" || len(c.ContainerIf) > 15 || strings.ContainsAny(c.ContainerIf, "/ \t") {
		bad("container-if", "%q is not an interface name", c.ContainerIf)
	}
	if p, err := netip.ParsePrefix(c.PlatformV4); err != nil || !p.Addr().Is4() || p.Masked() != p {
		bad("platform-v4", "%q: want a masked IPv4 prefix", c.PlatformV4)
	}
	if p, err := netip.ParsePrefix(c.PlatformV6); err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p.Masked() != p {
		bad("platform-v6", "%q: want a masked IPv6 prefix", c.PlatformV6)
	}
}

// ParseCPUList parses a comma-separated list of CPU numbers ("0,2");
// empty is nil (no pinning).
func ParseCPUList(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var cpus []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n > 4095 {
			return nil, fmt.Errorf("%q: want CPU numbers like 0,1", s)
		}
		cpus = append(cpus, n)
	}
	return cpus, nil
}

// ParseLogLevel maps debug|info|warn|error to a slog level.
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
}

// endpoint is the node's tunnel endpoint as it registers it.
func (c *Config) endpoint() Endpoint {
	ep := Endpoint{NodeIP: c.nodeAddr(), TunnelPort: c.TunnelPort}
	if a, err := netip.ParseAddr(c.PublicIP); err == nil {
		ep.PublicIP, ep.PublicPort = a, c.PublicPort
	}
	return ep
}

func (c *Config) nodeAddr() netip.Addr {
	a, _ := netip.ParseAddr(c.NodeIP)
	return a
}

func (c *Config) platforms() (netip.Prefix, netip.Prefix) {
	p4, _ := netip.ParsePrefix(c.PlatformV4)
	p6, _ := netip.ParsePrefix(c.PlatformV6)
	return p4, p6
}

// ClusterToken is the bearer token towards the cluster: the node role's,
// else OAKWIRE_TOKEN.
func (c *Config) ClusterToken() string {
	if c.NodeToken != "" {
		return c.NodeToken
	}
	return c.Token
}

// RootToken is the bearer token towards root (client-only containers are
// placed through its orchestrator API): the orchestrator role's, else
// OAKWIRE_TOKEN.
func (c *Config) RootToken() string {
	if c.OrchestratorToken != "" {
		return c.OrchestratorToken
	}
	return c.Token
}
