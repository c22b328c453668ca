//go:build !policytest

package policy

// testOnly is empty outside a build with the tag policytest.
var testOnly []Picker
