#!/usr/bin/env bash
# release-check.sh: proves the release (contrib/release.sh, run first) where operators install it:
#   1. the tarball's flanneld starts in an empty root directory (nothing else in it);
#   2. in a Debian 11 root (mmdebstrap bullseye: glibc 2.31, iptables 1.8.7), the tarball installed
#      the seed's way (tar xf into /opt/flanneld-rs-v<version>, ln -s to /opt/flannel) starts, and
#      the .deb installs with dpkg -i, leaving flanneld on PATH, the unit and /etc/default/flanneld
#      (a conffile) in place;
#   3. the .rpm's file list holds the binary and the unit (rpm -qlp);
#   4. the released binary runs host 0 of a three-host cluster inside that root with the root's own
#      iptables (nft flavour on host-gw, legacy on vxlan) beside agents of the normal build: pods
#      reach each other with their own addresses, the outside sees the host's
#      (tests/tests/release_bullseye.rs, run with FLANNELD_RELEASE_ROOT).
# Needs root (chroot, mounts, namespaces). The Debian 11 base is built once and cached in
# /var/tmp/flanneld-rs-release-check; each run unpacks a fresh copy and deletes it. .ci/run calls
# this after the suite. Prints "release-check: PASS" last, or fails naming the step.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "release-check: FAIL: $*" >&2; exit 1; }
say() { echo "release-check: $*"; }
[ "$(id -u)" = 0 ] || fail "needs root (chroot, mounts, network namespaces)"
started=$(date +%s)

./contrib/release.sh
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
tarball=dist/flanneld-rs-v$version-linux-amd64.tar.gz
deb=$(ls dist/flanneld-rs_"$version"-*_amd64.deb)
rpm=$(ls dist/flanneld-rs-"$version"-*.x86_64.rpm)
(cd dist && sha256sum --quiet -c SHA256SUMS) || fail "dist/SHA256SUMS does not match the files"

cache=/var/tmp/flanneld-rs-release-check
base=$cache/bullseye.tar
if [ ! -s "$base" ]; then
  command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
    || fail "could not install mmdebstrap"
  say "building the Debian 11 root (once; cached in $base)"
  mkdir -p "$cache"
  mmdebstrap --variant=apt --include=iptables,iproute2,procps --format=tar bullseye "$base.partial" \
    "deb http://deb.debian.org/debian bullseye main" >"$cache/mmdebstrap.log" 2>&1 \
    || { tail -5 "$cache/mmdebstrap.log" >&2; fail "mmdebstrap bullseye failed (log: $cache/mmdebstrap.log)"; }
  mv "$base.partial" "$base"
fi
command -v rpm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rpm >/dev/null \
  || fail "could not install rpm (for rpm -qlp)"

work=$(mktemp -d /var/tmp/flanneld-rs-release-check.XXXXXX)
cleanup() {
  if awk -v r="$work" 'index($2, r "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    echo "release-check: something is still mounted under $work; not deleting it" >&2
  else
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT

# 1. An empty root: the binary alone.
mkdir "$work/empty" "$work/unpacked"
tar -xzf "$tarball" -C "$work/unpacked"
cp "$work/unpacked/flanneld" "$work/empty/"
said=$(chroot "$work/empty" /flanneld --version 2>&1) || fail "flanneld does not start in an empty root: $said"
[ "$said" = "v$version" ] || fail "flanneld --version in an empty root said '$said'"
say "empty root: 'flanneld --version' says $said"

# 2. Debian 11: the tarball the seed's way, then the .deb.
root=$work/bullseye
mkdir "$root" && tar -xf "$base" -C "$root"
mkdir -p "$root/opt/flanneld-rs-v$version"
tar -xzf "$tarball" -C "$root/opt/flanneld-rs-v$version"
ln -s "/opt/flanneld-rs-v$version" "$root/opt/flannel"
said=$(chroot "$root" /opt/flannel/flanneld --version 2>&1) || fail "the tarball's flanneld does not start on Debian 11: $said"
[ "$said" = "v$version" ] || fail "/opt/flannel/flanneld --version on Debian 11 said '$said'"
say "Debian 11 ($(chroot "$root" ldd --version | head -1 | awk '{print "glibc " $NF}'), $(chroot "$root" iptables --version)): /opt/flannel/flanneld --version says $said"
cp "$deb" "$root/tmp/"
chroot "$root" dpkg -i "/tmp/$(basename "$deb")" >/dev/null || fail "dpkg -i $(basename "$deb") failed on Debian 11"
[ "$(chroot "$root" sh -c 'command -v flanneld')" = /usr/bin/flanneld ] || fail "the .deb left no flanneld on PATH"
chroot "$root" flanneld --version 2>&1 | grep -qx "v$version" || fail "the .deb's flanneld does not start"
unit=$(chroot "$root" dpkg -L flanneld-rs | grep '/systemd/system/flanneld.service$') || fail "the .deb installed no flanneld.service"
chroot "$root" dpkg-query -W -f='${Conffiles}' flanneld-rs | grep -q ' /etc/default/flanneld ' \
  || fail "/etc/default/flanneld is not a conffile of the .deb"
say "Debian 11: dpkg -i installed /usr/bin/flanneld, $unit and the conffile /etc/default/flanneld"

# 3. The .rpm's content.
files=$(rpm -qlp "$rpm" 2>/dev/null)
for f in /usr/bin/flanneld /usr/lib/systemd/system/flanneld.service /etc/default/flanneld; do
  grep -qx "$f" <<<"$files" || fail "$(basename "$rpm") does not hold $f"
done
rpm -qcp "$rpm" 2>/dev/null | grep -qx /etc/default/flanneld || fail "/etc/default/flanneld is not a config file of the .rpm"
say "rpm -qlp: $(wc -l <<<"$files") files, /usr/bin/flanneld and the unit among them"

# 4. The lab: the released binary as host 0's agent, with the root's iptables.
say "the released agent on Debian 11 beside the normal build (tests/tests/release_bullseye.rs)"
cargo build --quiet -p flanneld
FLANNELD_RELEASE_ROOT=$root cargo test --quiet -p flanneld-tests --test release_bullseye -- --ignored \
  || fail "the cluster with the released agent on Debian 11 failed its checks"

say "PASS in $(($(date +%s) - started)) s"
