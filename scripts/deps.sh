#!/usr/bin/env bash
# Installs what building, testing and the demo need, only when it is missing,
# so a second run costs a few milliseconds. Debian packages through apt-get,
# Go modules through the module proxy.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_cmd clang        || need+=(clang)
have_cmd llvm-strip   || need+=(llvm)
have_pkg libbpf-dev   || need+=(libbpf-dev)
have_cmd redis-server || need+=(redis-server)
have_cmd redis-cli    || need+=(redis-tools)
have_cmd iperf3       || need+=(iperf3)
have_cmd ip           || need+=(iproute2)
have_cmd ethtool      || need+=(ethtool)
have_cmd iptables     || need+=(iptables)
have_cmd nft          || need+=(nftables)
# podman (CNI backend) runs real containers on oakwire-cni in e2e's
# TestPodman; containernetworking-plugins is its CNI plugin set.
have_cmd podman       || need+=(podman)
have_pkg containernetworking-plugins || need+=(containernetworking-plugins)
have_cmd nsenter      || need+=(util-linux)
# systemd-analyze: the packaging tests verify the units with it.
have_cmd systemd-analyze || need+=(systemd)

if ((${#need[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${need[*]}; run as root (or: sudo apt-get install -y ${need[*]})" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The redis-server package starts a system-wide instance on port 6379; the
# project never uses it (tests and the demo start their own on free ports).

if ! have_cmd go; then
	echo "deps: go not found on PATH (expected /usr/local/go/bin/go)" >&2
	exit 1
fi
go mod download
