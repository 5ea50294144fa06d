//! End to end, `flanneld plan` and `flanneld cleanup` (issue 13) on a two-host vxlan cluster with
//! `--ip-masq`: plan shows a route deleted by hand as to be added and changes nothing; cleanup
//! leaves no trace of the agent (device, tagged routes, chains and jumps, subnet.env, lease) and
//! leaves a foreign route and a foreign rule alone.

use flanneld_tests::cluster::{flanneld_bin, Cluster};

const CONFIG: &str = r#"{"Network":"10.48.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Runs `flanneld <command> <agent flags> <extra>` on host `i`; returns the exit code and stdout.
fn run(c: &Cluster, i: usize, command: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec![command.to_string()];
    args.extend(c.agent_args(i));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.hosts[i].try_exec(flanneld_bin().to_str().unwrap(), &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), format!("{stdout}{stderr}"))
}

/// Everything of the kernel and the files the agent could touch on host `i`.
fn state(c: &Cluster, i: usize) -> String {
    let host = &c.hosts[i];
    let mut all = String::new();
    for cmd in [
        "ip -d link show",
        "ip addr",
        "ip route",
        "ip neigh show nud permanent",
        "bridge fdb show",
        "iptables-nft-save",
        "iptables-legacy-save",
    ] {
        all += &host.sh(&format!("{cmd} | grep -v '^#' || true"));
    }
    all + &std::fs::read_to_string(c.subnet_env(i)).unwrap_or_default()
}

#[test]
fn plan_changes_nothing_and_cleanup_leaves_no_trace() {
    let mut c = Cluster::start(2, CONFIG, &["--ip-masq"]);
    let subnets = [c.wait_subnet(0), c.wait_subnet(1)];
    c.wait_ready(0);
    c.wait_ready(1);

    // plan: nothing to do on a converged host (its agent stopped, so nothing moves meanwhile).
    c.stop_agent(0);
    let (code, text) = run(&c, 0, "plan", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("in sync"), "{text}");
    // A route deleted by hand is shown as to be added, and nothing is written.
    let peer = Cluster::network_of(&subnets[1]);
    c.hosts[0].exec("ip", &["route", "del", &peer]);
    let before = state(&c, 0);
    let (code, text) = run(&c, 0, "plan", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("+ route {peer} via")), "{text}");
    assert_eq!(state(&c, 0), before, "plan changed the host");

    // cleanup on host 1, next to a foreign route and a foreign masquerade rule.
    let host = &c.hosts[1];
    host.sh("ip route add 198.51.100.0/24 dev eth0");
    host.sh("iptables-nft -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE");
    c.stop_agent(1);
    let own = Cluster::network_of(&subnets[1]);
    let key = format!(
        "{}/subnets/{}",
        c.config_key().trim_end_matches("/config"),
        own.replace('/', "-")
    );
    assert!(c.etcd.get(&key).is_some(), "the lease is there before");
    let (code, text) = run(&c, 1, "cleanup", &["--release-lease"]);
    assert_eq!(code, Some(0), "{text}");
    for removed in [
        "removed flannel.1",
        "removed lease",
        "FLANNEL-POSTRTG",
        "FLANNEL-FWD",
        "subnet.env",
    ] {
        assert!(text.contains(removed), "{removed}: {text}");
    }
    let after = state(&c, 1);
    for trace in ["flannel.1", "proto 70", "FLANNEL-", "10.48."] {
        assert!(!after.contains(trace), "{trace} left behind:\n{after}");
    }
    assert!(
        after.contains("198.51.100.0/24 dev eth0"),
        "the foreign route stays"
    );
    assert!(
        after.contains("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"),
        "the foreign rule stays"
    );
    assert!(!c.subnet_env(1).exists());
    assert_eq!(c.etcd.get(&key), None, "the lease is released");
}
