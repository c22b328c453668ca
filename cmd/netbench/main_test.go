//go:build linux

package main

import "testing"

func TestRunUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want int
	}{
		{nil, 2}, {[]string{"nope"}, 2}, {[]string{"help"}, 0},
		{[]string{"bench", "--no-such-flag"}, 2},
		{[]string{"rr", "--dst", "not-an-address"}, 1},
	} {
		if got := run(c.args); got != c.want {
			t.Errorf("run(%q) = %d, want %d", c.args, got, c.want)
		}
	}
}
