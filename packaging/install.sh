#!/usr/bin/env bash
# Installs or uninstalls the files of packaging/manifest: `make install`,
# `make uninstall`, and `make deb`, which stages each package with it.
#
#   install.sh install|uninstall
#
# Environment (the Makefile passes its variables):
#   DESTDIR   staging root; empty: the live system
#   PREFIX    /usr/local by default
#   BINDIR    $PREFIX/bin
#   UNITDIR   $PREFIX/lib/systemd/system (on systemd's search path for /usr/local too)
#   BIN       where the binaries were built: bin
#   PACKAGES  whose files: "node control" (both)
# Configuration goes to /etc/oakwire whatever the prefix: the units name it.
#
# install replaces binaries and units. A configuration file that exists is
# the operator's: it is kept, and named.
# uninstall removes binaries and units, and a configuration file only while
# it is still what install put there (the bytes of its source): one the
# operator changed (a token, a node id) stays, and is named. Then it removes
# /etc/oakwire and the unit directory if empty and, under a DESTDIR, every
# directory on the way that is left empty, so a staging tree ends empty
# (on the live system /usr/local/bin and the like stay). On the live system it
# disables (and, under a running systemd, stops) the units before removing
# them, and reloads systemd after either action.
set -euo pipefail

action=${1:-}
case $action in
install | uninstall) ;;
*)
	echo "usage: $0 install|uninstall" >&2
	exit 2
	;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
CONFDIR=/etc/oakwire
BIN=${BIN:-$repo/bin}
PACKAGES=${PACKAGES:-node control}
live_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

# entries prints "kind mode source destination" for the selected packages.
entries() {
	local pkg kind mode src dir
	while read -r pkg kind mode src; do
		case $pkg in '' | '#'*) continue ;; esac
		[[ " $PACKAGES " == *" $pkg "* ]] || continue
		case $kind in
		bin) dir=$BINDIR ;;
		unit) dir=$UNITDIR ;;
		conf) dir=$CONFDIR ;;
		*)
			echo "manifest: unknown kind $kind" >&2
			exit 1
			;;
		esac
		echo "$kind $mode $src $dir/$(basename "$src")"
	done <"$repo/packaging/manifest"
}

# source_of prints the path of what install puts at a destination.
source_of() {
	local kind=$1 src=$2
	case $kind in
	bin) echo "$BIN/$src" ;;
	unit)
		local out
		out=$(mktemp)
		sed "s|@BINDIR@|$BINDIR|g" "$repo/$src" >"$out"
		if grep -q '@[A-Z]*@' "$out"; then
			echo "$src: a placeholder is left: $(grep -o '@[A-Z]*@' "$out" | head -1)" >&2
			exit 1
		fi
		echo "$out"
		;;
	conf) echo "$repo/$src" ;;
	esac
}

units() { entries | awk '$1 == "unit" { n = split($4, p, "/"); print p[n] }'; }

do_install() {
	local kind mode src dest from
	while read -r kind mode src dest; do
		from=$(source_of "$kind" "$src")
		if [ "$kind" = bin ] && [ ! -x "$from" ]; then
			echo "install: $from missing: build it first (make install does)" >&2
			exit 1
		fi
		if [ "$kind" = conf ] && [ -e "$DESTDIR$dest" ]; then
			echo "kept      $dest (exists)"
			if [ "$mode" = 0600 ] && [ "$(stat -c %a "$DESTDIR$dest")" != 600 ]; then
				echo "warning: $dest is mode $(stat -c %a "$DESTDIR$dest") but holds a secret: chmod 600 $dest" >&2
			fi
			continue
		fi
		install -D -m "$mode" "$from" "$DESTDIR$dest"
		[ "$kind" = unit ] && rm -f "$from"
		echo "installed $dest"
	done < <(entries)
	if live_systemd; then
		systemctl daemon-reload
	fi
}

do_uninstall() {
	local kind mode src dest from dirs=() u
	if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null 2>&1; then
		for u in $(units); do
			[ -e "$UNITDIR/$u" ] || continue
			if live_systemd; then
				systemctl stop "$u" || true
			fi
			systemctl disable --quiet "$u" 2>/dev/null || true
		done
	fi
	while read -r kind mode src dest; do
		dirs+=("$(dirname "$dest")")
		[ -e "$DESTDIR$dest" ] || continue
		if [ "$kind" = conf ] && ! cmp -s "$repo/$src" "$DESTDIR$dest"; then
			echo "kept      $dest (changed since install)"
			continue
		fi
		rm -f "$DESTDIR$dest"
		echo "removed   $dest"
	done < <(entries)
	rmdir "$DESTDIR$CONFDIR" 2>/dev/null || true
	if [ -z "$DESTDIR" ]; then
		# The unit directory install may have made (/usr/local/lib/systemd/system),
		# if nothing else is in it.
		if rmdir "$UNITDIR" 2>/dev/null && [ "$(basename "$(dirname "$UNITDIR")")" = systemd ]; then
			rmdir "$(dirname "$UNITDIR")" 2>/dev/null || true
		fi
	else
		local d
		for d in $(printf '%s\n' "${dirs[@]}" | sort -u); do
			while [ "$d" != / ]; do
				if [ -d "$DESTDIR$d" ]; then
					rmdir "$DESTDIR$d" 2>/dev/null || break
				fi
				d=$(dirname "$d")
			done
		done
	fi
	if live_systemd; then
		systemctl daemon-reload
	fi
}

"do_$action"
