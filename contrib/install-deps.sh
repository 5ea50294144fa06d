#!/usr/bin/env bash
# Installs what a fresh Debian 12 host lacks to build, demo and test flanneld-rs:
# etcd (server + etcdctl), protoc (etcd-client's build), iptables, iproute2, ping, openssl, python3.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have etcd     || need+=(etcd-server)
have etcdctl  || need+=(etcd-client)
have protoc   || need+=(protobuf-compiler)
have iptables || need+=(iptables)
have ip       || need+=(iproute2)
have bridge   || need+=(iproute2)
have ping     || need+=(iputils-ping)
have openssl  || need+=(openssl)
have python3  || need+=(python3)
have curl     || need+=(curl)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on 127.0.0.1:2379; the tests and the demo run
# their own etcd on free ports, so the packaged service is left as it is.
if ! have cargo; then
  echo "cargo not found: install Rust >= 1.85 (https://rustup.rs) and run this again" >&2
  exit 1
fi
