#!/bin/bash
# Classic routes against nexthop objects, as the kernel takes them (issue 12, item 6):
# the time `ip -batch` needs to add N host-gw-style routes (one gateway each, on one device,
# protocol 70) in a fresh network namespace, without any agent.
#
#   contrib/bench-nexthop.sh [N ...]        (root; default 1000 5000 10000, two runs each)
#
# classic: `route add <dst> via <gw> dev eth0 proto 70`, as flanneld (Go and ours) adds them.
# nexthop: `nexthop add id <i> via <gw> dev eth0 proto 70` then `route add <dst> nhid <i>`,
# two requests per peer.
set -euo pipefail
sizes=("${@:-1000}")
[ $# -eq 0 ] && sizes=(1000 5000 10000)
ns="nhbench$$"
batch="$(mktemp)"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -f "$batch"; }
trap cleanup EXIT

run() {
    local n=$1 style=$2
    ip netns add "$ns"
    ip -n "$ns" link add eth0 type veth peer name eth1
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set eth1 up
    ip -n "$ns" addr add 192.168.0.10/16 dev eth0
    python3 - "$n" "$style" > "$batch" <<'PY'
import sys
n, style = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    gw = f"192.168.{1 + (i // 250) % 250}.{1 + i % 250}"
    dst = f"10.{1 + i // 256}.{i % 256}.0/24"
    if style == "classic":
        print(f"route add {dst} via {gw} dev eth0 proto 70")
    else:
        print(f"nexthop add id {i + 1} via {gw} dev eth0 proto 70")
        print(f"route add {dst} nhid {i + 1} proto 70")
PY
    local start end
    start=$(date +%s%N)
    ip -n "$ns" -batch "$batch"
    end=$(date +%s%N)
    local routes
    routes=$(ip -n "$ns" route show proto 70 | wc -l)
    printf '| %s | %s | %.1f | %s |\n' "$n" "$style" "$(( (end - start) / 100000 ))e-1" "$routes"
    ip netns del "$ns"
}

echo "| routes | style | ip -batch (ms) | routes in the kernel |"
echo "|---:|---|---:|---:|"
for n in "${sizes[@]}"; do
    for _ in 1 2; do
        run "$n" classic
        run "$n" nexthop
    done
done
