//go:build linux

package perf

import (
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/klauspost/cpuid/v2"
	"golang.org/x/sys/unix"
)

// Machine describes where the suite ran (STYLE.md item 14: write the
// machine into the report).
type Machine struct {
	CPU           string   `json:"cpu"`
	Vendor        string   `json:"vendor"`
	Family        int      `json:"family"`
	Model         int      `json:"model"`
	PhysicalCores int      `json:"physical_cores"`
	LogicalCores  int      `json:"logical_cores"`
	NumCPU        int      `json:"num_cpu"` // usable by this process
	Features      []string `json:"features"`
	Kernel        string   `json:"kernel"`
	KernelVersion string   `json:"kernel_version"`
	Arch          string   `json:"arch"`
	Go            string   `json:"go"`
	Iperf3        string   `json:"iperf3,omitempty"`
	// LoadAvg is /proc/loadavg at the start: other work on the machine
	// skews every number.
	LoadAvg    string `json:"load_avg"`
	Hypervisor bool   `json:"hypervisor"`
	// XDPMode is the AF_XDP dataplane's mode as it reported it (Describer
	// "xdp_mode"), or "n/a".
	XDPMode string `json:"xdp_mode"`
}

// DescribeMachine reads the CPU (cpuid), kernel (uname) and Go version.
func DescribeMachine() Machine {
	m := Machine{
		CPU:           strings.TrimSpace(cpuid.CPU.BrandName),
		Vendor:        cpuid.CPU.VendorString,
		Family:        cpuid.CPU.Family,
		Model:         cpuid.CPU.Model,
		PhysicalCores: cpuid.CPU.PhysicalCores,
		LogicalCores:  cpuid.CPU.LogicalCores,
		NumCPU:        runtime.NumCPU(),
		Features:      cpuid.CPU.FeatureSet(),
		Arch:          runtime.GOARCH,
		Go:            runtime.Version(),
		Hypervisor:    cpuid.CPU.Supports(cpuid.HYPERVISOR),
		XDPMode:       "n/a",
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
		m.KernelVersion = unix.ByteSliceToString(u.Version[:])
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("iperf3", "--version").Output(); err == nil {
		m.Iperf3, _, _ = strings.Cut(string(out), "\n")
		m.Iperf3 = strings.TrimSpace(m.Iperf3)
	}
	return m
}

// keyFeatures are the CPU features the Markdown report names (all are in
// the JSON).
var keyFeatures = []string{"SSE4", "SSE42", "AVX", "AVX2", "AVX512F", "AVX512BW", "BMI2", "AESNI", "CLMUL", "SHA", "POPCNT", "ERMS", "FSRM", "HYPERVISOR"}

func (m Machine) keyFeatures() []string {
	var out []string
	for _, f := range keyFeatures {
		for _, g := range m.Features {
			if g == f {
				out = append(out, f)
				break
			}
		}
	}
	return out
}
