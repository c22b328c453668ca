package packaging

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/oakwire/oakwire/internal/testenv"
)

// units of each package, enabled by its postinst.
var packageUnits = map[string][]string{
	"oakwire-node":    {"oakwire-netmanager.service"},
	"oakwire-control": {"oakwire-root.service", "oakwire-cluster.service"},
}

// TestDeb builds the packages and reads them back: names, version,
// dependencies, files and modes, conffiles, maintainer scripts that enable
// but never start. With CI=true or OAKWIRE_TEST_DPKG=1 it then installs
// them (dpkg -i), checks the installed binaries and units, and purges them.
func TestDeb(t *testing.T) {
	testenv.RequireBinary(t, "dpkg-deb")
	bin := binaries(t)
	out := t.TempDir()
	runMake(t, "deb", "BIN="+bin, "DEBDIR="+out)

	version := output(t, "bash", "scripts/version.sh", "--deb")
	arch := output(t, "dpkg", "--print-architecture")
	files := installed("/usr/bin", "/lib/systemd/system")
	debs := map[string]string{}
	for pkg := range files {
		debs[pkg] = filepath.Join(out, pkg+"_"+version+"_"+arch+".deb")
	}
	if got, _ := filepath.Glob(filepath.Join(out, "*")); len(got) != len(debs) {
		t.Errorf("make deb made %v, want %v", got, debs)
	}
	for pkg, deb := range debs {
		t.Run(pkg, func(t *testing.T) { checkDeb(t, deb, pkg, version, arch, files[pkg]) })
	}
	if t.Failed() {
		return
	}
	if !testenv.InCI() && os.Getenv("OAKWIRE_TEST_DPKG") != "1" {
		t.Skip("dpkg -i changes this machine: runs with CI=true or OAKWIRE_TEST_DPKG=1")
	}
	testDpkgInstall(t, debs, files)
}

func checkDeb(t *testing.T, deb, pkg, version, arch string, files map[string]fs.FileMode) {
	fields := map[string]string{}
	for _, l := range strings.Split(output(t, "dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Depends", "Recommends"), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		fields[k] = v
	}
	want := map[string]string{"Package": pkg, "Version": version, "Architecture": arch}
	switch pkg {
	case "oakwire-node": // it runs nft; ip is the operator's
		want["Depends"], want["Recommends"] = "nftables", "iproute2"
	case "oakwire-control": // Redis may run on another host
		want["Recommends"] = "redis-server"
	}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("%s: %s %q, want %q", pkg, k, fields[k], v)
		}
	}
	for k, v := range fields {
		if _, ok := want[k]; !ok && v != "" {
			t.Errorf("%s: %s %q, want none", pkg, k, v)
		}
	}

	// dpkg-deb --contents: "-rw------- root/root 358 2026-01-01 00:00 ./etc/oakwire/netmanager.env"
	got := map[string]string{}
	for _, l := range strings.Split(output(t, "dpkg-deb", "--contents", deb), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || strings.HasPrefix(f[0], "d") {
			continue
		}
		got[strings.TrimPrefix(f[5], ".")] = f[0] + " " + f[1]
	}
	for p, mode := range files {
		if w := mode.String() + " root/root"; got[p] != w {
			t.Errorf("%s: %s is %q, want %q", pkg, p, got[p], w)
		}
	}
	for p := range got {
		if _, ok := files[p]; !ok {
			t.Errorf("%s carries %s, not expected", pkg, p)
		}
	}

	info := output(t, "dpkg-deb", "--info", deb)
	for _, member := range []string{"control", "conffiles", "md5sums", "postinst", "prerm", "postrm"} {
		if !strings.Contains(info, " "+member+" ") {
			t.Errorf("%s: no %s in the control archive:\n%s", pkg, member, info)
		}
	}
	var conffiles []string
	for p := range files {
		if strings.HasPrefix(p, "/etc/") {
			conffiles = append(conffiles, p)
		}
	}
	slices.Sort(conffiles)
	if c := output(t, "dpkg-deb", "--info", deb, "conffiles"); c != strings.Join(conffiles, "\n") {
		t.Errorf("%s: conffiles\n%s\nwant\n%s", pkg, c, strings.Join(conffiles, "\n"))
	}
	postinst := output(t, "dpkg-deb", "--info", deb, "postinst")
	if units := `units="` + strings.Join(packageUnits[pkg], " ") + `"`; !strings.Contains(postinst, units) ||
		!strings.Contains(postinst, `deb-systemd-helper enable "$unit"`) {
		t.Errorf("%s: postinst does not enable %s:\n%s", pkg, units, postinst)
	}
	for _, script := range []string{"postinst", "prerm", "postrm"} {
		s := output(t, "dpkg-deb", "--info", deb, script)
		if placeholder.MatchString(s) {
			t.Errorf("%s: %s has a placeholder left: %s", pkg, script, placeholder.FindString(s))
		}
		// Never start a unit; only try-restart (running ones, on upgrade).
		for _, bad := range []string{"invoke start", "systemctl start", "--now", "invoke restart", "systemctl restart"} {
			if strings.Contains(s, bad) {
				t.Errorf("%s: %s contains %q:\n%s", pkg, script, bad, s)
			}
		}
	}
}

// testDpkgInstall installs the packages on this machine, checks them and
// purges them; it fails, never replaces, where one is installed already.
func testDpkgInstall(t *testing.T, debs map[string]string, files map[string]map[string]fs.FileMode) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "dpkg")
	for pkg := range debs {
		if st, err := exec.Command("dpkg-query", "-W", "-f=${Status}", pkg).Output(); err == nil && strings.Contains(string(st), "installed") {
			t.Fatalf("%s is installed on this machine (%s); the test will not replace it", pkg, st)
		}
	}
	pkgs := slices.Sorted(func(yield func(string) bool) {
		for p := range debs {
			if !yield(p) {
				return
			}
		}
	})
	t.Cleanup(func() { // also after a failure half-way
		_ = exec.Command("dpkg", append([]string{"--purge"}, pkgs...)...).Run()
	})
	args := []string{"-i"}
	for _, p := range pkgs {
		args = append(args, debs[p])
	}
	output(t, "dpkg", args...)

	for pkg, fs := range files {
		for p, mode := range fs {
			if st, err := os.Stat(p); err != nil || st.Mode() != mode {
				t.Errorf("%s: %s: %v %v, want mode %v", pkg, p, st.Mode(), err, mode)
			}
		}
	}
	checkVersion(t, "/usr/bin/netmanager", "netmanager")
	checkVersion(t, "/usr/bin/servicemanager", "servicemanager")
	running := systemdRunning()
	for _, pkg := range pkgs {
		for _, u := range packageUnits[pkg] {
			if st := systemctl(t, "is-enabled", u); st != "enabled" {
				t.Errorf("%s: is-enabled %q, want enabled", u, st)
			}
			if running {
				if st := systemctl(t, "is-active", u); st != "inactive" {
					t.Errorf("%s: is-active %q, want inactive", u, st)
				}
			}
		}
	}
	if !running { // no systemd to ask: no process may run the binaries
		for _, exe := range []string{"/usr/bin/netmanager", "/usr/bin/servicemanager"} {
			if pids := processesOf(exe); len(pids) > 0 {
				t.Errorf("%s runs (pids %v) after installation", exe, pids)
			}
		}
	}

	output(t, "dpkg", append([]string{"--purge"}, pkgs...)...)
	for pkg, fs := range files {
		if st, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", pkg).Output(); strings.Contains(string(st), "installed") {
			t.Errorf("%s still %s", pkg, st)
		}
		for p := range fs {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("%s: %s left after purge", pkg, p)
			}
		}
	}
	for _, p := range []string{"/etc/oakwire", "/var/lib/netmanager"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after purge", p)
		}
	}
	for _, root := range []string{"/etc/systemd/system", "/var/lib/systemd/deb-systemd-helper-enabled", "/var/lib/systemd/deb-systemd-helper-masked"} {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.Contains(d.Name(), "oakwire-") {
				t.Errorf("%s left after purge", p)
			}
			return nil
		})
	}
}

// systemctl runs systemctl and returns its first output line (is-enabled
// and is-active answer with their exit status too, which is not an error here).
func systemctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("systemctl", args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("systemctl %v: %v", args, err)
	}
	return line
}

// systemdRunning: systemd is the init system (sd_booted(3)).
func systemdRunning() bool {
	st, err := os.Stat("/run/systemd/system")
	return err == nil && st.IsDir()
}

// processesOf returns the pids whose executable is exe.
func processesOf(exe string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && p == exe {
			pids = append(pids, pid)
		}
	}
	return pids
}
