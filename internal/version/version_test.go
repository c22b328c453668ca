package version

import (
	"maps"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func buildInfo(mainVersion string, settings ...string) func() (*debug.BuildInfo, bool) {
	return func() (*debug.BuildInfo, bool) {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/oakwire/oakwire", Version: mainVersion}}
		for i := 0; i+1 < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi, true
	}
}

func noBuildInfo() (*debug.BuildInfo, bool) { return nil, false }

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		name, injVersion, injCommit string
		bi                          func() (*debug.BuildInfo, bool)
		want                        Info
	}{
		{"injected", "v0.1.0-3-gabc1234", "abc1234def", buildInfo("(devel)", "vcs.revision", "other", "vcs.modified", "true"),
			Info{Version: "v0.1.0-3-gabc1234", Commit: "abc1234def"}},
		{"injected dirty", "v0.1.0-dirty", "abc1234def", noBuildInfo,
			Info{Version: "v0.1.0-dirty", Commit: "abc1234def", Modified: true}},
		{"version only injected: commit from build info", "v0.1.0", "", buildInfo("(devel)", "vcs.revision", "feed", "vcs.modified", "true"),
			Info{Version: "v0.1.0", Commit: "feed", Modified: true}},
		{"go build in a checkout", "", "", buildInfo("v0.0.0-20260101000000-abcdefabcdef+dirty", "vcs.revision", "abcdefabcdef0000", "vcs.modified", "true"),
			Info{Version: "v0.0.0-20260101000000-abcdefabcdef+dirty", Commit: "abcdefabcdef0000", Modified: true}},
		{"go run outside vcs", "", "", buildInfo("(devel)"), Info{Version: "devel", Commit: "unknown"}},
		{"no build info", "", "", noBuildInfo, Info{Version: "devel", Commit: "unknown"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.want.GoVersion = runtime.Version()
			got := resolve(tc.injVersion, tc.injCommit, tc.bi)
			if got.Version != tc.want.Version || got.Commit != tc.want.Commit || got.Modified != tc.want.Modified || got.GoVersion != tc.want.GoVersion {
				t.Errorf("resolve = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTextAndLabel(t *testing.T) {
	i := Info{Version: "v1.2.3", Commit: "c0ffee", Modified: true, GoVersion: "go1.26.8"}.
		WithBPF(map[string]string{"b.o": "22", "a.o": "11"})
	want := "prog v1.2.3\ncommit c0ffee (modified)\ngo go1.26.8 " + runtime.GOOS + "/" + runtime.GOARCH +
		"\nbpf a.o sha256:11\nbpf b.o sha256:22\n"
	if got := i.Text("prog"); got != want {
		t.Errorf("Text:\n%s\nwant:\n%s", got, want)
	}
	if got := i.BPFLabel(); got != "a.o:11,b.o:22" {
		t.Errorf("BPFLabel = %q", got)
	}
	if got := (Info{}).BPFLabel(); got != "" {
		t.Errorf("BPFLabel without objects = %q", got)
	}
}

func TestCollector(t *testing.T) {
	i := Info{Version: "v1.2.3", Commit: "c0ffee", GoVersion: "go1.26.8"}.WithBPF(map[string]string{"steer_bpfel.o": "ab"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(i.Collector())
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "oakwire_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gather: %v %v", mfs, err)
	}
	m := mfs[0].GetMetric()[0]
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	want := map[string]string{"version": "v1.2.3", "commit": "c0ffee", "goversion": "go1.26.8", "bpf": "steer_bpfel.o:ab"}
	if !maps.Equal(got, want) || m.GetGauge().GetValue() != 1 {
		t.Errorf("oakwire_build_info labels %v value %v, want %v and 1", got, m.GetGauge().GetValue(), want)
	}
}

func TestRequested(t *testing.T) {
	for args, want := range map[string]bool{
		"version":                     true,
		"--version":                   true,
		"-version":                    true,
		"root --listen :1 --version":  true,
		"teardown --version":          true,
		"root --listen :1":            false,
		"":                            false,
		"root -- --version":           false,
		"root --config version":       false,
		"--config /etc/x.yaml --node": false,
	} {
		if got := Requested(strings.Fields(args)); got != want {
			t.Errorf("Requested(%q) = %v, want %v", args, got, want)
		}
	}
}

// The test binary carries no injected values: Get falls back to build info
// and never returns empty fields.
func TestGet(t *testing.T) {
	i := Get()
	if i.Version == "" || i.Commit == "" || i.GoVersion != runtime.Version() || i.BPF != nil {
		t.Errorf("Get = %+v", i)
	}
}
