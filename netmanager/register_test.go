package netmanager

import "testing"

// TestClusterTarget: the cluster addresses POST /register and the cluster
// key take, and what each becomes.
func TestClusterTarget(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"198.18.0.4", "198.18.0.4:10110", true}, // Oakestra's node engine: a bare host
		{"198.18.0.4:10111", "198.18.0.4:10111", true},
		{"cluster.example", "cluster.example:10110", true},
		{"fd00::4", "[fd00::4]:10110", true},
		{"[fd00::4]", "[fd00::4]:10110", true},
		{"[fd00::4]:9", "[fd00::4]:9", true},
		{"http://cluster.example:8080/", "http://cluster.example:8080", true},
		{"https://cluster.example", "https://cluster.example", true},
		{" 198.18.0.4 ", "198.18.0.4:10110", true},
		{"", "", false},
		{"bad host!", "", false},
		{"198.18.0.4:0", "", false},
		{"198.18.0.4:65536", "", false},
		{"198.18.0.4:http", "", false},
		{"ftp://cluster.example", "", false},
		{"http://cluster.example/api", "", false},
		{"http://user@cluster.example", "", false},
		{"::ffff:198.18.0.4", "", false},
		{"0.0.0.0", "", false},
		{"-bad.example", "", false},
	} {
		got, err := clusterTarget(tc.in, DefaultClusterPort)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("clusterTarget(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
