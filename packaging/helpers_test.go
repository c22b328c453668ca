package packaging

import (
	"bufio"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/oakwire/oakwire/bpfprog"
	"github.com/oakwire/oakwire/internal/testenv"
)

var (
	repo = func() string { // the repository root
		r, err := filepath.Abs("..")
		if err != nil {
			panic(err)
		}
		return r
	}()
	binOnce sync.Once
	binDir  string // make binaries' output, once per test binary
	binErr  error
	binOut  []byte
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds servicemanager and netmanager once (make binaries) and
// returns their directory, for make install and make deb to take.
func binaries(t *testing.T) string {
	t.Helper()
	testenv.RequireBinary(t, "make")
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "oakwire-bin-")
		if binErr == nil {
			binOut, binErr = makeCmd("binaries", "BIN="+binDir).CombinedOutput()
		}
	})
	if binErr != nil {
		t.Fatalf("make binaries: %v\n%s", binErr, binOut)
	}
	return binDir
}

// makeCmd is make in the repository, without the variables of a make that
// runs these tests (make test): the inner one starts afresh.
func makeCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-C", repo}, args...)...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == "MAKEFLAGS" || k == "MFLAGS" || k == "MAKELEVEL" || k == "MAKEOVERRIDES"
	})
	return cmd
}

// runMake runs make in the repository and returns its output.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	out, err := makeCmd(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// output runs a command and returns its trimmed output.
func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = repo
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// installed is every file make install puts down (PREFIX /usr/local) and
// each package carries (PREFIX /usr, units in /lib/systemd/system), by
// package, with its mode. Written out here, not read from the manifest, so
// that a change to what is installed is a change to this test too.
func installed(bindir, unitdir string) map[string]map[string]fs.FileMode {
	return map[string]map[string]fs.FileMode{
		"oakwire-node": {
			bindir + "/netmanager":                  0o755,
			unitdir + "/oakwire-netmanager.service": 0o644,
			"/etc/oakwire/netmanager.yaml":          0o644,
			"/etc/oakwire/netmanager.env":           0o600,
		},
		"oakwire-control": {
			bindir + "/servicemanager":           0o755,
			unitdir + "/oakwire-root.service":    0o644,
			unitdir + "/oakwire-cluster.service": 0o644,
			"/etc/oakwire/root.yaml":             0o644,
			"/etc/oakwire/cluster.yaml":          0o644,
			"/etc/oakwire/servicemanager.env":    0o600,
		},
	}
}

// source is the repository file an installed configuration file or unit
// comes from.
func source(path string) string { return filepath.Join(repo, "configs", filepath.Base(path)) }

// tree returns every non-directory below root (path relative to root, with
// a leading /) with its mode, and fails on anything owned by another user
// than the test's.
func tree(t *testing.T, root string) map[string]fs.FileMode {
	t.Helper()
	files := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
			t.Errorf("%s: owner uid %d, want %d", p, st.Uid, os.Geteuid())
		}
		if !d.IsDir() {
			files[strings.TrimPrefix(p, root)] = info.Mode()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// checkVersion runs `binary --version` and checks it names the checkout's
// version and commit and, for netmanager, the hash of every BPF object.
func checkVersion(t *testing.T, binary, program string) {
	t.Helper()
	out := output(t, binary, "--version")
	want := []string{program + " " + output(t, "bash", "scripts/version.sh"), "commit " + output(t, "git", "rev-parse", "HEAD")}
	if program == "netmanager" {
		for name, sum := range bpfprog.ObjectHashes() {
			want = append(want, "bpf "+name+" sha256:"+sum)
		}
	}
	lines := strings.Split(out, "\n")
	for _, w := range want {
		if !slices.ContainsFunc(lines, func(l string) bool { return l == w || strings.HasPrefix(l, w+" ") }) {
			t.Errorf("%s --version lacks %q:\n%s", binary, w, out)
		}
	}
}

// verifyUnits runs systemd-analyze verify on the units, after rewrite (the
// binaries of a DESTDIR install are not where ExecStart says), and checks
// their exposure (systemd-analyze security) stays at most maxExposure[unit]
// tenths.
func verifyUnits(t *testing.T, units []string, rewrite func(string) string, maxExposure map[string]int) {
	t.Helper()
	sa := testenv.RequireBinary(t, "systemd-analyze")
	dir := t.TempDir()
	probe := filepath.Join(dir, "oakwire-probe.service")
	if err := os.WriteFile(probe, []byte("[Service]\nExecStart=/bin/true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sa, "verify", probe).CombinedOutput(); err != nil || len(out) > 0 {
		testenv.Skipf(t, "systemd-analyze cannot verify even a trivial unit here (%v): %s", err, out)
	}
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, []byte(rewrite(string(b))), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	if out, err := exec.Command(sa, append([]string{"verify"}, paths...)...).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify %v: %v\n%s", units, err, out)
	}
	for _, p := range paths {
		limit, ok := maxExposure[filepath.Base(p)]
		if !ok {
			t.Errorf("%s: no exposure limit in the test", filepath.Base(p))
			continue
		}
		out, err := exec.Command(sa, "security", "--offline=true", "--no-pager", "--threshold="+strconv.Itoa(limit), p).CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze security %s: exposure above %d.%d (%v):\n%s", filepath.Base(p), limit/10, limit%10, err, lastLine(out))
		}
	}
}

func lastLine(b []byte) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			last = sc.Text()
		}
	}
	return last
}
