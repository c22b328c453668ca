package main

import (
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

func code(err error) uint {
	if te, ok := err.(*types.Error); ok {
		return te.Code
	}
	return 0
}

// TestIdentity: the sources of a container's service instance, in order.
func TestIdentity(t *testing.T) {
	conf := func(js string) *NetConf {
		t.Helper()
		c, err := loadConf([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	net := conf(`{"cniVersion":"1.0.0","name":"n","type":"oakwire-cni","service":"a.b.net.d","instance":9}`)
	rc := conf(`{"cniVersion":"1.0.0","name":"n","type":"oakwire-cni","runtimeConfig":{"oakwire":{"service":"a.b.rc.d","instance":3},
		"io.kubernetes.cri.pod-annotations":{"oakwire.io/service":"a.b.pod.d","oakwire.io/instance":"4"}}}`)
	pod := conf(`{"cniVersion":"1.0.0","name":"n","type":"oakwire-cni","runtimeConfig":{
		"io.kubernetes.cri.pod-annotations":{"oakwire.io/service":"a.b.pod.d","oakwire.io/instance":"4"}}}`)
	none := conf(`{"cniVersion":"1.0.0","name":"n","type":"oakwire-cni"}`)
	for _, c := range []struct {
		name, args string
		conf       *NetConf
		svc        string
		inst       int
		code       uint
	}{
		{"CNI_ARGS first", "IgnoreUnknown=1;K8S_POD_NAME=x;OAKWIRE_SERVICE=a.b.args.d;OAKWIRE_INSTANCE=2", rc, "a.b.args.d", 2, 0},
		{"runtimeConfig", "K8S_POD_NAME=x", rc, "a.b.rc.d", 3, 0},
		{"pod annotations", "", pod, "a.b.pod.d", 4, 0},
		{"network", "", net, "a.b.net.d", 9, 0},
		{"client-only", "", none, "", 0, 0},
		{"instance not a number", "OAKWIRE_SERVICE=a.b.c.d;OAKWIRE_INSTANCE=x", none, "", 0, types.ErrInvalidEnvironmentVariables},
		{"service without instance", "OAKWIRE_SERVICE=a.b.c.d", none, "", 0, types.ErrInvalidEnvironmentVariables},
		{"bad pair", "OAKWIRE_SERVICE", none, "", 0, types.ErrInvalidEnvironmentVariables},
	} {
		svc, inst, err := identity(&skel.CmdArgs{Args: c.args}, c.conf)
		if code(err) != c.code || (c.code == 0 && (svc != c.svc || inst != c.inst)) {
			t.Errorf("%s: %q %d %v; want %q %d code %d", c.name, svc, inst, err, c.svc, c.inst, c.code)
		}
	}
}

func TestLoadConfAndPortMappings(t *testing.T) {
	for js, want := range map[string]uint{
		`{"name":"n"`:                   types.ErrDecodingFailure,
		`{"timeout":"-1s"}`:             types.ErrInvalidNetworkConfig,
		`{"socket":"relative.sock"}`:    types.ErrInvalidNetworkConfig,
		`{"service":"a.b.c.d"}`:         types.ErrInvalidNetworkConfig,
		`{"instance":-1,"service":"x"}`: types.ErrInvalidNetworkConfig,
		`{"timeout":"2s"}`:              0,
	} {
		if _, err := loadConf([]byte(js)); code(err) != want {
			t.Errorf("loadConf(%s): %v, want code %d", js, err, want)
		}
	}
	pm, err := portMappings([]PortMapEntry{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}, {HostPort: 53, ContainerPort: 5353, Protocol: "UDP"}, {HostPort: 1, ContainerPort: 2}})
	if err != nil || pm != "8080:80/tcp;53:5353/udp;1:2/tcp" {
		t.Errorf("portMappings: %q %v", pm, err)
	}
	if _, err := portMappings([]PortMapEntry{{HostPort: 0, ContainerPort: 80}}); code(err) != types.ErrInvalidNetworkConfig {
		t.Errorf("portMappings with host port 0: %v", err)
	}
}
