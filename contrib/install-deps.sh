#!/usr/bin/env bash
# install-deps.sh [--release]
# Installs what a fresh Debian 12 host lacks to build, demo and test flanneld-rs, checking for the
# files the build needs (not only for commands):
#   build:  a C toolchain for build scripts (gcc, libc6-dev), protoc and the protobuf well-known
#           includes for etcd-client's build (protobuf-compiler, libprotobuf-dev)
#   run:    iproute2, iptables (legacy and nft flavours), nftables, procps (sysctl)
#   tests:  etcd (server and etcdctl), ping, openssl, python3, curl, supervisord (the supervisor
#           test), systemd-analyze (the unit file check)
# With --release (contrib/release.sh), only the build's and the static release build's:
#   release: musl-gcc for the C parts of the static binary (musl-tools), readelf (binutils)
# Prints what it installs and why; fails naming the package apt could not install.
set -euo pipefail
case "${1:-}" in
  "") release=0 ;;
  --release) release=1 ;;
  *) echo "usage: install-deps.sh [--release]" >&2; exit 2 ;;
esac

need=()         # Debian packages to install
why=()          # "package (missing: what)" for the log line
want() {        # PACKAGE WHAT: PACKAGE is needed because WHAT is missing
  local p
  for p in "${need[@]}"; do [ "$p" = "$1" ] && return 0; done
  need+=("$1"); why+=("$1 (missing: $2)")
}
cmd() { command -v "$1" >/dev/null 2>&1 || want "$2" "command $1"; }
file() { [ -e "$1" ] || want "$2" "$1"; }

cmd cc gcc
file /usr/include/stdio.h libc6-dev
cmd protoc protobuf-compiler
file /usr/include/google/protobuf/descriptor.proto libprotobuf-dev
if [ "$release" = 1 ]; then
  cmd musl-gcc musl-tools
  cmd readelf binutils
else
  cmd ip iproute2
  cmd bridge iproute2
  cmd iptables iptables
  cmd iptables-legacy iptables
  cmd iptables-nft iptables
  cmd nft nftables
  cmd sysctl procps
  cmd etcd etcd-server
  cmd etcdctl etcd-client
  cmd ping iputils-ping
  cmd openssl openssl
  cmd python3 python3
  cmd curl curl
  cmd supervisord supervisor
  cmd systemd-analyze systemd
fi

install_all() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ((${#need[@]})); then
  printf 'install-deps: installing %s\n' "${why[@]}"
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-deps: cannot install (needs root and apt-get); install these packages: ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq || { echo "install-deps: 'apt-get update' failed: check /etc/apt/sources.list and the network" >&2; exit 1; }
  if ! install_all "${need[@]}"; then
    for p in "${need[@]}"; do
      install_all "$p" || { echo "install-deps: apt-get could not install package '$p'" >&2; exit 1; }
    done
  fi
fi
# Debian's etcd-server package starts a system etcd on 127.0.0.1:2379 where an init system runs; the
# tests and the demo run their own etcd on free ports, so the packaged service is left as it is.

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found: install Rust >= 1.85 (https://rustup.rs) and run this again" >&2
  exit 1
fi
rustc_version=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n1.85.0\n' "$rustc_version" | sort -V | head -1)" != 1.85.0 ]; then
  echo "install-deps: rustc $rustc_version is too old: flanneld-rs needs Rust >= 1.85 (rustup update)" >&2
  exit 1
fi
