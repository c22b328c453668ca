//go:build !race

// Package raceflag tells tests whether the race detector is on. Resource
// measurements (idle CPU of a daemon) are meaningless under its 5-10x
// overhead; they run in the plain test pass and are skipped in the race pass.
package raceflag

// Enabled reports whether the binary was built with -race.
const Enabled = false
