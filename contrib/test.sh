#!/usr/bin/env bash
# Installs missing packages, then runs the whole test suite: unit tests, etcd tests (real etcd over
# TLS on loopback or in a namespace) and end-to-end tests in network namespaces. Needs root
# (namespaces, iptables). Ends with one summary line: "<N> passed, <M> failed".
set -euo pipefail
cd "$(dirname "$0")/.."
./contrib/install-deps.sh
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
