#!/usr/bin/env bash
# Installs missing packages, then runs the whole test suite: unit tests, etcd tests (real etcd over
# TLS on loopback) and end-to-end tests in network namespaces. Needs root (namespaces, iptables).
set -euo pipefail
cd "$(dirname "$0")/.."
./contrib/install-deps.sh
cargo build --workspace --bins
cargo test --workspace
