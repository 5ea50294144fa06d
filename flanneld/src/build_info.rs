//! What this binary is: its version as Go flanneld spells it (`v0.11.0`), and the commit and
//! target it was built from (recorded by `build.rs`).

/// The version `--version` prints, with Go flanneld's leading `v`.
pub(crate) const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
/// The commit the binary was built from (`unknown` outside a git checkout).
pub(crate) const COMMIT: &str = env!("FLANNELD_BUILD_COMMIT");
/// The target triple: `x86_64-unknown-linux-musl` for the static release binary.
pub(crate) const TARGET: &str = env!("FLANNELD_BUILD_TARGET");

/// One line naming the build, for the `--help` header and the start-up log.
pub(crate) fn describe() -> String {
    format!("flanneld-rs {VERSION} (commit {COMMIT}, {TARGET})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_spelled_like_go_flanneld_and_the_description_names_the_build() {
        assert!(VERSION.starts_with('v'), "{VERSION}");
        assert!(VERSION[1..].split('.').all(|n| n.parse::<u32>().is_ok()));
        let line = describe();
        assert!(line.contains(VERSION) && line.contains(COMMIT) && line.contains(TARGET));
    }
}
