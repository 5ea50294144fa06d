//! Records what this binary is built from for `flannel_build_info` and the `--help` header: the
//! commit (`FLANNELD_BUILD_COMMIT` when the release script sets it, else the checkout's HEAD, else
//! `unknown`, as in a source tarball) and the target triple (glibc or static musl).

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FLANNELD_BUILD_COMMIT");
    let commit = env::var("FLANNELD_BUILD_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(checkout_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FLANNELD_BUILD_COMMIT={commit}");
    let target = env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=FLANNELD_BUILD_TARGET={target}");
}

/// The checkout's HEAD (12 hex digits), rebuilt when HEAD moves; `None` outside a git checkout.
fn checkout_commit() -> Option<String> {
    let git_dir = git(&["rev-parse", "--absolute-git-dir"])?;
    // logs/HEAD changes on every commit, checkout and reset; HEAD on a branch switch.
    println!("cargo:rerun-if-changed={git_dir}/HEAD");
    println!("cargo:rerun-if-changed={git_dir}/logs/HEAD");
    git(&["rev-parse", "--short=12", "HEAD"])
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
