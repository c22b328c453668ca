package deploy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/oakwire/oakwire/internal/testbed"
)

// mountBPFFS mounts a bpffs at WorkDir/bpf (see BPFDir).
func (d *Deployment) mountBPFFS() error {
	dir := filepath.Join(d.WorkDir, "bpf")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("deploy: mount bpffs at %s: %w", dir, err)
	}
	d.BPFDir = dir
	return nil
}

// Namespaces lists every namespace the deployment made and has not deleted.
func (d *Deployment) Namespaces() []string {
	d.mu.Lock()
	out := append([]string(nil), d.ctrNS...)
	d.mu.Unlock()
	if d.Bed != nil {
		out = append(out, d.Bed.Namespaces()...)
	}
	return out
}

// newNS creates an empty named namespace (lo up) without leaving the
// calling thread in it, and records it for Close.
func (d *Deployment) newNS(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("deploy: closed")
	}
	if err := testbed.NewNamedNS(name); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	d.ctrNS = append(d.ctrNS, name)
	if _, err := testbed.Run(5*time.Second, name, "ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	return nil
}

func (d *Deployment) dropNS(name string) error {
	d.mu.Lock()
	for i, n := range d.ctrNS {
		if n == name {
			d.ctrNS = append(d.ctrNS[:i], d.ctrNS[i+1:]...)
			break
		}
	}
	d.mu.Unlock()
	return deleteNS(name)
}

func deleteNS(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}
