package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/internal/deploy"
	"github.com/oakwire/oakwire/internal/testenv"
)

// TestPodman runs real containers with podman (CNI backend, network
// "oakwire" = oakwire-cni) on two emulated nodes: a server container on b
// that the orchestrator made instance 0 of a service (CNI_ARGS), a
// client-only container on a that reaches it through the service's IPs;
// `podman rm` and `run --rm` detach them (netmanager holds nothing, root
// frees the client's instance). The image is owload alone, imported from a
// tar (no registry).
func TestPodman(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "podman")
	testenv.RequireBinary(t, "nsenter")
	d, a, b, svc := upWeb(t)
	ctx := context.Background()
	if _, err := d.PlaceInstance(ctx, "web", 0, b); err != nil {
		t.Fatal(err)
	}
	pa, err := d.Podman(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := d.Podman(ctx, b)
	if err != nil {
		t.Fatal(err)
	}

	// The server: instance 0 of web, named through CNI_ARGS.
	ident := []string{"CNI_ARGS=OAKWIRE_SERVICE=" + svc.Job + ";OAKWIRE_INSTANCE=0"}
	if out, err := pb.Run(ctx, 2*time.Minute, ident, "run", "-d", "--name", "web0", "--network", "oakwire", deploy.PodmanImage,
		"/owload", "udpecho", "--listen", fmt.Sprintf(":%d", deploy.EchoUDPPort), "--tag", "web0@podman", "--max-seconds", "900"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := pb.Run(ctx, 2*time.Minute, nil, "run", "-d", "--name", "web0tcp", "--network", "container:web0", deploy.PodmanImage,
		"/owload", "tcpecho", "--listen", fmt.Sprintf(":%d", deploy.EchoTCPPort), "--tag", "web0@podman", "--max-seconds", "900"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	st, err := d.Status(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Containers) != 1 || st.Containers[0].Job != svc.Job || st.Containers[0].Instance != 0 || st.Containers[0].ContainerID == "" {
		t.Fatalf("node b holds %+v: want web/0 attached by podman's container id", st.Containers)
	}
	// podman took the CNI result: it shows the nsIP netmanager gave.
	out, err := pb.Run(ctx, time.Minute, nil, "inspect", "web0", "--format", "{{.NetworkSettings.Networks.oakwire.IPAddress}}")
	if err != nil || strings.TrimSpace(string(out)) != st.Containers[0].NSIP {
		t.Errorf("podman inspect web0: IP %q (%v), netmanager attached %s", out, err, st.Containers[0].NSIP)
	}

	// The client: a container given no service, on a.
	ask := func(proto string, dst netip.AddrPort, flows int, timeout time.Duration) *deploy.AskResult {
		t.Helper()
		out, err := pa.Run(ctx, 2*time.Minute, nil, "run", "--rm", "--network", "oakwire", deploy.PodmanImage,
			"/owload", proto+"ask", "--addr", dst.String(), "--flows", fmt.Sprint(flows), "--per-flow", "2", "--timeout", timeout.String())
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		var r deploy.AskResult
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%sask: %v: %q", proto, err, out)
		}
		return &r
	}
	// TCP retransmits what the first contact costs (both nodes resolve the
	// new addresses on their first packets): every request is answered.
	for _, dst := range []netip.Addr{svc.RR().V4, svc.Closest().V6} {
		r := ask("tcp", netip.AddrPortFrom(dst, deploy.EchoTCPPort), 3, 5*time.Second)
		if r.Answered != r.Sent || r.ByTag()["web0@podman"] != r.Sent {
			t.Errorf("podman client → tcp %v: %d/%d answered, by %v (%s)", dst, r.Answered, r.Sent, r.ByTag(), r.FirstError())
		}
	}
	// UDP: a first datagram may be lost to that first contact; the rest
	// is answered by the server.
	r := ask("udp", netip.AddrPortFrom(svc.RR().V4, deploy.EchoUDPPort), 4, time.Second)
	if r.Answered < r.Sent-2 || r.ByTag()["web0@podman"] != r.Answered {
		t.Errorf("podman client → udp %v: %d/%d answered, by %v (%s)", svc.RR().V4, r.Answered, r.Sent, r.ByTag(), r.FirstError())
	}
	if st, err := d.Status(ctx, a); err != nil || len(st.Containers) != 0 {
		t.Errorf("after the client containers (--rm) node a holds %+v (%v)", st, err)
	}
	if e, err := d.ServiceEntry(ctx, "oakwire.a.client.default"); err != nil || len(e.InstanceList) != 0 {
		t.Errorf("root's client service of a after --rm: %+v (%v); want no instances", e, err)
	}

	// podman rm detaches the server.
	for _, name := range []string{"web0tcp", "web0"} { // the one sharing web0's network first
		if out, err := pb.Run(ctx, 2*time.Minute, nil, "rm", "-f", "-t", "0", name); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	if st, err := d.Status(ctx, b); err != nil || len(st.Containers) != 0 {
		t.Errorf("after podman rm node b holds %+v (%v)", st, err)
	}
	if e, err := d.ServiceEntry(ctx, svc.Job); err != nil || len(e.InstanceList) != 1 || e.InstanceList[0].NamespaceIP.IsValid() {
		t.Errorf("root's web after podman rm: %+v (%v); want instance 0 without a location", e, err)
	}
}
