// Package version says which build a binary is: the version `git describe`
// gave when it was built, its commit, the Go toolchain and, for the node
// daemon, the SHA-256 of every BPF object compiled in. `--version`,
// netmanager's /status and every role's /metrics (oakwire_build_info)
// report the same Info, so an operator can tell from any of them what runs.
//
// The Makefile injects the version and commit at link time:
//
//	-X github.com/oakwire/oakwire/internal/version.version=v0.1.0-3-gabc1234
//	-X github.com/oakwire/oakwire/internal/version.commit=<full commit hash>
//
// A binary built without them (go build, go run, go install) falls back to
// what the toolchain stamps into it (runtime/debug.ReadBuildInfo: the
// module version, vcs.revision, vcs.modified).
package version

import (
	"fmt"
	"maps"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
)

// Set with -ldflags -X (see the package comment); empty otherwise.
var version, commit string

// Info is one build's identity.
type Info struct {
	// Version is `git describe --tags --dirty` at build time ("v0.1.0",
	// "v0.1.0-3-gabc1234-dirty"), else the module version the toolchain
	// stamped, else "devel".
	Version string `json:"version"`
	// Commit is the full commit hash, or "unknown".
	Commit string `json:"commit"`
	// Modified says the working tree had uncommitted changes.
	Modified bool `json:"modified"`
	// GoVersion is the toolchain that built the binary ("go1.26.8").
	GoVersion string `json:"go_version"`
	// BPF maps each embedded BPF object's file name to the hex SHA-256 of
	// its bytes (bpfprog.ObjectHashes); empty for binaries without BPF.
	BPF map[string]string `json:"bpf,omitempty"`
}

// Get returns this binary's Info, without BPF objects (see WithBPF).
func Get() Info { return get() }

var get = sync.OnceValue(func() Info { return resolve(version, commit, debug.ReadBuildInfo) })

// resolve prefers the injected values and fills what is missing from the
// build info.
func resolve(injVersion, injCommit string, readBuildInfo func() (*debug.BuildInfo, bool)) Info {
	i := Info{Version: injVersion, Commit: injCommit, GoVersion: runtime.Version()}
	var rev string
	var modified bool
	if bi, ok := readBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if i.Version == "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
	}
	if i.Commit != "" {
		// Injected together with the version, which then says -dirty.
		i.Modified = strings.HasSuffix(i.Version, "-dirty")
	} else {
		i.Commit, i.Modified = rev, modified
	}
	if i.Version == "" {
		i.Version = "devel"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}

// WithBPF returns a copy of i that names the BPF objects (file name → hex
// SHA-256) the binary carries.
func (i Info) WithBPF(objects map[string]string) Info {
	i.BPF = maps.Clone(objects)
	return i
}

// BPFLabel is the BPF objects as one string, "name:sha256,name:sha256"
// sorted by name; "" without objects. It is the bpf label of
// oakwire_build_info.
func (i Info) BPFLabel() string {
	parts := make([]string, 0, len(i.BPF))
	for _, name := range slices.Sorted(maps.Keys(i.BPF)) {
		parts = append(parts, name+":"+i.BPF[name])
	}
	return strings.Join(parts, ",")
}

// Text is the answer to `program --version`: the version on the first line,
// then one "key value" line per fact.
func (i Info) Text(program string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", program, i.Version)
	fmt.Fprintf(&b, "commit %s", i.Commit)
	if i.Modified {
		b.WriteString(" (modified)")
	}
	fmt.Fprintf(&b, "\ngo %s %s/%s\n", i.GoVersion, runtime.GOOS, runtime.GOARCH)
	for _, name := range slices.Sorted(maps.Keys(i.BPF)) {
		fmt.Fprintf(&b, "bpf %s sha256:%s\n", name, i.BPF[name])
	}
	return b.String()
}

// Requested reports whether a command line asks for the version:
// `version` as the first argument, or -version / --version before "--".
func Requested(args []string) bool {
	if len(args) > 0 && args[0] == "version" {
		return true
	}
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-version", "--version":
			return true
		}
	}
	return false
}
