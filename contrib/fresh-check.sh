#!/usr/bin/env bash
# Proves the README's set-up path on a brand-new minimal Debian 12 root: runs
# ../shared/tools/fresh-debian-check (mmdebstrap; nothing of this machine but the Rust toolchain)
# on the committed HEAD with
#   contrib/install-deps.sh, a build of all targets, the library tests and the demo cluster
# (pass another command as one string to run that instead). Needs root. Exits non-zero, saying why,
# when the check fails or cannot run at all: it never passes silently.
#
# Two things are prepared on this machine first, neither of which a fresh user needs:
# - the crates are fetched here (`cargo fetch --locked`, into the CARGO_HOME the root shares) and
#   the root builds offline: a sandbox whose egress to crates.io goes through a TLS-intercepting
#   proxy is trusted by this machine's CA store only, not by the fresh root's;
# - the tool's cached base root is built here when missing, with mmdebstrap's tar format and the
#   first APT sources file that exists: the tool's own build of it stops on machines without
#   /etc/apt/sources.list (`ls` fails under pipefail) and names its output so that mmdebstrap
#   writes a directory, not the tarball it then unpacks.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "fresh-check: FAIL: $*" >&2; exit 1; }

tool=$(cd .. && pwd)/shared/tools/fresh-debian-check
[ -f "$tool" ] || fail "$tool not found (the project's shared/ folder belongs beside the checkout)"
[ "$(id -u)" = 0 ] || fail "needs root (chroot and mounts)"
command -v cargo >/dev/null || fail "cargo not found"
cmd=${1:-'contrib/install-deps.sh && cargo build --workspace --all-targets && cargo test --workspace --lib && contrib/demo-cluster.sh'}

cargo fetch --locked --quiet || fail "cargo fetch could not download the crates"

cache=/var/tmp/fresh-debian-check
base=$cache/bookworm-apt.tar
if [ ! -f "$base" ]; then
  echo "fresh-check: building the base Debian 12 root for fresh-debian-check (cached in $base)"
  if ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
      || fail "could not install mmdebstrap (is the Debian archive reachable?)"
  fi
  sources=
  for s in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    [ -s "$s" ] && { sources=$s; break; }
  done
  [ -n "$sources" ] || fail "no APT sources file on this machine to build a Debian root from"
  rm -rf "$base.partial"; mkdir -p "$cache"
  if ! mmdebstrap --variant=apt --format=tar --include=ca-certificates,git bookworm "$base.partial" \
      "$sources" >"$cache/mmdebstrap.log" 2>&1; then
    tail -5 "$cache/mmdebstrap.log" >&2
    fail "mmdebstrap could not build a Debian 12 root (log: $cache/mmdebstrap.log): is the Debian archive reachable?"
  fi
  mv "$base.partial" "$base"
fi

if "$tool" "export CARGO_NET_OFFLINE=true; $cmd"; then
  echo "fresh-check: PASS"
else
  fail "the command failed in a fresh Debian 12 root (exit $?): $cmd"
fi
