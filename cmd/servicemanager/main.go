// Command servicemanager runs Oakwire's control services:
//
//	servicemanager root --listen ADDR --redis URL [--redis-cluster ADDR,ADDR,...] [--redis-prefix P]
//	servicemanager cluster --listen ADDR --redis URL --root URL --cluster-id ID [--redis-prefix P]
//
// Both also take --config FILE (YAML with the same key names, plus the
// tuning keys documented in configs/root.yaml and configs/cluster.yaml;
// flags win over the file) and --insecure (run without OAKWIRE_TOKEN).
// `servicemanager --version` (or `version`) prints which build it is.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/oakwire/oakwire/control"
	"github.com/oakwire/oakwire/internal/version"
	"github.com/oakwire/oakwire/ipam"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
	"gopkg.in/yaml.v3"
)

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Print(version.Get().Text("servicemanager"))
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "servicemanager:", err)
		os.Exit(2)
	}
}

const usage = `usage:
  servicemanager --version
  servicemanager root --listen ADDR --redis URL [--redis-cluster ADDR,ADDR,...] [--redis-prefix P] [--config FILE] [--insecure]
  servicemanager cluster --listen ADDR --redis URL --root URL --cluster-id ID [--redis-prefix P] [--config FILE] [--insecure]`

// Config is the YAML file; keys are the flags' names.
type Config struct {
	Listen       string   `yaml:"listen"`
	Redis        string   `yaml:"redis"`
	RedisCluster []string `yaml:"redis-cluster"`
	RedisPrefix  string   `yaml:"redis-prefix"`
	RedisTimeout Duration `yaml:"redis-timeout"`
	Insecure     bool     `yaml:"insecure"`
	MetricsOpen  bool     `yaml:"metrics-open"`
	LogLevel     string   `yaml:"log-level"`

	// root
	Policies         []string `yaml:"policies"`
	Quarantine       Duration `yaml:"quarantine"`
	WorkerV4First    string   `yaml:"worker-v4-first"`
	WorkerV6First    string   `yaml:"worker-v6-first"`
	WorkerCount      int      `yaml:"worker-count"`
	ServiceV4        string   `yaml:"service-v4"`
	ServiceV6Base    string   `yaml:"service-v6-base"`
	NotifyTimeout    Duration `yaml:"notify-timeout"`
	NotifyBackoff    Duration `yaml:"notify-min-backoff"`
	NotifyMaxBack    Duration `yaml:"notify-max-backoff"`
	NotifyQueue      int      `yaml:"notify-queue"`
	UnreachableAfter int      `yaml:"notify-unreachable-after"`

	// cluster
	Root           string   `yaml:"root"`
	ClusterID      string   `yaml:"cluster-id"`
	Advertise      string   `yaml:"advertise"`
	WatchRetention int      `yaml:"watch-retention"`
	WatchPoll      Duration `yaml:"watch-poll"`
	MaxWatch       Duration `yaml:"max-watch"`
	Refresh        Duration `yaml:"refresh"`
	PeerSync       Duration `yaml:"peer-sync"`
	RootTimeout    Duration `yaml:"root-timeout"`
}

// Duration reads "500ms", "60s" … from YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q: %w", n.Line, n.Value, err)
	}
	*d = Duration(v)
	return nil
}

// run parses args and serves until ctx ends. ready, when set, receives the
// listening address once serving.
func run(ctx context.Context, args []string, logOut io.Writer, ready chan<- string) error {
	if len(args) == 0 || (args[0] != "root" && args[0] != "cluster") {
		return errors.New(usage)
	}
	role := args[0]
	cfg, err := parseConfig(role, args[1:], logOut)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if cfg.LogLevel != "" {
		if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
			return fmt.Errorf("log-level: %w", err)
		}
	}
	log := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level})).With("role", role)

	token, roleTokens, err := authTokens(cfg, log)
	if err != nil {
		return err
	}
	if cfg.Listen == "" {
		return errors.New("--listen: missing")
	}
	if cfg.Redis == "" && len(cfg.RedisCluster) == 0 {
		return errors.New("--redis: missing")
	}
	rdb, err := newRedis(cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	var handler fasthttp.RequestHandler
	var closer func() error
	if role == "root" {
		handler, closer, err = newRootRole(cfg, rdb, token, roleTokens, log)
	} else {
		handler, closer, err = newClusterRole(cfg, rdb, token, roleTokens, log)
	}
	if err != nil {
		return err
	}
	return serve(ctx, cfg, handler, closer, log, ready)
}

// parseConfig reads the configuration file, if any, and lets the flags
// given override it.
func parseConfig(role string, args []string, logOut io.Writer) (Config, error) {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	fs.SetOutput(logOut)
	var flags Config
	var redisCluster, configFile string
	fs.StringVar(&configFile, "config", "", "YAML configuration `file` (flags win)")
	fs.StringVar(&flags.Listen, "listen", "", "listen `address` host:port")
	fs.StringVar(&flags.Redis, "redis", "", "Redis `URL` (redis://host:port/db)")
	fs.StringVar(&flags.RedisPrefix, "redis-prefix", "", "Redis key `prefix` (default oakwire:)")
	fs.BoolVar(&flags.Insecure, "insecure", false, "run without OAKWIRE_TOKEN (no authentication)")
	fs.BoolVar(&flags.MetricsOpen, "metrics-open", false, "serve /metrics without a token")
	if role == "root" {
		fs.StringVar(&redisCluster, "redis-cluster", "", "Redis Cluster seed `addresses` ADDR,ADDR,... (instead of --redis)")
	} else {
		fs.StringVar(&flags.Root, "root", "", "root service manager `URL`")
		fs.StringVar(&flags.ClusterID, "cluster-id", "", "this cluster's `id`")
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments %q\n%s", fs.Args(), usage)
	}
	var cfg Config
	if configFile != "" {
		b, err := os.ReadFile(configFile)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return Config{}, fmt.Errorf("config %s: %w", configFile, err)
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "listen":
			cfg.Listen = flags.Listen
		case "redis":
			cfg.Redis = flags.Redis
		case "redis-prefix":
			cfg.RedisPrefix = flags.RedisPrefix
		case "insecure":
			cfg.Insecure = flags.Insecure
		case "metrics-open":
			cfg.MetricsOpen = flags.MetricsOpen
		case "redis-cluster":
			cfg.RedisCluster = splitList(redisCluster)
		case "root":
			cfg.Root = flags.Root
		case "cluster-id":
			cfg.ClusterID = flags.ClusterID
		}
	})
	return cfg, nil
}

// authTokens reads the tokens from the environment: one for every role
// (OAKWIRE_TOKEN) or one per role. Neither is an error unless insecure.
func authTokens(cfg Config, log *slog.Logger) (string, control.Tokens, error) {
	token := os.Getenv("OAKWIRE_TOKEN")
	roleTokens := control.Tokens{
		Orchestrator: os.Getenv("OAKWIRE_ORCHESTRATOR_TOKEN"),
		Cluster:      os.Getenv("OAKWIRE_CLUSTER_TOKEN"),
		Node:         os.Getenv("OAKWIRE_NODE_TOKEN"),
	}
	if token == "" && roleTokens.Off() {
		if !cfg.Insecure {
			return "", control.Tokens{}, errors.New("OAKWIRE_TOKEN is not set: set it (or OAKWIRE_ORCHESTRATOR_TOKEN, OAKWIRE_CLUSTER_TOKEN and OAKWIRE_NODE_TOKEN), or pass --insecure to run without authentication")
		}
		log.Warn("running without authentication (--insecure, OAKWIRE_TOKEN unset): every /api/ request is accepted")
	}
	return token, roleTokens, nil
}

// newRootRole builds root's IPAM and handler.
func newRootRole(cfg Config, rdb redis.UniversalClient, token string, roleTokens control.Tokens, log *slog.Logger) (fasthttp.RequestHandler, func() error, error) {
	plan, err := ipamConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	prefix := orDefault(cfg.RedisPrefix, control.DefaultPrefix)
	alloc, err := ipam.NewRedis(rdb, plan, prefix)
	if err != nil {
		return nil, nil, fmt.Errorf("ipam: %w", err)
	}
	r, err := control.NewRoot(control.RootConfig{
		Prefix: prefix, Token: token, RoleTokens: roleTokens, MetricsOpen: cfg.MetricsOpen, Policies: cfg.Policies, IPAM: plan, Log: log,
		Timeout: redisBudget(cfg.RedisTimeout),
		Notify: control.NotifyConfig{Timeout: time.Duration(cfg.NotifyTimeout), MinBackoff: time.Duration(cfg.NotifyBackoff),
			MaxBackoff: time.Duration(cfg.NotifyMaxBack), QueueLen: cfg.NotifyQueue, UnreachableAfter: cfg.UnreachableAfter},
	}, rdb, alloc)
	if err != nil {
		return nil, nil, err
	}
	return r.Handler(), r.Close, nil
}

// newClusterRole builds a cluster service manager and starts its loops.
func newClusterRole(cfg Config, rdb redis.UniversalClient, token string, roleTokens control.Tokens, log *slog.Logger) (fasthttp.RequestHandler, func() error, error) {
	if cfg.Root == "" {
		return nil, nil, errors.New("--root: missing")
	}
	adv := cfg.Advertise
	if adv == "" {
		adv = advertiseFor(cfg.Listen, cfg.Root)
	}
	c, err := control.NewCluster(control.ClusterConfig{
		Prefix: cfg.RedisPrefix, Token: token, RoleTokens: roleTokens, MetricsOpen: cfg.MetricsOpen, ClusterID: cfg.ClusterID, RootURL: cfg.Root, Advertise: adv,
		WatchRetention: cfg.WatchRetention, WatchPoll: time.Duration(cfg.WatchPoll), MaxWatch: time.Duration(cfg.MaxWatch),
		Refresh: time.Duration(cfg.Refresh), PeerSync: time.Duration(cfg.PeerSync), Timeout: redisBudget(cfg.RedisTimeout), RootTimeout: time.Duration(cfg.RootTimeout),
		Log: log,
	}, rdb)
	if err != nil {
		return nil, nil, err
	}
	c.Start()
	return c.Handler(), c.Close, nil
}

// serve listens and serves until ctx ends or serving fails, then closes
// the role and shuts the server down.
func serve(ctx context.Context, cfg Config, handler fasthttp.RequestHandler, closer func() error, log *slog.Logger, ready chan<- string) error {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		_ = closer()
		return fmt.Errorf("listen: %w", err)
	}
	srv := control.NewServer(handler, log)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("serving", "listen", ln.Addr().String(), "redis", cfg.Redis, "redis-cluster", cfg.RedisCluster)
	if ready != nil {
		ready <- ln.Addr().String()
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-errc:
		_ = closer()
		return fmt.Errorf("serve: %w", err)
	}
	// Close first: it wakes long-polling watches so shutdown does not wait
	// for them.
	cerr := closer()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return errors.Join(cerr, srv.ShutdownWithContext(sctx))
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// newRedis returns a standalone client for --redis, or a cluster client
// for --redis-cluster (credentials from --redis's URL if given). Timeouts
// are short so a dead Redis becomes a 503 within a second.
func newRedis(cfg Config) (redis.UniversalClient, error) {
	to := time.Duration(cfg.RedisTimeout)
	if to <= 0 {
		to = 300 * time.Millisecond
	}
	var base *redis.Options
	if cfg.Redis != "" {
		o, err := redis.ParseURL(cfg.Redis)
		if err != nil {
			return nil, fmt.Errorf("--redis: %w", err)
		}
		base = o
	} else {
		base = &redis.Options{}
	}
	if len(cfg.RedisCluster) > 0 {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: cfg.RedisCluster, Username: base.Username, Password: base.Password, TLSConfig: base.TLSConfig,
			DialTimeout: to, ReadTimeout: to, WriteTimeout: to, PoolTimeout: to, MaxRetries: 1,
			DialerRetries: 1, DialerRetryTimeout: 20 * time.Millisecond, PoolSize: 256,
		}), nil
	}
	base.DialTimeout, base.ReadTimeout, base.WriteTimeout, base.PoolTimeout = to, to, to, to
	base.MaxRetries = 1
	base.DialerRetries, base.DialerRetryTimeout = 1, 20*time.Millisecond
	base.PoolSize = 256
	return redis.NewClient(base), nil
}

func ipamConfig(cfg Config) (ipam.Config, error) {
	var c ipam.Config
	var err error
	parse := func(name, s string) netip.Prefix {
		if s == "" || err != nil {
			return netip.Prefix{}
		}
		p, e := netip.ParsePrefix(s)
		if e != nil {
			err = fmt.Errorf("%s: %w", name, e)
		}
		return p
	}
	c.WorkerV4First = parse("worker-v4-first", cfg.WorkerV4First)
	c.WorkerV6First = parse("worker-v6-first", cfg.WorkerV6First)
	c.ServiceV4 = parse("service-v4", cfg.ServiceV4)
	c.ServiceV6Base = parse("service-v6-base", cfg.ServiceV6Base)
	c.WorkerCount = cfg.WorkerCount
	c.Quarantine = time.Duration(cfg.Quarantine)
	if err != nil {
		return c, err
	}
	return c.WithDefaults(), c.Validate()
}

// advertiseFor is the address root should use to reach this cluster: the
// listen address, or, when it listens on every interface, the local
// address the kernel picks towards root.
func advertiseFor(listen, root string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip, err := netip.ParseAddr(host); host != "" && (err != nil || !ip.IsUnspecified()) {
		return listen
	}
	rh := root
	if i := strings.Index(rh, "://"); i >= 0 {
		rh = rh[i+3:]
	}
	rh, _, _ = strings.Cut(rh, "/")
	if _, _, err := net.SplitHostPort(rh); err != nil {
		rh = net.JoinHostPort(rh, "80")
	}
	conn, err := net.Dial("udp", rh) // no packet is sent
	if err != nil {
		return net.JoinHostPort("127.0.0.1", port)
	}
	defer conn.Close()
	la := conn.LocalAddr().(*net.UDPAddr)
	return net.JoinHostPort(la.IP.String(), port)
}

// redisBudget is a request's Redis budget: twice the per-command timeout.
// A hung Redis costs a command up to two timeouts (go-redis retries one
// read timeout), so a request then answers 503 after its budget plus at
// most one command timeout: 900 ms with the default 300 ms, inside SPEC
// §5's second (TestRedisDownAndBack measures it).
func redisBudget(redisTimeout Duration) time.Duration {
	return 2 * time.Duration(redisTimeout)
}
