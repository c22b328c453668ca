package netmanager

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func noEnv(string) string { return "" }

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nm.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaults(t *testing.T) {
	c, err := LoadConfig(nil, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Defaults()) {
		t.Fatalf("no args: %+v, want defaults %+v", c, Defaults())
	}
	if c.TunnelPort != 50103 || c.Socket != "/etc/netmanager/netmanager.sock" || c.StateDir != "/var/lib/netmanager" ||
		c.MTU != 1450 || c.XDPMode != "generic" || c.Quarantine != 60*time.Second {
		t.Fatalf("defaults differ from SPEC: %+v", c)
	}
}

func TestConfigYAMLThenFlagsWin(t *testing.T) {
	p := writeFile(t, `
node-id: n1
uplink: eth9
node-ip: 198.18.0.1
tunnel-port: 4000
cluster: cl:1234
workers: 3
mtu: 1400
xdp-mode: native
quarantine: 5s
insecure: true
`)
	c, err := LoadConfig([]string{"--config", p, "--node-id", "n2", "--mtu=1300", "--quarantine", "0s"}, func(k string) string {
		if k == "OAKWIRE_TOKEN" {
			return "tok"
		}
		return ""
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.NodeID, want.Uplink, want.NodeIP, want.TunnelPort, want.Cluster = "n2", "eth9", "198.18.0.1", 4000, "cl:1234"
	want.Workers, want.MTU, want.XDPMode, want.Quarantine, want.Insecure, want.Token = 3, 1300, "native", 0, true, "tok"
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigRejects(t *testing.T) {
	if _, err := LoadConfig([]string{"--config", writeFile(t, "nodeid: x\n")}, noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), "nodeid") {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := LoadConfig([]string{"--config", writeFile(t, "mtu: big\n")}, noEnv, io.Discard); err == nil {
		t.Fatal("ill-typed key accepted")
	}
	if _, err := LoadConfig([]string{"--bogus"}, noEnv, io.Discard); err == nil {
		t.Fatal("unknown flag accepted")
	}
	if _, err := LoadConfig([]string{"extra"}, noEnv, io.Discard); err == nil {
		t.Fatal("positional argument accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Defaults()
	ok.NodeID, ok.Uplink, ok.NodeIP, ok.Insecure = "n1", "ul0", "198.18.0.1", true
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		key string
		mod func(*Config)
	}{
		{"node-id", func(c *Config) { c.NodeID = ""; c.Cluster = "x:1" }},
		{"node-id", func(c *Config) { c.NodeID = "a b" }},
		{"uplink", func(c *Config) { c.Uplink = "" }},
		{"uplink", func(c *Config) { c.Uplink = "averyveryverylongname" }},
		{"node-ip", func(c *Config) { c.NodeIP = "" }},
		{"node-ip", func(c *Config) { c.NodeIP = "1.2.3" }},
		{"tunnel-port", func(c *Config) { c.TunnelPort = 0 }},
		{"tunnel-port", func(c *Config) { c.TunnelPort = 70000 }},
		{"socket", func(c *Config) { c.Socket = "rel.sock" }},
		{"state-dir", func(c *Config) { c.StateDir = "" }},
		{"workers", func(c *Config) { c.Workers = -1 }},
		{"worker-cpus", func(c *Config) { c.WorkerCPUs = "0,x" }},
		{"worker-cpus", func(c *Config) { c.WorkerCPUs = "-1" }},
		{"worker-yield", func(c *Config) { c.WorkerYield = "fast" }},
		{"worker-spin", func(c *Config) { c.WorkerSpin = 0 }},
		{"worker-spin", func(c *Config) { c.WorkerSpin = 2 * time.Second }},
		{"mtu", func(c *Config) { c.MTU = 500 }},
		{"xdp-mode", func(c *Config) { c.XDPMode = "offload" }},
		{"flows-per-port", func(c *Config) { c.FlowsPerPort = -1 }},
		{"quarantine", func(c *Config) { c.Quarantine = -time.Second }},
		{"log-level", func(c *Config) { c.LogLevel = "loud" }},
		{"insecure", func(c *Config) { c.Insecure = false }},
		{"dataplane", func(c *Config) { c.Dataplane = "tun" }},
		{"container-if", func(c *Config) { c.ContainerIf = "" }},
		{"platform-v4", func(c *Config) { c.PlatformV4 = "fc00::/7" }},
		{"platform-v6", func(c *Config) { c.PlatformV6 = "10.0.0.0/8" }},
	} {
		c := ok
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.key+":") {
			t.Errorf("%s: error %v does not name the key", tc.key, err)
		}
	}
	// Without a cluster the node id may come from POST /register.
	c := ok
	c.NodeID = ""
	if err := c.Validate(); err != nil {
		t.Errorf("no node-id, no cluster: %v", err)
	}
}

// TestExampleConfigCoversEveryKey: configs/netmanager.yaml lists every key
// of Config (and nothing else) with its default.
func TestExampleConfigCoversEveryKey(t *testing.T) {
	b, err := os.ReadFile("../configs/netmanager.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	rt := reflect.TypeFor[Config]()
	for i := range rt.NumField() {
		tag := rt.Field(i).Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		keys = append(keys, tag)
		if _, ok := m[tag]; !ok {
			t.Errorf("configs/netmanager.yaml lacks key %q", tag)
		}
	}
	for k := range m {
		if !slices.Contains(keys, k) {
			t.Errorf("configs/netmanager.yaml has unknown key %q", k)
		}
	}
	c := Defaults()
	if err := decodeYAML(b, &c); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Defaults()) {
		t.Errorf("example values differ from the defaults:\n got %+v\nwant %+v", c, Defaults())
	}
	// Every key is also a flag.
	fs := newFlagSetForTest()
	for _, k := range keys {
		if fs.Lookup(k) == nil {
			t.Errorf("key %q has no flag", k)
		}
	}
}
