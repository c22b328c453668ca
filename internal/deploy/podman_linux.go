package deploy

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PodmanImage is the image Podman imports: owload alone, at /owload.
const PodmanImage = "localhost/oakwire-owload:test"

// Podman is a podman (CNI backend) of a worker node: it runs in the
// node's network namespace, with its own storage under the deployment's
// work directory and a CNI configuration whose network "oakwire" is
// oakwire-cni talking to the node's netmanager.
//
// Every podman command runs in the namespaces of one holder process
// started with `ip netns exec` (nsenter --mount --net): each `ip netns
// exec` makes a new mount namespace, and podman keeps a container's
// network namespace mounted where it ran, so a later `podman rm` in
// another mount namespace could not find it. The holder's mount
// namespace is a slave of the machine's: what podman mounts there
// (network namespaces, storage) never shows in the machine's, and goes
// when the holder and the containers' conmons are gone. netmanager, in
// its own mount namespace, does not see those network namespace mounts
// either: the plugin hands it a descriptor (cmd/oakwire-cni).
type Podman struct {
	Node *Node
	dir  string
	conf string // containers.conf
	base []string
	// ulimits the containers get: podman's defaults raise RLIMIT_NOFILE
	// (and crun's cgroup device program RLIMIT_MEMLOCK), which needs
	// CAP_SYS_RESOURCE; this machine's sandbox has none.
	ulimits []string
	holder  *proc
}

// Podman sets up podman on node n: its directories, its CNI network, the
// holder process, and the image (owload).
func (d *Deployment) Podman(ctx context.Context, n *Node) (*Podman, error) {
	if _, err := exec.LookPath("podman"); err != nil {
		return nil, fmt.Errorf("podman: %w (make deps installs it)", err)
	}
	dir := filepath.Join(d.WorkDir, "podman-"+n.Name)
	for _, sub := range []string{"root", "run", "tmp", "net.d", "image"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("podman: %w", err)
		}
	}
	p := &Podman{Node: n, dir: dir, conf: filepath.Join(dir, "containers.conf")}
	conflist := map[string]any{"cniVersion": "1.0.0", "name": "oakwire", "plugins": []any{map[string]any{
		"type": "oakwire-cni", "socket": n.Socket, "timeout": "30s",
		"capabilities": map[string]bool{"portMappings": true, "oakwire": true}}}}
	b, _ := json.MarshalIndent(conflist, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "net.d", "oakwire.conflist"), b, 0o644); err != nil {
		return nil, fmt.Errorf("podman: %w", err)
	}
	cc := fmt.Sprintf("[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [%q]\nnetwork_config_dir = %q\n",
		d.bin, filepath.Join(dir, "net.d"))
	if err := os.WriteFile(p.conf, []byte(cc), 0o644); err != nil {
		return nil, fmt.Errorf("podman: %w", err)
	}
	p.base = []string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
		"--tmpdir", filepath.Join(dir, "tmp"), "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
		"--events-backend", "none"}
	var nofile, nproc unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile)
	_ = unix.Getrlimit(unix.RLIMIT_NPROC, &nproc)
	np := min(nproc.Max, 32768) // podman lowers its own to 32768
	p.ulimits = []string{"--cgroups", "disabled",
		"--ulimit", fmt.Sprintf("nofile=%d:%d", nofile.Max, nofile.Max), "--ulimit", fmt.Sprintf("nproc=%d:%d", np, np)}
	// `ip netns exec` mounts a sysfs of the node's namespace, without the
	// cgroup file system crun checks for.
	h, err := d.start("podman-holder-"+n.Name, n.TB.NS, filepath.Join(d.WorkDir, "podman-"+n.Name+".log"),
		"sh", "-c", "mount -t cgroup2 none /sys/fs/cgroup && exec sleep 7200")
	if err != nil {
		return nil, err
	}
	p.holder = h
	d.mu.Lock()
	d.podmans = append(d.podmans, p)
	d.mu.Unlock()
	if err := p.importImage(ctx, d.Bin("owload")); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// importImage makes PodmanImage from a tar holding the owload binary
// (nothing is pulled from a registry).
func (p *Podman) importImage(ctx context.Context, owload string) error {
	tarPath := filepath.Join(p.dir, "image", "rootfs.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		return fmt.Errorf("podman image: %w", err)
	}
	bin, err := os.ReadFile(owload)
	if err == nil {
		tw := tar.NewWriter(f)
		err = errors.Join(
			tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}),
			tw.WriteHeader(&tar.Header{Name: "owload", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))}))
		if err == nil {
			_, err = tw.Write(bin)
		}
		err = errors.Join(err, tw.Close())
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("podman image: %w", err)
	}
	if _, err := p.Run(ctx, time.Minute, nil, "import", tarPath, PodmanImage); err != nil {
		return err
	}
	return nil
}

// Command is `podman ARGS` in the node's namespaces, with env added to
// its environment (podman passes CNI_ARGS from there to the plugin).
// `run` gets the container ulimits and cgroups setting this machine needs.
func (p *Podman) Command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	if len(args) > 0 && (args[0] == "run" || args[0] == "create") {
		args = append([]string{args[0]}, append(append([]string{}, p.ulimits...), args[1:]...)...)
	}
	argv := append([]string{"--target", strconv.Itoa(p.holder.Pid()), "--mount", "--net", "--", "podman"}, p.base...)
	cmd := exec.CommandContext(ctx, "nsenter", append(argv, args...)...)
	cmd.Env = append(append(os.Environ(), "CONTAINERS_CONF="+p.conf), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Run runs Command bounded by timeout and returns its standard output
// (its standard error is in the error).
func (p *Podman) Run(ctx context.Context, timeout time.Duration, env []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return output(p.Command(ctx, env, args...), "podman "+strings.Join(args, " "))
}

// Close removes every container (which detaches them from the overlay:
// CNI DEL) and stops the holder; its mount namespace, with whatever
// podman mounted, goes with the last process in it.
func (p *Podman) Close() error {
	if p.holder == nil || p.holder.Exited() {
		return nil
	}
	_, err := p.Run(context.Background(), time.Minute, nil, "rm", "-a", "-f", "-t", "0")
	p.holder.Stop(syscall.SIGKILL, 0)
	return err
}
