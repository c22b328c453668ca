package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/oakwire/oakwire/api"
)

// RunDemo is `make demo` (SPEC §8): it starts a deployment of three nodes
// in two clusters (a and b in cluster1, c in cluster2) with the AF_XDP data
// plane, deploys a service with instances on nodes b and c and a client on
// a, shows what it set up and what the service IPs do within and across
// clusters, measures latency and a short packet rate, and removes
// everything.
func RunDemo(ctx context.Context, w io.Writer) error {
	return RunDemoWith(ctx, w, Options{})
}

// RunDemoWith is RunDemo with options (Options.Nodes is at least 3; without
// ClusterNodes the last node is a second cluster of its own). With
// Dataplane "none" it shows the setup only: service IPs need the data
// plane.
func RunDemoWith(ctx context.Context, w io.Writer, o Options) (err error) {
	o.Nodes = max(o.Nodes, 3)
	if len(o.ClusterNodes) == 0 {
		o.ClusterNodes = []int{o.Nodes - 1, 1}
	}
	if o.Dataplane == "" {
		o.Dataplane = "xdp"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	// Ctrl-C (or SIGTERM, SIGHUP) cancels ctx: every step is bounded by it,
	// so the demo returns through the same cleanup as on success.
	ctx, stopSignals := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stopSignals()
	p := &printer{w: w}
	p.title("Oakwire demo: emulated edge clusters in network namespaces on this machine")
	p.line("Starting redis-server, servicemanager root and one servicemanager cluster per cluster on a")
	p.line("control node, and one netmanager (--dataplane %s) per worker node, each a real process in", o.Dataplane)
	p.line("its node's namespace.")
	start := time.Now()
	d, err := Up(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("demo: interrupted: %w", err)
		}
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		if ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			err = errors.Join(err, errors.New("demo: interrupted"))
		}
		p.line("")
		p.line("Cleaning up: processes stopped, %d namespaces removed.", len(d.Namespaces()))
		err = errors.Join(err, d.Close())
	}()
	p.line("Up in %v; namespaces %s-* (see `ip netns list` while it runs).", time.Since(start).Round(10*time.Millisecond), d.Bed.Prefix())

	run := &demoRun{d: d, p: p, w: w}
	run.nodes()
	if err := run.deployWeb(ctx); err != nil {
		return err
	}
	a, client := run.a, run.client
	p.section("   Peers: who may send each node tunnel traffic (its cluster's GET /api/node/peers; root links")
	p.line("   clusters that share a service: one interested in it, the other hosting an instance)")
	peersOK := d.showPeers(ctx, p)

	if o.Dataplane == "none" {
		if !peersOK {
			return errors.New("demo: a node's peer set does not list every node of the other cluster")
		}
		p.section("4. Traffic")
		p.line("   skipped: --dataplane none routes only inside a node (no service IPs, no overlay).")
		if err := d.Ping(client, a.Subnet.Addr().Next(), 3, time.Second); err != nil {
			p.line("   ping from client/0 to its gateway %v: %v", a.Subnet.Addr().Next(), err)
			return err
		}
		p.line("   ping from client/0 to its node's gateway %v: ok", a.Subnet.Addr().Next())
		return nil
	}
	if err := run.warmUp(ctx); err != nil {
		return err
	}
	if !peersOK {
		run.fail("a node's peer set does not list every node of the other cluster")
	}

	for _, step := range []func(context.Context) error{run.roundRobin, run.closest, run.instanceIPs, run.latencyAndRate} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	if len(run.problems) > 0 {
		return fmt.Errorf("demo: %d problems: %s", len(run.problems), strings.Join(run.problems, "; "))
	}
	p.section("All checks passed.")
	return nil
}

// demoRun is one RunDemoWith after Up: the deployment, where it prints,
// what it deployed and the problems it found so far. Its methods are the
// demo's numbered sections.
type demoRun struct {
	d      *Deployment
	p      *printer
	w      io.Writer
	web    *Service
	a      *Node // the client's node
	insts  []*Instance
	client *Instance
	// problems are the failed checks, printed as they happen and
	// returned together at the end.
	problems []string
}

// fail records a failed check and prints it.
func (run *demoRun) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	run.problems = append(run.problems, msg)
	run.p.line("   PROBLEM: %s", msg)
}

// nodes prints section 1: the nodes, their clusters and the control node.
func (run *demoRun) nodes() {
	d, p := run.d, run.p
	p.section("1. Nodes (underlay %v, tunnel UDP port %d)", d.Ctl.Prefix, api.DefaultTunnelPort)
	tw := p.table()
	fmt.Fprintln(tw, "   node\tcluster\tunderlay IP\tcontainer subnets (v4, v6)\truns")
	for _, n := range d.Nodes {
		fmt.Fprintf(tw, "   %s\t%s\t%v\t%v, %v\tnetmanager\n", n.Name, n.Cluster.ID, n.IP(), n.Subnet, n.Subnet6)
	}
	ctl := []string{fmt.Sprintf("redis :%d, root :%d", redisPort, RootPort)}
	for _, cl := range d.Clusters {
		ctl = append(ctl, fmt.Sprintf("%s :%d", cl.ID, cl.port))
	}
	fmt.Fprintf(tw, "   ctl\t-\t%v\t-\t%s\n", d.Ctl.IP, strings.Join(ctl, ", "))
	tw.Flush()
	p.line("   Each cluster is its own servicemanager process with its own Redis key prefix (oakwire-<id>:).")
	p.line("   Nodes registered as Oakestra's node engine registers them: POST /register {client_id, cluster_address: %q}", d.Ctl.IP.String())
	p.line("   on each netmanager's socket, the bare host; the port is netmanager's --cluster-port (each node's cluster's).")
}

// deployWeb deploys the service web with instances on nodes b and c and a
// client on a, and prints sections 2 and 3.
func (run *demoRun) deployWeb(ctx context.Context) error {
	d, p := run.d, run.p
	web, err := d.DeployService(ctx, "web", "demo.ns.web.default")
	if err != nil {
		return err
	}
	p.section("2. Service %s (root POST /api/net/service/deploy): one IP pair per balancing policy", web.Job)
	tw := p.table()
	fmt.Fprintln(tw, "   policy\tservice IPv4\tservice IPv6")
	pols := make([]string, 0, len(web.IPs))
	for k := range web.IPs {
		pols = append(pols, k)
	}
	slices.Sort(pols)
	for _, k := range pols {
		fmt.Fprintf(tw, "   %s\t%v\t%v\n", k, web.IPs[k].V4, web.IPs[k].V6)
	}
	tw.Flush()

	a, b, c := d.Nodes[0], d.Nodes[1], d.Nodes[2]
	var insts []*Instance
	for i, n := range []*Node{b, c} {
		in, err := d.DeployInstance(ctx, "web", i, n)
		if err != nil {
			return err
		}
		if err := d.StartEcho(ctx, in); err != nil {
			return err
		}
		insts = append(insts, in)
	}
	client, err := d.AddClient(ctx, a)
	if err != nil {
		return err
	}
	p.section("3. Containers (root allocates instance IPs; the node's netmanager attaches the namespace)")
	tw = p.table()
	fmt.Fprintln(tw, "   instance\tnode\tinstance IP (v4, v6)\tnamespace IP (v4, v6)\truns")
	for _, in := range append(slices.Clone(insts), client) {
		what := "owload udpecho :7000, tcpecho :7001"
		if in == client {
			what = "the client"
		}
		fmt.Fprintf(tw, "   %s\t%s (%s)\t%v, %v\t%v, %v\t%s\n", in.Name(), in.Node.Name, in.Node.Cluster.ID,
			in.IP.V4, in.IP.V6, in.NSIP.V4, in.NSIP.V6, what)
	}
	tw.Flush()
	p.line("   Applications use service and instance IPs; namespace IPs change when an instance moves.")
	run.web, run.a, run.insts, run.client = web, a, insts, client
	return nil
}

// warmUp waits until the service IPs answer; if they do not, the data plane
// is not working and the demo stops with the process logs.
func (run *demoRun) warmUp(ctx context.Context) error {
	d, p, w, web, client, fail := run.d, run.p, run.w, run.web, run.client, run.fail
	rr, closest := web.RR(), web.Closest()
	for _, ip := range []netip.Addr{rr.V4, rr.V6, closest.V4, closest.V6} {
		if err := d.warm(ctx, client, ip); err != nil {
			fail("%v", err)
		}
	}
	if len(run.problems) > 0 {
		p.line("   The service IPs do not answer: the data plane is not working; stopping here.")
		p.line("   Process logs (last lines):")
		d.DumpLogs(w, 8)
		return fmt.Errorf("demo: %s", strings.Join(run.problems, "; "))
	}
	return nil
}

// roundRobin is section 4: flows to the RR IP split over both instances and
// stick to one.
func (run *demoRun) roundRobin(ctx context.Context) error {
	d, p, web, a, insts, client, fail := run.d, run.p, run.web, run.a, run.insts, run.client, run.fail
	rr := web.RR()
	p.section("4. Round robin: 20 UDP + 20 TCP flows of 3 requests from client/0 on a to the RR IP,")
	p.line("   over %s in %s and %s in %s", insts[0].Tag(), insts[0].Node.Cluster.ID, insts[1].Tag(), insts[1].Node.Cluster.ID)
	for _, ip := range []netip.Addr{rr.V4, rr.V6} {
		for _, proto := range []string{"udp", "tcp"} {
			r, err := d.Ask(ctx, client, proto, echoAddr(ip, proto), 20, 3, time.Second)
			if err != nil {
				return err
			}
			sticky := "every flow stuck to one instance"
			if r.Answered == 0 {
				sticky = "no answers"
			} else if m := r.Sticky(); m != nil {
				sticky = fmt.Sprintf("flows %v switched instance", m)
				fail("%s to %v: %s", proto, ip, sticky)
			}
			flows := r.FlowsByTag()
			p.line("   %s %-22s flows per instance: %s; %d/%d answered; %s", proto, ip, fmtCounts(flows), r.Answered, r.Sent, sticky)
			perCluster := map[string]int{}
			for _, in := range insts {
				perCluster[in.Node.Cluster.ID] += flows[in.Tag()]
			}
			p.line("   %s %-22s flows per cluster:  %s", proto, "", fmtCounts(perCluster))
			// Round robin per new flow: 20 flows over two instances is 10
			// each; a quarter each leaves room for flows the warm-up began.
			for _, in := range insts {
				if flows[in.Tag()] < 20/4 {
					fail("%s to %v: %s served %d of 20 flows; round robin should split them evenly", proto, ip, in.Tag(), flows[in.Tag()])
				}
			}
			if r.Answered != r.Sent {
				fail("%s to %v: %d of %d unanswered (%s)", proto, ip, r.Sent-r.Answered, r.Sent, r.FirstError())
			}
		}
	}
	if r, err := d.Ask(ctx, client, "udp", echoAddr(rr.V4, "udp"), 1, 1, time.Second); err == nil && r.Answered == 1 {
		p.line("   the servers saw source %s (client/0's instance IP %v); replies came from %s (the RR IP)",
			r.Answers[0].Peer, client.IP.V4, r.Answers[0].From)
	}

	p.line("   Node a's view, `netmanager flows --service %s` (its local API; first lines):", web.Job)
	if err := d.showFlows(ctx, p, a, web.Job, insts); err != nil {
		fail("%v", err)
	}
	return nil
}

// closest is section 5: Closest picks the instance on the client's node once
// there is one.
func (run *demoRun) closest(ctx context.Context) error {
	d, p, a, client, fail := run.d, run.p, run.a, run.client, run.fail
	closest := run.web.Closest()
	p.section("5. Closest: the instance nearest the client's node")
	for _, ip := range []netip.Addr{closest.V4, closest.V6} {
		r, err := d.Ask(ctx, client, "udp", echoAddr(ip, "udp"), 6, 1, time.Second)
		if err != nil {
			return err
		}
		p.line("   no instance on a: 6 flows to %v answered by %s", ip, fmtCounts(r.ByTag()))
	}
	local, err := d.DeployInstance(ctx, "web", 2, a)
	if err != nil {
		return err
	}
	if err := d.StartEcho(ctx, local); err != nil {
		return err
	}
	for _, ip := range []netip.Addr{closest.V4, closest.V6} {
		var r *AskResult
		deadline := time.Now().Add(3 * time.Second)
		for {
			if r, err = d.Ask(ctx, client, "udp", echoAddr(ip, "udp"), 6, 1, 300*time.Millisecond); err != nil {
				return err
			}
			if r.ByTag()[local.Tag()] == r.Sent || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		p.line("   web/2 deployed on a: 6 flows to %v answered by %s", ip, fmtCounts(r.ByTag()))
		if r.ByTag()[local.Tag()] != r.Sent {
			fail("Closest %v did not pick the local instance %s", ip, local.Tag())
		}
	}
	if err := d.UndeployInstance(ctx, "web", 2); err != nil {
		return err
	}
	p.line("   web/2 undeployed again.")
	return nil
}

// instanceIPs is section 6: each instance IP reaches its instance only.
func (run *demoRun) instanceIPs(ctx context.Context) error {
	d, p, insts, client, fail := run.d, run.p, run.insts, run.client, run.fail
	p.section("6. Instance IPs reach exactly their instance")
	for _, in := range insts {
		for _, ip := range []netip.Addr{in.IP.V4, in.IP.V6} {
			if err := d.warm(ctx, client, ip); err != nil {
				fail("%v", err)
				continue
			}
			r, err := d.Ask(ctx, client, "tcp", echoAddr(ip, "tcp"), 3, 2, time.Second)
			if err != nil {
				return err
			}
			pingRes := "ping ok"
			if err := d.Ping(client, ip, 3, time.Second); err != nil {
				pingRes = "ping FAILED"
				fail("ping %v: %v", ip, err)
			}
			p.line("   %-22s → %s (tcp %d/%d answered; %s)", ip, fmtCounts(r.ByTag()), r.Answered, r.Sent, pingRes)
			if r.ByTag()[in.Tag()] != r.Sent {
				fail("instance IP %v of %s answered by %v", ip, in.Tag(), r.ByTag())
			}
		}
	}
	return nil
}

// latencyAndRate is sections 7 and 8: request/response latency and a short
// packet rate.
func (run *demoRun) latencyAndRate(ctx context.Context) error {
	d, p, insts, client, fail := run.d, run.p, run.insts, run.client, run.fail
	p.section("7. Latency: 200 UDP request/responses, one flow, client/0 on a → web/0's instance IP on b (%s)", insts[0].Node.Cluster.ID)
	r, err := d.Ask(ctx, client, "udp", echoAddr(insts[0].IP.V4, "udp"), 1, 200, time.Second)
	if err != nil {
		return err
	}
	p.line("   p50 %d µs, p99 %d µs (%d/%d answered; includes both owload processes, unpinned)", r.P50us, r.P99us, r.Answered, r.Sent)

	p.section("8. Packet rate: 2 s of 64-byte UDP from client/0 on a → web/1's instance IP on c (%s, one flow)", insts[1].Node.Cluster.ID)
	f, s, err := d.Rate(ctx, client, insts[1], 2*time.Second)
	if err != nil {
		fail("packet rate: %v", err)
	} else {
		loss := 0.0
		if f.Sent > 0 {
			loss = 100 * (float64(f.Sent) - float64(s.Received)) / float64(f.Sent)
		}
		p.line("   sent %d (%.0f kpps), delivered %d (%.0f kpps), %.1f %% lost — a rough number: sender, sink",
			f.Sent, float64(f.Sent)/f.Seconds/1e3, s.Received, float64(s.Received)/f.Seconds/1e3, loss)
		p.line("   and data-plane workers share this machine's CPUs; `make bench` measures properly.")
	}
	return nil
}

// showPeers prints each node's peer set as its cluster gives it, waiting
// (up to 2 s) until every node lists all the others: here every cluster
// shares the service with every other. It reports whether they did.
func (d *Deployment) showPeers(ctx context.Context, p *printer) bool {
	ok := true
	tw := p.table()
	for _, n := range d.Nodes {
		var names []string
		start := time.Now()
		for {
			var pr struct {
				Peers []struct {
					ClusterID string `json:"cluster_id"`
					NodeID    string `json:"node_id"`
				} `json:"peers"`
			}
			names = names[:0]
			if err := d.ClusterCallOn(ctx, n.Cluster, "GET", "/api/node/peers?node_id="+n.Name, nil, &pr); err == nil {
				for _, x := range pr.Peers {
					names = append(names, x.NodeID+" ("+x.ClusterID+")")
				}
			}
			// The data plane's count, where it has one, follows through
			// the node's watch.
			dp, inDP := "(no data plane)", len(d.Nodes)-1
			if st, err := d.Status(ctx, n); err == nil {
				if k, ok := st.Dataplane.Tables["peers"]; ok {
					dp, inDP = "(data plane: "+strconv.Itoa(k)+" peers)", k
				}
			}
			done := len(names) == len(d.Nodes)-1 && inDP == len(names)
			if done || time.Since(start) > 2*time.Second || ctx.Err() != nil {
				ok = ok && done
				fmt.Fprintf(tw, "   %s (%s)\taccepts tunnel traffic from\t%s\t%s\n", n.Name, n.Cluster.ID, strings.Join(names, ", "), dp)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	tw.Flush()
	return ok
}

// warm sends single UDP requests to ip until one is answered (up to 5 s):
// the first packets to a service IP start its resolution.
func (d *Deployment) warm(ctx context.Context, from *Instance, ip netip.Addr) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := d.Ask(ctx, from, "udp", echoAddr(ip, "udp"), 1, 1, 250*time.Millisecond)
		if err != nil {
			return err
		}
		if r.Answered == 1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%v: no answer within 5 s (%s)", ip, r.FirstError())
		}
	}
}

// showFlows prints the first lines of `netmanager flows --service job`
// on n and checks that the listing names, for each flow, the instance it
// chose among insts.
func (d *Deployment) showFlows(ctx context.Context, p *printer, n *Node, job string, insts []*Instance) error {
	out, err := d.NetManagerCLI(ctx, n, "flows", "--service", job)
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	const show = 7
	for i, l := range lines {
		if i == show && len(lines) > show+1 {
			p.line("     ... %d more", len(lines)-show-1)
			p.line("     %s", lines[len(lines)-1])
			break
		}
		p.line("     %s", l)
	}
	js, err := d.NetManagerCLI(ctx, n, "flows", "--service", job, "--json")
	if err != nil {
		return err
	}
	var flows []struct {
		Instance   *int   `json:"instance"`
		InstanceIP string `json:"instance_ip"`
	}
	if err := json.Unmarshal(js, &flows); err != nil {
		return fmt.Errorf("netmanager flows --json: %w", err)
	}
	per := map[string]int{}
	for _, f := range flows {
		for _, in := range insts {
			if f.Instance != nil && *f.Instance == in.Number && (f.InstanceIP == in.IP.V4.String() || f.InstanceIP == in.IP.V6.String()) {
				per[in.Tag()]++
			}
		}
	}
	p.line("   flows listed per chosen instance: %s", fmtCounts(per))
	for _, in := range insts {
		if per[in.Tag()] == 0 {
			return fmt.Errorf("netmanager flows on %s lists no flow that chose %s", n.Name, in.Tag())
		}
	}
	return nil
}

func echoAddr(ip netip.Addr, proto string) netip.AddrPort {
	if proto == "tcp" {
		return netip.AddrPortFrom(ip, EchoTCPPort)
	}
	return netip.AddrPortFrom(ip, EchoUDPPort)
}

func fmtCounts(m map[string]int) string {
	if len(m) == 0 {
		return "nobody"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var s []string
	for _, k := range keys {
		s = append(s, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(s, ", ")
}

type printer struct{ w io.Writer }

func (p *printer) line(format string, args ...any) { fmt.Fprintf(p.w, format+"\n", args...) }
func (p *printer) title(s string) {
	fmt.Fprintf(p.w, "%s\n%s\n", s, strings.Repeat("=", len([]rune(s))))
}
func (p *printer) section(format string, args ...any) {
	fmt.Fprintf(p.w, "\n"+format+"\n", args...)
}
func (p *printer) table() *tabwriter.Writer { return tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0) }
