//! The `flanneld` binary's own answers that need no etcd or namespace.

use std::process::Command;

use flanneld_tests::cluster::flanneld_bin;

#[test]
fn version_prints_v_and_the_version_and_a_newline_on_stderr_like_go_flanneld() {
    for spelling in ["--version", "-version", "--version=true"] {
        let out = Command::new(flanneld_bin())
            .arg(spelling)
            .output()
            .expect("run flanneld");
        assert_eq!(out.status.code(), Some(0), "{spelling}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("v{}\n", env!("CARGO_PKG_VERSION")),
            "{spelling}"
        );
        assert!(out.stdout.is_empty(), "{spelling}: nothing on stdout");
    }
}

/// Runs `flanneld args...` without environment overlays; returns the exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(flanneld_bin())
        .args(args)
        .env_clear()
        .output()
        .expect("run flanneld");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_is_generated_from_the_flag_definitions_in_go_spellings() {
    for spelling in ["-h", "--help", "-help"] {
        let (code, help) = run(&[spelling]);
        assert_eq!(code, Some(0), "{spelling}");
        let header = format!("flanneld-rs v{} (commit ", env!("CARGO_PKG_VERSION"));
        assert!(
            help.starts_with(&header),
            "{spelling}: no build header in\n{help}"
        );
        for flag in [
            "--etcd-endpoints",
            "--iface-regex",
            "--healthz-port",
            "mk-docker-opts",
        ] {
            assert!(
                help.contains(flag),
                "{spelling}: {flag} missing from\n{help}"
            );
        }
    }
}

#[test]
fn a_bad_flag_value_names_the_flag_and_a_valid_value_and_exits_2() {
    let cases = [
        (
            "-etcd-endpoints=ftp://10.4.7.21:2379",
            "-etcd-endpoints",
            "https://10.4.7.21:2379",
        ),
        ("--healthz-port=99999", "-healthz-port", "2401"),
        ("-public-ip=host1", "-public-ip", "10.4.7.21"),
        (
            "-subnet-lease-renew-margin=0",
            "-subnet-lease-renew-margin",
            "1439",
        ),
    ];
    for (arg, flag, hint) in cases {
        let (code, err) = run(&[arg]);
        assert_eq!(code, Some(2), "{arg}: {err}");
        assert!(err.contains(flag) && err.contains(hint), "{arg}: {err}");
    }
    let (code, err) = run(&["-no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("flag provided but not defined: -no-such-flag"),
        "{err}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let ns = flanneld_tests::netns::Netns::new("json");
    let mut child = ns
        .command(flanneld_bin().to_str().unwrap())
        .args([
            "--log-format=json",
            "--etcd-endpoints=http://127.0.0.1:9",
            "--subnet-file=/nonexistent/subnet.env",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run flanneld");
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .take(3)
        .map(|l| l.unwrap())
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{line}"
        );
    }
    assert!(lines[0].contains("starting"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Couldn't fetch network config")),
        "{lines:?}"
    );
}
