//! End to end, the agent under Debian's supervisord (issue 13) with `contrib/flanneld.sh` and
//! `contrib/supervisor/flanneld.ini`, their values changed only for this host (paths, etcd,
//! PublicIP): the agent comes up, survives `supervisorctl restart flanneld` with the same
//! subnet, and logs where the ini says. Also: `contrib/systemd/flanneld.service` passes
//! `systemd-analyze verify`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flanneld_tests::cluster::{flannel_subnet, flanneld_bin, wait_for, Cluster};
use flanneld_tests::netns::Netns;

const CONFIG: &str = r#"{"Network":"10.49.0.0/16","Backend":{"Type":"host-gw"}}"#;

fn contrib(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib");
    fs::read_to_string(root.join(path)).unwrap()
}

/// contrib/flanneld.sh with this host's values for the flags the cluster sets.
fn flanneld_sh(c: &Cluster) -> String {
    let ours = c.agent_args(0);
    let value_of = |flag: &str| {
        ours.iter()
            .find_map(|a| {
                a.trim_start_matches('-')
                    .strip_prefix(flag)?
                    .strip_prefix('=')
            })
            .map(str::to_string)
    };
    let script = contrib("flanneld.sh").replace(
        "exec ./flanneld",
        &format!("exec {}", flanneld_bin().display()),
    );
    let lines = script.lines().map(|line| {
        let Some((flag, _)) = line
            .trim()
            .strip_prefix("--")
            .and_then(|l| l.split_once('='))
        else {
            return line.to_string();
        };
        match value_of(flag).filter(|_| flag != "subnet-file" && flag != "iface") {
            Some(value) => format!("  --{flag}={value} \\"),
            None => line.to_string(),
        }
    });
    lines.collect::<Vec<_>>().join("\n") + "\n"
}

/// supervisord running in a namespace; stopped (with its programs) on drop.
struct Supervisord {
    child: Child,
    conf: PathBuf,
    ns: String,
}

impl Supervisord {
    fn start(host: &Netns, dir: &Path, ini: &str) -> Supervisord {
        let d = dir.display();
        fs::write(dir.join("flanneld.ini"), ini).unwrap();
        let conf = dir.join("supervisord.conf");
        fs::write(&conf, format!("[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\n[unix_http_server]\nfile={d}/supervisor.sock\n\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n[supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n[include]\nfiles={d}/flanneld.ini\n")).unwrap();
        let child = host
            .command("supervisord")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start supervisord");
        Supervisord {
            child,
            conf,
            ns: host.name().to_string(),
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "supervisorctl", "-c"])
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run supervisorctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        // SIGTERM: supervisord stops its programs, then exits.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn supervisord_runs_and_restarts_the_agent_from_the_contrib_files() {
    let c = Cluster::build(1, CONFIG, &[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("logs")).unwrap();
    let script = d.join("flanneld.sh");
    fs::write(&script, flanneld_sh(&c)).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let ini = contrib("supervisor/flanneld.ini")
        .replace("/opt/flannel/flanneld.sh", &script.display().to_string())
        .replace(
            "directory=/opt/flannel",
            &format!("directory={}", d.display()),
        )
        .replace("/data/logs/flanneld", &d.join("logs").display().to_string());
    let supervisor = Supervisord::start(&c.hosts[0], d, &ini);

    let subnet_env = d.join("subnet.env");
    let subnet = wait_for(
        "subnet.env from the supervised agent",
        Duration::from_secs(30),
        || flannel_subnet(&subnet_env),
    );
    c.wait_ready(0);
    // RUNNING once up for the ini's startsecs.
    wait_for(
        "supervisord to call it RUNNING",
        Duration::from_secs(15),
        || {
            supervisor
                .ctl(&["status", "flanneld"])
                .contains("RUNNING")
                .then_some(())
        },
    );
    let log = d.join("logs/flanneld.stdout.log");
    let banner = concat!("flanneld-rs v", env!("CARGO_PKG_VERSION"), " (commit ");
    let starts = |text: &str| {
        (text.lines())
            .filter(|l| l.contains(banner) && l.ends_with("starting"))
            .count()
    };
    assert_eq!(
        starts(&fs::read_to_string(&log).unwrap()),
        1,
        "the log is where the ini says"
    );

    let restarted = supervisor.ctl(&["restart", "flanneld"]);
    assert!(restarted.contains("started"), "{restarted}");
    wait_for(
        "the second start in the log",
        Duration::from_secs(30),
        || (starts(&fs::read_to_string(&log).unwrap_or_default()) == 2).then_some(()),
    );
    c.wait_ready(0);
    assert_eq!(
        flannel_subnet(&subnet_env),
        Some(subnet),
        "same subnet after the restart"
    );
    let log_text = fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("received SIGTERM, shutting down"),
        "a clean stop:\n{log_text}"
    );
    let running = Command::new("pgrep")
        .args(["-fc", &script.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&running.stdout).trim(),
        "0",
        "exec left no shell behind"
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("flanneld.service");
    let bin = flanneld_bin().display().to_string();
    fs::write(
        &unit,
        contrib("systemd/flanneld.service").replace("/usr/bin/flanneld", &bin),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("flanneld.service"))
        .collect();
    assert!(out.status.success() && about_ours.is_empty(), "{stderr}");
}
