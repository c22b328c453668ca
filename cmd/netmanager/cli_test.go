package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/oakwire/oakwire/netmanager/localapi"
)

// checkAligned checks that in the table of out whose header starts with
// heads[0], every row has a column break before each of heads' offsets
// (aligned text).
func checkAligned(t *testing.T, out string, heads ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	var hdr string
	var rows []string
	for i, l := range lines {
		if strings.HasPrefix(l, heads[0]) {
			hdr = l
			rows = lines[i+1:]
			break
		}
	}
	if hdr == "" {
		t.Fatalf("no header %q in:\n%s", heads[0], out)
	}
	for _, h := range heads {
		col := strings.Index(hdr, h)
		if col < 0 {
			t.Fatalf("header lacks %q: %s", h, hdr)
		}
		for _, r := range rows {
			if !strings.Contains(r, "  ") {
				continue // not a table row (a summary line)
			}
			if len(r) > col && col > 0 && r[col-1] != ' ' {
				t.Errorf("column %s (at %d) not aligned in %q", h, col, r)
			}
		}
	}
}

func TestRenderFlows(t *testing.T) {
	i0, i1 := uint32(0), uint32(1)
	fs := []localapi.Flow{
		{Proto: "udp", Src: "10.18.0.2:40000", Dst: "10.30.0.2:7000", Job: "demo.ns.web.default", Service: "10.30.0.2", Instance: &i1, InstanceIP: "10.30.0.4",
			Tier: "kernel", Packets: 12, Bytes: 1024, IdleMS: 1500},
		{Proto: "tcp", Src: "[fc00::2]:40001", Dst: "[fdff:2000::1]:7001", Job: "demo.ns.web.default", Instance: &i0, InstanceIP: "fdff::1",
			Tier: "workers", Pending: true},
		{Proto: "udp", Src: "10.30.0.3:7000", Dst: "10.18.0.2:40000", Ingress: true, Tier: "kernel", Packets: 3},
	}
	var b bytes.Buffer
	if err := renderFlows(&b, fs); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"1 10.30.0.4", "0 fdff::1", "workers (pending)", "1.5s", "3 flow(s)", " in "} {
		if !strings.Contains(out, want) {
			t.Errorf("flows output lacks %q:\n%s", want, out)
		}
	}
	checkAligned(t, out, "PROTO", "SOURCE", "DESTINATION", "SERVICE", "INSTANCE", "TIER", "PACKETS")
}

func TestRenderStatusAndServices(t *testing.T) {
	s := &localapi.Status{StatusBase: localapi.StatusBase{NodeID: "a", Registered: true, Confirmed: true, Cluster: "http://c:10110",
		Uplink: "eth0", NodeIP: "198.18.0.1", TunnelPort: 50103, Subnet: "10.18.0.0/26", SubnetV6: "fc00::/120",
		Gateway: "10.18.0.1", GatewayV6: "fc00::1", GatewayDev: "ow0", MTU: 1450,
		Dataplane: localapi.DataplaneStats{Mode: "kernel-tier", Workers: 1, Sockets: 3, Tables: map[string]int{"flows": 4, "kernel_flows": 2},
			Counters: map[string]uint64{"rx": 10, "tx": 9, "drop_spoofed": 2}}},
		Containers: []localapi.ContainerInfo{{Job: "oakwire.a.client.default", Instance: 0, ContainerID: "313f85acb91c49562221", Client: true,
			NSIP4: "10.18.0.2", NSIP6: "fc00::2", HostIf: "ow12345678", PortMappings: []localapi.PortMapping{{HostPort: 8080, ContainerPort: 80, Proto: "tcp"}}}},
		Build: localapi.BuildInfo{Version: "v1.2.3", Commit: "0123456789abcdef", GoVersion: "go1.26.8"}}
	var b bytes.Buffer
	if err := renderStatus(&b, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"registered with http://c:10110", "kernel flows 2", "dropped 2", "313f85acb91c (client)", "8080:80/tcp", "v1.2.3 (0123456789ab)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, b.String())
		}
	}
	checkAligned(t, b.String(), "SERVICE", "INSTANCE", "NSIP", "HOST IF", "CONTAINER")

	sv := &localapi.Services{Epoch: "5f0c1234567890abcd", Version: 7, Peers: 2, Services: []localapi.ServiceInfo{{
		Job: "demo.ns.web.default", Version: 6, Source: "watch", IdleMS: 3000,
		ServiceIPs: []localapi.ServiceIP{{Policy: "RR", V4: "10.30.0.2", V6: "fdff:2000::1"}},
		Instances: []localapi.InstanceInfo{{Number: 0, IP: "10.30.0.3", IPv6: "fdff::1", NSIP: "10.18.0.66", Node: "198.18.0.2:50103", Cluster: "c1"},
			{Number: 1, IP: "10.30.0.4"}}}}}
	b.Reset()
	if err := renderServices(&b, sv); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"version 7 (epoch 5f0c12345678)", "demo.ns.web.default", "watch", "3s", "#0", "198.18.0.2 (c1)", "(not placed)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("services output lacks %q:\n%s", want, b.String())
		}
	}
	checkAligned(t, b.String(), "SERVICE", "VERSION", "SOURCE", "POLICY/INSTANCE", "IPV4", "IPV6", "NODE")
}

func TestDrops(t *testing.T) {
	before := map[string]uint64{"drop_spoofed": 10, "bpf_uplink_not_peer": 0, "rx": 5, "xsk_rx_fill_ring_empty": 100}
	after := map[string]uint64{"drop_spoofed": 30, "bpf_uplink_not_peer": 0, "rx": 50, "xsk_rx_fill_ring_empty": 100, "drop_new": 4}
	ds := drops(before, after, 2*time.Second, false)
	if len(ds) != 3 || ds[0].Reason != "xsk_rx_fill_ring_empty" || ds[1].Reason != "spoofed" || ds[1].Rate != 10 || ds[2].Reason != "new" {
		t.Errorf("drops: %+v", ds)
	}
	if all := drops(before, after, time.Second, true); len(all) != 4 {
		t.Errorf("drops --all: %+v; want the zero bpf_uplink_not_peer too", all)
	}
}

func TestCLIUnreachable(t *testing.T) {
	var out, errb bytes.Buffer
	start := time.Now()
	err := runCLI(context.Background(), "status", []string{"--socket", t.TempDir() + "/none.sock"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "netmanager not reachable") || time.Since(start) > 3*time.Second {
		t.Errorf("status without a daemon: %v after %v", err, time.Since(start))
	}
	if err := runCLI(context.Background(), "flows", []string{"extra"}, &out, &errb); err == nil {
		t.Error("flows with an argument: no error")
	}
}
