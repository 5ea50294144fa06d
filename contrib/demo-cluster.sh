#!/usr/bin/env bash
# A three-host host-gw cluster on this machine: a TLS etcd, three hosts and a pod on each, all as
# network namespaces on one bridge. Runs flanneld on every host, then prints pod-to-pod pings and
# the source IP each pod saw. Everything it creates is removed on exit. Needs root.
#
#   contrib/demo-cluster.sh [--backend host-gw|vxlan] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
backend=host-gw
keep=no
while (($#)); do
  case "$1" in
    --backend) backend=$2; shift 2 ;;
    --keep) keep=yes; shift ;;
    *) echo "usage: $0 [--backend host-gw|vxlan] [--keep]" >&2; exit 2 ;;
  esac
done

./contrib/install-deps.sh
cargo build --release -q -p flanneld
bin=$PWD/target/release/flanneld
[ -n "${CARGO_TARGET_DIR:-}" ] && bin=$CARGO_TARGET_DIR/release/flanneld

id=demo$$
work=$(mktemp -d /tmp/flanneld-demo.XXXXXX)
pids=()
nss=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "${nss[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
if [ "$keep" = no ]; then trap cleanup EXIT; else trap 'echo "kept: namespaces ${nss[*]}, files in $work"' EXIT; fi

mkns() { ip netns add "$1"; nss+=("$1"); ip -n "$1" link set lo up; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

echo "== certificates (CA, etcd server, client) in $work"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=demo-ca" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout "$work/$who.key" -out "$work/$who.csr" 2>/dev/null
  printf 'subjectAltName=IP:192.168.100.2,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$work/$who.ext"
  openssl x509 -req -in "$work/$who.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
    -extfile "$work/$who.ext" -out "$work/$who.pem" 2>/dev/null
done

echo "== namespaces: switch, etcd, 3 hosts (192.168.100.11-13), a pod per host"
mkns "$id-sw"; nsx "$id-sw" ip link add br0 type bridge; nsx "$id-sw" ip link set br0 up
port=0
plug() { # ns addr
  ip -n "$id-sw" link add "p$port" type veth peer name eth0 netns "$1"
  ip -n "$id-sw" link set "p$port" master br0 up; port=$((port + 1))
  ip -n "$1" addr add "$2/24" dev eth0; ip -n "$1" link set eth0 up
}
mkns "$id-etcd"; plug "$id-etcd" 192.168.100.2
for h in 1 2 3; do mkns "$id-h$h"; plug "$id-h$h" "192.168.100.1$h"; nsx "$id-h$h" sysctl -qw net.ipv4.ip_forward=1; done

echo "== etcd over mutual TLS at https://192.168.100.2:2379"
nsx "$id-etcd" etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls https://192.168.100.2:2379 --advertise-client-urls https://192.168.100.2:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo=http://127.0.0.1:2380 --client-cert-auth --trusted-ca-file "$work/ca.pem" \
  --cert-file "$work/server.pem" --key-file "$work/server.key" >"$work/etcd.log" 2>&1 &
pids+=($!)
etcdctl() { nsx "$id-etcd" env ETCDCTL_API=3 etcdctl --endpoints https://192.168.100.2:2379 \
  --cacert "$work/ca.pem" --cert "$work/client.pem" --key "$work/client.key" "$@"; }
for _ in $(seq 50); do etcdctl endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
config="{\"Network\":\"172.7.0.0/16\",\"Backend\":{\"Type\":\"$backend\"}}"
etcdctl put /coreos.com/network/config "$config" >/dev/null
echo "   config: $config"

echo "== flanneld on each host"
for h in 1 2 3; do
  nsx "$id-h$h" "$bin" --etcd-endpoints=https://192.168.100.2:2379 --etcd-cafile="$work/ca.pem" \
    --etcd-certfile="$work/client.pem" --etcd-keyfile="$work/client.key" --iface=eth0 \
    --public-ip="192.168.100.1$h" --subnet-file="$work/h$h.env" --ip-masq --healthz-port=2401 \
    >"$work/h$h.log" 2>&1 &
  pids+=($!)
done
for h in 1 2 3; do
  for _ in $(seq 100); do [ -s "$work/h$h.env" ] && break; sleep 0.1; done
  [ -s "$work/h$h.env" ] || { echo "host $h wrote no subnet.env; its log:"; cat "$work/h$h.log"; exit 1; }
  echo "   host $h: $(tr '\n' ' ' < "$work/h$h.env")"
done

declare -A podip
for h in 1 2 3; do
  subnet=$(sed -n 's/^FLANNEL_SUBNET=//p' "$work/h$h.env"); gw=${subnet%/*}; len=${subnet#*/}
  podip[$h]=${gw%.*}.2
  mkns "$id-p$h"
  nsx "$id-h$h" ip link add cni0 type bridge; nsx "$id-h$h" ip addr add "$subnet" dev cni0; nsx "$id-h$h" ip link set cni0 up
  ip -n "$id-h$h" link add vp0 type veth peer name eth0 netns "$id-p$h"
  ip -n "$id-h$h" link set vp0 master cni0 up
  ip -n "$id-p$h" addr add "${podip[$h]}/$len" dev eth0; ip -n "$id-p$h" link set eth0 up
  ip -n "$id-p$h" route add default via "$gw"
  nsx "$id-p$h" python3 contrib/whoami.py 8080 & pids+=($!)
done
for h in 1 2 3; do
  for _ in $(seq 100); do nsx "$id-p$h" curl -s -m1 http://127.0.0.1:8080/ >/dev/null && break; sleep 0.1; done
  nsx "$id-p$h" curl -s -m1 http://127.0.0.1:8080/ >/dev/null || { echo "whoami in pod $h is not answering"; exit 1; }
done
for h in 1 2 3; do  # each host has a route (proto 70) to each of the other two pod subnets
  for _ in $(seq 100); do [ "$(nsx "$id-h$h" ip route show proto 70 | wc -l)" -ge 2 ] && break; sleep 0.1; done
  echo "== routes on host $h"; nsx "$id-h$h" ip route | grep -v "^192.168.100\|cni0" | sed "s/^/   /"
done

echo "== pod to pod"
fail=0
for s in 1 2 3; do for d in 1 2 3; do
  [ "$s" = "$d" ] && continue
  if nsx "$id-p$s" ping -c1 -W2 "${podip[$d]}" >/dev/null; then ping=ok; else ping=FAIL; fail=1; fi
  seen=$(nsx "$id-p$s" curl -s -m3 "http://${podip[$d]}:8080/" || echo "no answer")
  verdict=$([ "$seen" = "${podip[$s]}" ] && echo "pod IP kept" || echo "NOT the pod IP")
  [ "$seen" = "${podip[$s]}" ] || fail=1
  printf '   pod %s (%s) -> pod %s (%s): ping %s, pod %s saw source %s (%s)\n' \
    "$s" "${podip[$s]}" "$d" "${podip[$d]}" "$ping" "$d" "$seen" "$verdict"
done; done
[ "$fail" = 0 ] && echo "== all pods reach each other with their own source IPs" || echo "== FAILURES above; agent logs in $work (use --keep)"
exit $fail
