package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// socketCall finds the family of a socket the code opens itself.
var socketCall = regexp.MustCompile(`(?:unix|syscall)\.Socket\(\s*(?:unix|syscall)\.(AF_[A-Z0-9]+)`)

// TestUnitAddressFamilies: each unit's RestrictAddressFamilies lists every
// socket family its binary opens, the module's own socket calls and what
// the libraries open (net: AF_UNIX, AF_INET, AF_INET6; netlink:
// AF_NETLINK). A family missing there fails only at run time under
// systemd, where no other test runs the daemon.
func TestUnitAddressFamilies(t *testing.T) {
	for unit, c := range map[string]struct {
		cmd     string
		library []string
	}{
		"oakwire-netmanager.service": {"./cmd/netmanager", []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}},
		"oakwire-root.service":       {"./cmd/servicemanager", []string{"AF_UNIX", "AF_INET", "AF_INET6"}},
		"oakwire-cluster.service":    {"./cmd/servicemanager", []string{"AF_UNIX", "AF_INET", "AF_INET6"}},
	} {
		b, err := os.ReadFile(filepath.Join(repo, "configs", unit))
		if err != nil {
			t.Fatal(err)
		}
		allowed := map[string]bool{}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "RestrictAddressFamilies="); ok {
				for _, f := range strings.Fields(v) {
					allowed[f] = true
				}
			}
		}
		used := map[string]string{}
		for _, f := range c.library {
			used[f] = "the libraries"
		}
		cmd := exec.Command("go", "list", "-deps", "-f", `{{if not .Standard}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{end}}`, c.cmd)
		cmd.Dir = repo
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list %s: %v", c.cmd, err)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(l)
			if len(f) == 0 || !strings.HasPrefix(f[0], repo+string(filepath.Separator)) {
				continue // not this module's code
			}
			for _, name := range f[1:] {
				src, err := os.ReadFile(filepath.Join(f[0], name))
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range socketCall.FindAllStringSubmatch(string(src), -1) {
					rel, _ := filepath.Rel(repo, filepath.Join(f[0], name))
					used[m[1]] = rel
				}
			}
		}
		for fam, where := range used {
			if !allowed[fam] {
				t.Errorf("%s: RestrictAddressFamilies lacks %s, which %s opens", unit, fam, where)
			}
		}
		if c.cmd == "./cmd/netmanager" && used["AF_XDP"] == "" {
			t.Errorf("found no AF_XDP socket call under %s: the pattern no longer matches fastpath/xsk", c.cmd)
		}
	}
}
