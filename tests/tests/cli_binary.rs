//! The `flanneld` binary's own answers that need no etcd or namespace.

use std::process::Command;

use flanneld_tests::cluster::flanneld_bin;

#[test]
fn version_prints_the_version_and_a_newline_on_stderr_like_go_flanneld() {
    for spelling in ["--version", "-version", "--version=true"] {
        let out = Command::new(flanneld_bin())
            .arg(spelling)
            .output()
            .expect("run flanneld");
        assert_eq!(out.status.code(), Some(0), "{spelling}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{}\n", env!("CARGO_PKG_VERSION")),
            "{spelling}"
        );
        assert!(out.stdout.is_empty(), "{spelling}: nothing on stdout");
    }
}
