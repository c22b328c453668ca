package packaging

import (
	"bytes"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Exposure limits (systemd-analyze security, tenths): the control services
// run unprivileged and sandboxed; the node daemon keeps the capabilities it
// needs (configs/oakwire-netmanager.service says which and why).
var placeholder = regexp.MustCompile(`@[A-Z]+@`)

var maxExposure = map[string]int{
	"oakwire-netmanager.service": 45,
	"oakwire-root.service":       20,
	"oakwire-cluster.service":    20,
}

// TestInstall: make install into a scratch DESTDIR puts down exactly the
// expected files with their modes (token files 0600), units that
// systemd-analyze verifies, binaries that say their version; make
// uninstall leaves the tree empty.
func TestInstall(t *testing.T) {
	bin := binaries(t)
	dest := t.TempDir()
	vars := []string{"DESTDIR=" + dest, "BIN=" + bin}
	runMake(t, append([]string{"install"}, vars...)...)

	want := map[string]fs.FileMode{}
	for _, files := range installed("/usr/local/bin", "/usr/local/lib/systemd/system") {
		maps.Copy(want, files)
	}
	got := tree(t, dest)
	for p, mode := range want {
		if m, ok := got[p]; !ok {
			t.Errorf("%s not installed", p)
		} else if m != mode {
			t.Errorf("%s: mode %v, want %v", p, m, mode)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s installed, not expected", p)
		}
	}
	var units []string
	for p := range want {
		b, err := os.ReadFile(dest + p)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasPrefix(p, "/etc/"):
			if src, _ := os.ReadFile(source(p)); !bytes.Equal(b, src) {
				t.Errorf("%s differs from %s", p, source(p))
			}
		case strings.HasSuffix(p, ".service"):
			units = append(units, dest+p)
			if placeholder.Match(b) || !bytes.Contains(b, []byte("\nExecStart=/usr/local/bin/")) {
				t.Errorf("%s: ExecStart not in /usr/local/bin or a placeholder left:\n%s", p, b)
			}
		}
	}
	checkVersion(t, dest+"/usr/local/bin/netmanager", "netmanager")
	checkVersion(t, dest+"/usr/local/bin/servicemanager", "servicemanager")
	verifyUnits(t, units, func(u string) string {
		return strings.ReplaceAll(u, "ExecStart=/usr/local/bin/", "ExecStart="+dest+"/usr/local/bin/")
	}, maxExposure)

	runMake(t, append([]string{"uninstall"}, vars...)...)
	if left := tree(t, dest); len(left) > 0 {
		t.Errorf("uninstall left %v", left)
	}
	if ents, _ := os.ReadDir(dest); len(ents) > 0 {
		t.Errorf("uninstall left directories in DESTDIR: %v", ents)
	}
}

// TestInstallKeepsOperatorsConfig: install never writes over an existing
// configuration file, and uninstall keeps one the operator changed while
// it removes everything else.
func TestInstallKeepsOperatorsConfig(t *testing.T) {
	bin := binaries(t)
	dest := t.TempDir()
	vars := []string{"DESTDIR=" + dest, "BIN=" + bin, "PREFIX=/opt/oakwire"}
	runMake(t, append([]string{"install"}, vars...)...)
	if _, err := os.Stat(dest + "/opt/oakwire/lib/systemd/system/oakwire-root.service"); err != nil {
		t.Errorf("PREFIX not honoured: %v", err)
	}
	env := dest + "/etc/oakwire/netmanager.env"
	mine := []byte("OAKWIRE_TOKEN=operators-token\n")
	if err := os.WriteFile(env, mine, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := runMake(t, append([]string{"install"}, vars...)...); !strings.Contains(out, "kept      /etc/oakwire/netmanager.env") {
		t.Errorf("second install does not say it kept the env file:\n%s", out)
	}
	if b, _ := os.ReadFile(env); !bytes.Equal(b, mine) {
		t.Errorf("install wrote over the operator's %s: %q", env, b)
	}
	out := runMake(t, append([]string{"uninstall"}, vars...)...)
	if !strings.Contains(out, "kept      /etc/oakwire/netmanager.env (changed since install)") {
		t.Errorf("uninstall does not name the kept file:\n%s", out)
	}
	left := tree(t, dest)
	if len(left) != 1 || left["/etc/oakwire/netmanager.env"] != 0o600 {
		t.Errorf("after uninstall: %v, want only the operator's netmanager.env (0600)", left)
	}
	if b, _ := os.ReadFile(env); !bytes.Equal(b, mine) {
		t.Errorf("uninstall changed %s: %q", env, b)
	}
	if ents, _ := os.ReadDir(filepath.Join(dest, "opt")); len(ents) > 0 {
		t.Errorf("uninstall left %v under /opt", ents)
	}
}
