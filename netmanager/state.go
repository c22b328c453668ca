package netmanager

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/oakwire/oakwire/ipam"
)

// stateVersion is the state file's format version.
const stateVersion = 1

// State is the daemon's state file: what it set up on the node, so a
// restart re-adopts it and `netmanager teardown` removes exactly it.
type State struct {
	Version        int    `json:"version"`
	NodeID         string `json:"node_id"`
	ClusterAddress string `json:"cluster_address,omitempty"`
	// Subnets is the node subnets' allocator (held and freed nsIPs); nil
	// before registration.
	Subnets *ipam.NodeSubnet `json:"subnets,omitempty"`
	// GatewayDev is the dummy link holding the gateway addresses.
	GatewayDev string `json:"gateway_dev,omitempty"`
	// Sysctls are the values of the sysctls the daemon changed, as they
	// were before, so teardown restores them.
	Sysctls    map[string]string `json:"sysctls,omitempty"`
	Containers []*Container      `json:"containers"`
	// Quarantine: nsIPv4 → time until which it stays unused (held in
	// Subnets by the owner quarantineOwner(addr)).
	Quarantine map[netip.Addr]time.Time `json:"quarantine,omitempty"`
	// ClientReleases are instances of the node's client service whose
	// container went but whose delete at root did not go through yet
	// (retried; their numbers are not reused meanwhile).
	ClientReleases []int `json:"client_releases,omitempty"`
}

// Container is one attached container.
type Container struct {
	Job      string `json:"service"`
	Instance int    `json:"instance"`
	// Exactly one of PID and Netns was given at deploy.
	PID   int    `json:"pid,omitempty"`
	Netns string `json:"netns,omitempty"`
	// ContainerID is the runtime's container id (CNI), if it gave one,
	// and Network the CNI network's name;
	// Client marks an instance of the node's client service, placed at
	// root by the daemon and deleted there with the container.
	ContainerID  string        `json:"container_id,omitempty"`
	Network      string        `json:"network,omitempty"`
	Client       bool          `json:"client,omitempty"`
	HostIf       string        `json:"host_if"`
	HostMAC      macJSON       `json:"host_mac"`
	ContIf       string        `json:"container_if"`
	ContMAC      macJSON       `json:"container_mac"`
	NSIP4        netip.Addr    `json:"ns_ip"`
	NSIP6        netip.Addr    `json:"ns_ip6"`
	MTU          int           `json:"mtu"`
	PortMappings []PortMapping `json:"port_mappings,omitempty"`
	Deployed     time.Time     `json:"deployed"`
	hostIndex    int           // runtime only: ifindex of HostIf
}

func (c *Container) port() Port {
	return Port{
		Job: c.Job, Instance: c.Instance,
		HostIf: c.HostIf, HostIndex: c.hostIndex, HostMAC: net.HardwareAddr(c.HostMAC),
		ContIf: c.ContIf, ContMAC: net.HardwareAddr(c.ContMAC),
		NSIP4: c.NSIP4, NSIP6: c.NSIP6, MTU: c.MTU,
	}
}

// macJSON writes a MAC as "aa:bb:cc:dd:ee:ff".
type macJSON net.HardwareAddr

func (m macJSON) MarshalText() ([]byte, error) { return []byte(net.HardwareAddr(m).String()), nil }
func (m *macJSON) UnmarshalText(b []byte) error {
	hw, err := net.ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = macJSON(hw)
	return nil
}

// loadState reads the state file; (nil, nil) when there is none.
func loadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("state %s: version %d, want %d", path, s.Version, stateVersion)
	}
	return &s, nil
}

// saveState writes s atomically: a temporary file in the same directory,
// fsync, rename over path, fsync the directory.
func saveState(path string, s *State) error {
	s.Version = stateVersion
	if s.Containers == nil {
		s.Containers = []*Container{}
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("state encode: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	f, err := os.CreateTemp(dir, ".state-*.tmp")
	if err != nil {
		return fmt.Errorf("state temp: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(append(b, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("state write: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("state rename: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
