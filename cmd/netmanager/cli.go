package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/oakwire/oakwire/netmanager"
	"github.com/oakwire/oakwire/netmanager/localapi"
)

// The operator's view of a node: subcommands that ask the running
// daemon over its socket and print aligned text (or --json).
//
//	netmanager status   [--socket PATH | --config FILE] [--json]
//	netmanager flows    [--service NAME|IP] [--instance N|IP] [--json]
//	netmanager drops    [--interval 1s] [--all] [--json]
//	netmanager services [--json]

// cliCommands are the subcommands that talk to a running daemon.
var cliCommands = map[string]func(ctx context.Context, c *localapi.Client, o cliOpts, w io.Writer) error{
	"status":   cliStatus,
	"flows":    cliFlows,
	"drops":    cliDrops,
	"services": cliServices,
}

type cliOpts struct {
	json     bool
	service  string
	instance string
	interval time.Duration
	all      bool
}

// runCLI runs subcommand name with args.
func runCLI(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("netmanager "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o cliOpts
	socket := fs.String("socket", "", "the daemon's unix socket (default: the config file's, else "+localapi.DefaultSocket+")")
	config := fs.String("config", "", "the daemon's YAML configuration (for its socket)")
	timeout := fs.Duration("timeout", 10*time.Second, "bound of each call to the daemon")
	fs.BoolVar(&o.json, "json", false, "print JSON (for scripts)")
	switch name {
	case "flows":
		fs.StringVar(&o.service, "service", "", "only flows of this service (job name, or a service or instance IP)")
		fs.StringVar(&o.instance, "instance", "", "only flows to this instance (number or instance IP)")
	case "drops":
		fs.DurationVar(&o.interval, "interval", time.Second, "time between the two samples the rates come from")
		fs.BoolVar(&o.all, "all", false, "also the reasons that counted nothing")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", name, fs.Arg(0))
	}
	path := *socket
	if path == "" && *config != "" {
		cfg, err := netmanager.LoadConfig([]string{"--config", *config}, func(string) string { return "" }, stderr)
		if err != nil {
			return err
		}
		path = cfg.Socket
	}
	return cliCommands[name](ctx, localapi.New(path, *timeout), o, stdout)
}

func printJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

func cliStatus(ctx context.Context, c *localapi.Client, o cliOpts, w io.Writer) error {
	s, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(w, s)
	}
	return renderStatus(w, s)
}

// renderStatus is the human summary of /status.
func renderStatus(w io.Writer, s *localapi.Status) error {
	reg := "not registered"
	switch {
	case s.Registered && s.Confirmed:
		reg = "registered"
	case s.Registered:
		reg = "registered (cluster has not confirmed since the start)"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s\t%s with %s\n", cmp.Or(s.NodeID, "-"), reg, cmp.Or(s.Cluster, "no cluster"))
	if s.LastError != "" {
		fmt.Fprintf(tw, "last error\t%s\n", s.LastError)
	}
	fmt.Fprintf(tw, "underlay\t%s %s, tunnel port %d\n", s.Uplink, s.NodeIP, s.TunnelPort)
	if s.Subnet != "" {
		fmt.Fprintf(tw, "subnets\t%s %s, gateway %s %s on %s\n", s.Subnet, s.SubnetV6, s.Gateway, s.GatewayV6, s.GatewayDev)
	}
	dp := s.Dataplane
	fmt.Fprintf(tw, "data plane\t%s, %d worker(s), %d AF_XDP socket(s), MTU %d\n", dp.Mode, dp.Workers, dp.Sockets, s.MTU)
	fmt.Fprintf(tw, "tables\t%s\n", joinCounts(dp.Tables))
	c := dp.Counters
	fmt.Fprintf(tw, "packets\tworkers rx %d tx %d; dropped %d (netmanager drops)\n", c["rx"], c["tx"], sumDrops(c))
	fmt.Fprintf(tw, "containers\t%d attached, %d deploying, %d namespace IPs in quarantine\n", len(s.Containers), len(s.Deploying), s.Quarantine)
	fmt.Fprintf(tw, "build\t%s (%s), %s; up %s\n", s.Build.Version, short(s.Build.Commit), s.Build.GoVersion, s.Uptime)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Containers) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tNSIP\tNSIP6\tHOST IF\tCONTAINER\tPORTS")
	for _, x := range s.Containers {
		ctr := cmp.Or(short(x.ContainerID), x.Netns)
		if x.Client {
			ctr += " (client)"
		}
		var ports []string
		for _, m := range x.PortMappings {
			ports = append(ports, m.String())
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", x.Job, x.Instance, x.NSIP4, x.NSIP6, x.HostIf, ctr, cmp.Or(strings.Join(ports, ","), "-"))
	}
	return tw.Flush()
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func joinCounts(m map[string]int) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, fmt.Sprintf("%s %d", strings.ReplaceAll(k, "_", " "), m[k]))
	}
	return strings.Join(out, ", ")
}

func cliFlows(ctx context.Context, c *localapi.Client, o cliOpts, w io.Writer) error {
	fs, err := c.Flows(ctx, o.service, o.instance)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(w, fs)
	}
	return renderFlows(w, fs)
}

// renderFlows prints one line per flow: its 5-tuple as it arrives, the
// service, the instance its policy chose (number and instance IP), the
// tier executing it, the kernel tier's counts and the time since its last
// packet.
func renderFlows(w io.Writer, fs []localapi.Flow) error {
	slices.SortStableFunc(fs, func(a, b localapi.Flow) int {
		return cmp.Or(cmp.Compare(a.Job, b.Job), cmp.Compare(a.Src, b.Src), cmp.Compare(a.Dst, b.Dst))
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tSOURCE\tDESTINATION\tDIR\tSERVICE\tINSTANCE\tTIER\tPACKETS\tBYTES\tIDLE")
	for _, f := range fs {
		dir := "out"
		if f.Ingress {
			dir = "in"
		}
		inst := "-"
		if f.Instance != nil {
			inst = strconv.FormatUint(uint64(*f.Instance), 10)
			if f.InstanceIP != "" {
				inst += " " + f.InstanceIP
			}
		}
		tier := f.Tier
		if f.Pending {
			tier += " (pending)"
		}
		if f.Closing {
			tier += " closing"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", f.Proto, f.Src, f.Dst, dir, cmp.Or(f.Job, f.Service, "-"), inst, tier,
			f.Packets, f.Bytes, (time.Duration(f.IdleMS) * time.Millisecond).String())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d flow(s); packets and bytes are the kernel tier's (the AF_XDP workers do not count per flow)\n", len(fs))
	return err
}

// dropCounter says whether a data-plane counter counts dropped packets:
// the fast path's drop reasons and the kernel programs', sockets' and
// queues' losses.
func dropCounter(name string) bool {
	if strings.HasPrefix(name, "drop_") {
		return true
	}
	for _, s := range []string{"_spoofed", "_not_peer", "_to_tunnel", "_malformed", "_dropped", "_full", "_ring_empty", "_invalid", "_no_frame", "_failed"} {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

func sumDrops(c map[string]uint64) uint64 {
	var n uint64
	for k, v := range c {
		if strings.HasPrefix(k, "drop_") {
			n += v
		}
	}
	return n
}

// Drop is one row of `netmanager drops`.
type Drop struct {
	Reason string  `json:"reason"`
	Count  uint64  `json:"count"`
	Rate   float64 `json:"rate_per_s"`
}

func cliDrops(ctx context.Context, c *localapi.Client, o cliOpts, w io.Writer) error {
	s1, err := c.Status(ctx)
	if err != nil {
		return err
	}
	t1 := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.interval):
	}
	s2, err := c.Status(ctx)
	if err != nil {
		return err
	}
	ds := drops(s1.Dataplane.Counters, s2.Dataplane.Counters, time.Since(t1), o.all)
	if o.json {
		return printJSON(w, ds)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "REASON\tCOUNT\tRATE/s\t")
	for _, d := range ds {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t\n", d.Reason, d.Count, d.Rate)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(ds) == 0 {
		fmt.Fprintln(w, "no drops counted")
	}
	return nil
}

// drops are the drop counters of the second sample with their rate
// between the two, largest count first; without all only those that
// counted something.
func drops(before, after map[string]uint64, dt time.Duration, all bool) []Drop {
	var out []Drop
	for k, v := range after {
		if !dropCounter(k) || (v == 0 && !all) {
			continue
		}
		d := Drop{Reason: strings.TrimPrefix(k, "drop_"), Count: v}
		if p, ok := before[k]; ok && v >= p && dt > 0 {
			d.Rate = float64(v-p) / dt.Seconds()
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Drop) int { return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Reason, b.Reason)) })
	return out
}

func cliServices(ctx context.Context, c *localapi.Client, o cliOpts, w io.Writer) error {
	s, err := c.Services(ctx)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(w, s)
	}
	return renderServices(w, s)
}

// renderServices prints the table the node holds: per service its
// version and origin, then a line per service IP and per instance.
func renderServices(w io.Writer, s *localapi.Services) error {
	fmt.Fprintf(w, "%d service(s), %d peer(s); watch at version %d (epoch %s)\n", len(s.Services), s.Peers, s.Version, cmp.Or(short(s.Epoch), "-"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVERSION\tSOURCE\tIDLE\tPOLICY/INSTANCE\tIPV4\tIPV6\tNODE\tNSIP")
	for _, e := range s.Services {
		idle := (time.Duration(e.IdleMS) * time.Millisecond).Round(time.Second).String()
		if e.Local {
			idle = "local"
		}
		head := fmt.Sprintf("%s\t%d\t%s\t%s", e.Job, e.Version, e.Source, idle)
		for _, ip := range e.ServiceIPs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\t\n", head, ip.Policy, cmp.Or(ip.V4, "-"), cmp.Or(ip.V6, "-"))
			head = "\t\t\t"
		}
		for _, in := range e.Instances {
			node := in.Node
			if node == "" {
				node = "(not placed)"
			} else if h, _, err := net.SplitHostPort(node); err == nil && in.Cluster != "" {
				node = h + " (" + in.Cluster + ")"
			}
			fmt.Fprintf(tw, "%s\t#%d\t%s\t%s\t%s\t%s\n", head, in.Number, cmp.Or(in.IP, "-"), cmp.Or(in.IPv6, "-"), node, cmp.Or(in.NSIP, "-"))
			head = "\t\t\t"
		}
		if len(e.ServiceIPs)+len(e.Instances) == 0 {
			fmt.Fprintf(tw, "%s\t\t\t\t\t\n", head)
		}
	}
	return tw.Flush()
}

// isCLI says whether args name an operator subcommand.
func isCLI(args []string) bool {
	if len(args) == 0 {
		return false
	}
	_, ok := cliCommands[args[0]]
	return ok
}
