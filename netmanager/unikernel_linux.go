package netmanager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/run/netns"

// hostMount is the command prefix that runs a command in the host's
// (PID 1's) mount namespace, nil when the daemon runs in it. A named
// namespace is a bind mount under /run/netns: made in a private mount
// namespace (a unit with PrivateTmp or ProtectSystem, `ip netns exec`),
// the node engine would not see it.
func hostMount() []string {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	init, err2 := os.Readlink("/proc/1/ns/mnt")
	if err1 != nil || err2 != nil || self == init {
		return nil
	}
	return []string{"nsenter", "--mount=/proc/1/ns/mnt", "--"}
}

// netnsPath is where the daemon opens named namespace name: through the
// host's mount namespace when it runs in another (mounts made there need
// not reach it).
func netnsPath(name string) string {
	if hostMount() != nil {
		return filepath.Join("/proc/1/root", netnsDir, name)
	}
	return filepath.Join(netnsDir, name)
}

// createNetns makes the named network namespace (iproute2's `ip netns
// add`, in the host's mount namespace, so `ip netns` and the node engine
// see it) and returns the path the daemon opens it by; created is false
// when it already existed (a leftover, reused).
func createNetns(name string) (path string, created bool, err error) {
	if name == "" || len(name) > 255 || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", false, badRequest("bad_name", "namespace name %q", name)
	}
	path = netnsPath(name)
	if _, err := os.Stat(path); err == nil {
		return path, false, nil
	}
	if err := runIP("netns", "add", name); err != nil {
		return "", false, fmt.Errorf("netns %s: %w", name, err)
	}
	return path, true, nil
}

// deleteNetns removes the named namespace; one that does not exist is
// not an error.
func deleteNetns(name string) error {
	if _, err := os.Stat(netnsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := runIP("netns", "delete", name); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	return nil
}

// setupVMNet gives the VM its side in namespace name: bridge virbr0 at
// 192.168.1.1/30 with tap0 on it (the VM's NIC), forwarding, and NAT
// between the namespace IP on ifName and the guest at 192.168.1.2: what
// arrives for the namespace IP goes to the guest, what the guest sends
// leaves from the namespace IP (Oakestra's unikernel network).
func setupVMNet(name, ifName, nsIP string) error {
	for _, args := range [][]string{
		{"-n", name, "link", "add", vmBridge, "type", "bridge"},
		{"-n", name, "addr", "add", vmGateway, "dev", vmBridge},
		{"-n", name, "tuntap", "add", "dev", vmTap, "mode", "tap"},
		{"-n", name, "link", "set", vmTap, "master", vmBridge},
		{"-n", name, "link", "set", vmTap, "up"},
		{"-n", name, "link", "set", vmBridge, "up"},
	} {
		if err := runIP(args...); err != nil {
			return fmt.Errorf("unikernel netns %s: %w", name, err)
		}
	}
	rules := fmt.Sprintf(`table ip oakwire_vm {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		iifname %q ip daddr %s dnat to %s
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %q ip saddr %s snat to %s
	}
}
`, ifName, nsIP, vmGuest, ifName, vmGuest, nsIP)
	if err := runIn(name, rules, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("unikernel netns %s: nat: %w", name, err)
	}
	if err := runIn(name, "", "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return fmt.Errorf("unikernel netns %s: forwarding: %w", name, err)
	}
	return nil
}

// runIP runs ip(8) in the host's mount namespace (where the named
// namespaces are).
func runIP(args ...string) error {
	return runHost("", append([]string{"ip"}, args...)...)
}

// runIn runs a command inside named namespace name (ip netns exec).
func runIn(name, stdin string, cmd ...string) error {
	return runHost(stdin, append([]string{"ip", "netns", "exec", name}, cmd...)...)
}

func runHost(stdin string, argv ...string) error {
	argv = append(hostMount(), argv...)
	return run(stdin, argv[0], argv[1:]...)
}

func run(stdin, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
