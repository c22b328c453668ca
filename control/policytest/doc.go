// Package policytest holds one test in a binary of its own: it registers a
// test-only balancing policy in the fast path's global registry, which would
// change the policy set seen by every other control test if it ran in theirs.
package policytest
