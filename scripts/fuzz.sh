#!/usr/bin/env bash
# Runs every fuzz target of the module for a bounded time each (FUZZTIME,
# default 10s). Targets are found by name, so a new FuzzX runs without
# touching this script. The committed seeds run in plain `go test` too.
# Minimizing a new input is bounded too: unbounded, it can stop fuzzing
# for up to a minute per input (golang/go#48820).
set -euo pipefail
fuzztime=${FUZZTIME:-10s}
count=0
for f in $(git ls-files '*_test.go' 2>/dev/null || find . -name '*_test.go'); do
	dir=$(dirname "$f")
	for t in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //'); do
		echo "fuzz: $t in ./$dir for $fuzztime"
		go test -run='^$' -fuzz="^${t}\$" -fuzztime="$fuzztime" -fuzzminimizetime=5s "./$dir"
		count=$((count + 1))
	done
done
echo "fuzz: $count targets ran"
