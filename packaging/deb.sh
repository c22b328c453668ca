#!/usr/bin/env bash
# Builds the Debian packages with dpkg-deb (part of dpkg, on every Debian):
#   oakwire-node     netmanager and its unit; Depends nftables (it runs nft)
#   oakwire-control  servicemanager and the root and cluster units;
#                    Recommends redis-server (Redis may run elsewhere)
# Two packages because installing enables the units: a node must not
# enable control services that would fail without Redis, nor a control
# host a node daemon. Their files are packaging/manifest's, staged by
# install.sh with PREFIX=/usr and the units in /lib/systemd/system
# (bookworm's place); everything under /etc is a conffile.
#
# Environment: VERSION (git describe; scripts/version.sh), BIN (built
# binaries), DEBDIR (output, dist), GOARCH (of the binaries: go env),
# MAINTAINER.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$repo/bin}
DEBDIR=${DEBDIR:-$repo/dist}
MAINTAINER=${MAINTAINER:-Oakwire developers <maintainers@oakwire.invalid>}
if [ -z "${VERSION:-}" ]; then
	VERSION=$(bash "$repo/scripts/version.sh") || {
		echo "deb: no version: not a git checkout; set VERSION=v1.2.3" >&2
		exit 1
	}
fi
# The Debian form of the same version (see scripts/version.sh).
debver=$(bash "$repo/scripts/version.sh" --deb 2>/dev/null || true)
if [ "$(bash "$repo/scripts/version.sh" 2>/dev/null || true)" != "$VERSION" ]; then
	debver=${VERSION#v}
	debver=${debver//-/\~}
fi
goarch=${GOARCH:-$(go env GOARCH)}
case $goarch in
amd64 | arm64 | riscv64 | s390x | loong64) arch=$goarch ;;
386) arch=i386 ;;
arm) arch=armhf ;;
ppc64le) arch=ppc64el ;;
*)
	echo "deb: no Debian architecture for GOARCH=$goarch" >&2
	exit 1
	;;
esac

# Reproducible: every file dated by the commit (dpkg-deb reads the variable
# for the archive members' headers).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}

mkdir -p "$DEBDIR"
# One version per package in DEBDIR, so ./dist/oakwire-node_*.deb names one file.
rm -f "$DEBDIR"/oakwire-node_*.deb "$DEBDIR"/oakwire-control_*.deb
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for pkg in node control; do
	name=oakwire-$pkg
	stage=$work/$name
	PACKAGES=$pkg DESTDIR=$stage PREFIX=/usr UNITDIR=/lib/systemd/system BIN=$BIN \
		bash "$repo/packaging/install.sh" install >/dev/null
	units=$(awk -v p="$pkg" '$1 == p && $2 == "unit" { n = split($4, s, "/"); printf "%s%s", sep, s[n]; sep = " " }' "$repo/packaging/manifest")
	mkdir -p "$stage/DEBIAN"
	size=$(du -sk "$stage" | cut -f1)
	sed -e "s|@VERSION@|$debver|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@SIZE@|$size|" \
		"$repo/packaging/$name.control" >"$stage/DEBIAN/control"
	(cd "$stage" && find etc -type f | sort | sed 's|^|/|') >"$stage/DEBIAN/conffiles"
	(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort | xargs md5sum) >"$stage/DEBIAN/md5sums"
	for script in postinst prerm postrm; do
		awk -v units="$units" -v pkg="$name" -v purge="$repo/packaging/$name.purge" '
			/^@PURGE@$/ { while ((getline l < purge) > 0) print l; next }
			{ gsub(/@UNITS@/, units); gsub(/@PACKAGE@/, pkg); print }' \
			"$repo/packaging/$script" >"$stage/DEBIAN/$script"
		chmod 0755 "$stage/DEBIAN/$script"
	done
	chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
	find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	out=$DEBDIR/${name}_${debver}_${arch}.deb
	# xz -3: 2.5x faster than the default -6 on Go binaries, 5 % larger.
	dpkg-deb --root-owner-group -Zxz -z3 --build "$stage" "$out" >/dev/null
	echo "built $out"
done
