#!/usr/bin/env bash
# Prints the version of this checkout, as the binaries and packages carry it.
#
#   version.sh          git describe --tags --match 'v[0-9]*' --dirty --abbrev=12:
#                       v0.1.0, v0.1.0-3-gabc123456789, ...-dirty. Before the first
#                       such tag: v0.0.0-<commits>-g<hash>[-dirty], the same shape,
#                       so the first tag sorts after every build before it.
#   version.sh --deb    the same as a Debian version: 0.1.0, 0.1.0+3.gabc123456789,
#                       0.0.0+42.gabc123456789.dirty (a tag's "-rc1" becomes "~rc1",
#                       which sorts before the release).
#
# Outside a git checkout it prints nothing and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
git rev-parse --git-dir >/dev/null 2>&1 || exit 1

if ! v=$(git describe --tags --match 'v[0-9]*' --dirty --abbrev=12 2>/dev/null); then
	v="v0.0.0-$(git rev-list --count HEAD)-g$(git rev-parse --short=12 HEAD)"
	[ -z "$(git status --porcelain --untracked-files=no)" ] || v+=-dirty
fi
if [ "${1:-}" != --deb ]; then
	echo "$v"
	exit 0
fi

# vTAG[-N-gHASH][-dirty] → TAG (- → ~)[+N.gHASH][.dirty or +dirty]
rest=${v#v}
dirty=
if [[ $rest == *-dirty ]]; then
	rest=${rest%-dirty}
	dirty=dirty
fi
local_part=
if [[ $rest =~ ^(.*)-([0-9]+)-g([0-9a-f]+)$ ]]; then
	rest=${BASH_REMATCH[1]}
	local_part="${BASH_REMATCH[2]}.g${BASH_REMATCH[3]}"
fi
deb=${rest//-/\~}
if [ -n "$local_part" ] || [ -n "$dirty" ]; then
	deb+="+${local_part}${local_part:+${dirty:+.}}${dirty}"
fi
echo "$deb"
