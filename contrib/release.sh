#!/usr/bin/env bash
# release.sh: builds a release of flanneld-rs into dist/, the way flannel ships its own:
#   flanneld-rs-v<version>-linux-amd64.tar.gz  flanneld, mk-docker-opts.sh, README.md (the operator's
#                                              part), LICENSE, docs/, examples/ (flanneld.sh, the
#                                              supervisor ini, the systemd unit, its /etc/default file)
#   flanneld-rs_<version>-1_amd64.deb          (cargo-deb)          the same, installed the package way
#   flanneld-rs-<version>-1.x86_64.rpm         (cargo-generate-rpm) the same for RHEL-family hosts
#   SHA256SUMS
# The binary in all three is one static executable (x86_64-unknown-linux-musl, not position
# independent: no dynamic section, no libc or loader needed), checked here by readelf and by
# running it in an empty root directory. docs/install.md says how it is built and installed.
#
# No arguments. Like install-deps.sh it installs what it lacks, on a fresh Debian 12 host with
# only the Rust toolchain: the C side of the static build (musl-tools), protoc, the musl target
# (rustup) and the two packagers, pinned, built into the target directory (not ~/.cargo/bin).
# Needs root for apt-get and for the empty-root check (chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
profile=dist
cargo_deb=3.8.0
cargo_generate_rpm=0.21.1
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
out=$target_dir/$target/$profile # where cargo puts the binary; the packagers' "target/release/"
tools=$target_dir/release-tools  # the packagers, built once per target directory
dist=$PWD/dist
fail() { echo "release: FAIL: $*" >&2; exit 1; }
say() { echo "release: $*"; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || fail "no version in the workspace Cargo.toml"

install_tools() {
  ./contrib/install-deps.sh --release
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    say "adding the Rust target $target (rustup)"
    rustup target add "$target" || fail "rustup could not add $target (is its server reachable?)"
  fi
  local tool version_wanted
  for tool in "cargo-deb@$cargo_deb" "cargo-generate-rpm@$cargo_generate_rpm"; do
    version_wanted=${tool#*@}
    if ! "$tools/bin/${tool%@*}" --version 2>/dev/null | grep -qF "$version_wanted"; then
      say "building $tool into $tools (once)"
      cargo install --quiet --locked --root "$tools" "$tool" || fail "cargo install $tool failed"
    fi
  done
}

build() {
  local commit
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit=$commit-dirty
  fi
  say "building flanneld v$version (commit $commit) for $target"
  FLANNELD_BUILD_COMMIT=$commit cargo build --locked --quiet -p flanneld --profile "$profile" --target "$target"
}

# The binary must need nothing at run time: no dynamic section, no interpreter, and it must
# start in a directory that holds nothing else.
check_static() {
  local bin=$out/flanneld empty said
  readelf -d "$bin" | grep -q "no dynamic section" || fail "$bin has a dynamic section: $(readelf -d "$bin" | head -3)"
  ! readelf -l "$bin" | grep -q "INTERP" || fail "$bin asks for a program interpreter"
  if [ "$(id -u)" = 0 ]; then
    empty=$(mktemp -d)
    cp "$bin" "$empty/flanneld"
    said=$(chroot "$empty" /flanneld --version 2>&1) || true
    rm -rf "$empty"
    [ "$said" = "v$version" ] || fail "in an empty root, 'flanneld --version' said '$said', not 'v$version'"
    say "static: no dynamic section; 'flanneld --version' in an empty root: $said"
  else
    say "static: no dynamic section (not root: the empty-root start was not tried)"
  fi
}

# README.md's operator part: from the "operator part" marker to the "contributors" marker.
operator_readme() {
  {
    sed -n '1,/^<!-- operator part -->$/{/^# /p}' README.md
    echo
    sed -n '/^<!-- operator part -->$/,/^<!-- end of the operator part -->$/p' README.md | sed '1d;$d'
  } >"$out/README.md"
  grep -q "^## Installing" "$out/README.md" || fail "README.md has no operator part between its markers"
}

tarball() {
  local stage name=flanneld-rs-v$version-linux-amd64.tar.gz
  stage=$(mktemp -d)
  install -m 0755 "$out/flanneld" contrib/mk-docker-opts.sh "$stage/"
  install -m 0644 "$out/README.md" LICENSE "$stage/"
  install -d "$stage/docs" && install -m 0644 docs/*.md "$stage/docs/"
  install -d "$stage/examples"
  install -m 0755 contrib/flanneld.sh "$stage/examples/"
  install -m 0644 contrib/supervisor/flanneld.ini contrib/systemd/flanneld.service \
    contrib/systemd/flanneld.default "$stage/examples/"
  # Files at the top, as in flannel's tarball: `tar xf ... -C /opt/flannel-vX` then `ln -s`.
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$(git log -1 --format=%ct 2>/dev/null || date +%s)" \
    -C "$stage" -czf "$dist/$name" flanneld mk-docker-opts.sh README.md LICENSE docs examples
  rm -rf "$stage"
}

packages() {
  "$tools/bin/cargo-deb" --quiet -p flanneld --no-build --target "$target" --profile "$profile" \
    --output "$dist/" >/dev/null || fail "cargo-deb could not build the .deb"
  "$tools/bin/cargo-generate-rpm" -p flanneld --target "$target" --profile "$profile" \
    --output "$dist/" || fail "cargo-generate-rpm could not build the .rpm"
}

install_tools
build
check_static
rm -rf "$dist" && mkdir -p "$dist"
operator_readme
tarball
packages
(cd "$dist" && sha256sum -- *.tar.gz *.deb *.rpm >SHA256SUMS)
say "dist/ holds:"
(cd "$dist" && ls -l -- *.tar.gz *.deb *.rpm SHA256SUMS | awk '{ printf "  %-45s %9d bytes\n", $9, $5 }')
say "flanneld itself: $(stat -c %s "$out/flanneld") bytes, static ($target)"
