// Package policytest holds one test, built only with the tag policytest:
// then package policy holds a test-only balancing policy after the
// built-in ones, which would change the policy set every other control
// test sees if they were built with it.
package policytest
