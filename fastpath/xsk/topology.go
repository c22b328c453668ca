package xsk

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/klauspost/cpuid/v2"
)

// Topology describes the machine for worker placement and for benchmark
// reports (STYLE.md item 14: write the machine into the report).
type Topology struct {
	Brand          string // CPU brand string
	Vendor         string
	NumCPU         int // CPUs this process may run on (runtime.NumCPU: affinity mask)
	LogicalCores   int // logical cores the CPU reports (cpuid), 0 if unknown
	PhysicalCores  int // physical cores the CPU reports (cpuid), 0 if unknown
	ThreadsPerCore int
	Features       []string // the features that matter to packet code, present ones only
}

// interesting are the cpuid features worth reporting for packet processing
// (checksums, hashing, copies).
var interesting = []struct {
	name string
	id   cpuid.FeatureID
}{
	{"SSE4.2", cpuid.SSE42},
	{"AVX2", cpuid.AVX2},
	{"AVX512F", cpuid.AVX512F},
	{"BMI2", cpuid.BMI2},
	{"AES", cpuid.AESNI},
	{"PCLMULQDQ", cpuid.CLMUL},
	{"ERMS", cpuid.ERMS},
	{"FSRM", cpuid.FSRM},
	{"ASIMD", cpuid.ASIMD},
	{"CRC32", cpuid.CRC32},
}

// DetectTopology reads cpuid and the runtime.
func DetectTopology() Topology {
	c := &cpuid.CPU
	t := Topology{
		Brand:          strings.TrimSpace(c.BrandName),
		Vendor:         c.VendorString,
		NumCPU:         runtime.NumCPU(),
		LogicalCores:   c.LogicalCores,
		PhysicalCores:  c.PhysicalCores,
		ThreadsPerCore: c.ThreadsPerCore,
	}
	for _, f := range interesting {
		if c.Supports(f.id) {
			t.Features = append(t.Features, f.name)
		}
	}
	return t
}

// Has reports whether the named feature (as in Features) is present.
func (t Topology) Has(feature string) bool {
	for _, f := range t.Features {
		if f == feature {
			return true
		}
	}
	return false
}

// SuggestWorkers suggests how many data-plane workers to run: half the
// usable CPUs, at least one. A worker spins while busy, and on this
// machine's kind most of its time is the kernel's copy-mode transmit, so
// leaving the other half to applications (and the kernel work they cause)
// measured better than a worker per CPU (DESIGN.md: workers sharing the
// sender's CPU throttle it). With SMT, count physical cores when cpuid
// knows them, so two workers never share a core.
func (t Topology) SuggestWorkers() int {
	n := t.NumCPU
	if t.ThreadsPerCore > 1 && t.PhysicalCores > 0 && t.LogicalCores > 0 && t.NumCPU >= t.LogicalCores {
		n = t.PhysicalCores
	}
	return max(1, n/2)
}

// String is a one-line summary for logs and benchmark reports.
func (t Topology) String() string {
	return fmt.Sprintf("%s (%s), %d CPUs usable, %d logical/%d physical cores, %d threads/core, features [%s], suggested workers %d",
		t.Brand, t.Vendor, t.NumCPU, t.LogicalCores, t.PhysicalCores, t.ThreadsPerCore,
		strings.Join(t.Features, " "), t.SuggestWorkers())
}
