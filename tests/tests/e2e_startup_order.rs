//! End to end, start-up order: subnet.env (which CNI and docker wait for) is written once the
//! lease is held and the rules are in place, before the peers' routes are programmed, so a big
//! cluster's node does not wait for thousands of routes before it can start pods.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use flanneld_tests::cluster::{wait_for, Agent, Cluster};

const CONFIG: &str = r#"{"Network":"10.14.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// Peers written to etcd before the agent starts: enough routes that programming them would
/// finish before the rule check if both ran at once.
const PEERS: usize = 60;

#[test]
fn subnet_env_is_written_before_the_first_peer_route() {
    let mut c = Cluster::build(1, CONFIG, &[]);
    for i in 0..PEERS {
        let key = format!("{}/subnets/10.14.{}.0-24", c.prefix, 100 + i);
        let value = format!(
            r#"{{"PublicIP":"192.168.100.{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
            100 + i
        );
        c.etcd.put(&key, &value);
    }
    // Route additions with the time `ip` saw each (UTC, microseconds), compared with the time
    // subnet.env was written (its mtime, in the same format): both from the system clock.
    let monitor_log = c.dir.path().join("route-monitor.log");
    let mut monitor = c.hosts[0]
        .command("ip")
        .args(["-ts", "monitor", "route"])
        .env("TZ", "UTC")
        .stdout(std::fs::File::create(&monitor_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // iptables-restore made slow: the peers are listed long before the rules are in place, so
    // only the start-up order keeps their routes behind subnet.env.
    let slow = slow_restores(c.dir.path());
    let path = format!(
        "{}:{}",
        slow.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = c.dir.path().join("h0.log");
    let agent = Agent::start_with_env(&c.hosts[0], &c.agent_args(0), &log, &[("PATH", &path)]);
    c.agents[0] = Some(agent);
    c.wait_subnet(0);
    wait_for("every peer route", Duration::from_secs(30), || {
        let routes = c.hosts[0].exec("ip", &["route", "show", "proto", "70"]);
        (routes.lines().count() == PEERS).then_some(())
    });
    monitor.kill().unwrap();
    monitor.wait().unwrap();
    let mut seen = String::new();
    std::fs::File::open(&monitor_log)
        .and_then(|mut f| f.read_to_string(&mut seen))
        .unwrap();
    let first_route = seen
        .lines()
        .find(|l| l.contains("] 10.14.1") && l.contains("proto 70"))
        .and_then(|l| l.strip_prefix('[')?.split_once(']'))
        .map(|(at, _)| at.to_string())
        .expect("the monitor saw the peer routes");
    let env = c.subnet_env(0);
    let written = Command::new("date")
        .args(["-u", "-r"])
        .arg(&env)
        .arg("+%Y-%m-%dT%H:%M:%S.%6N")
        .output()
        .unwrap();
    let written = String::from_utf8_lossy(&written.stdout).trim().to_string();
    assert!(
        written < first_route,
        "subnet.env written at {written}, the first peer route added at {first_route}:\n{}",
        c.log(0)
    );
}

/// A directory of `*-restore` wrappers that wait 300 ms, then run the real binary.
fn slow_restores(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("slow-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "iptables-restore",
        "iptables-nft-restore",
        "iptables-legacy-restore",
    ] {
        let real = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
        if real.is_empty() {
            continue;
        }
        let wrapper = bin.join(tool);
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nsleep 0.3\nexec {real} \"$@\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}
