//! End to end, `flanneld doctor` (issue 13): a healthy host running the agent is reported healthy
//! (exit 0); a host set up with docker's MASQUERADE ahead of our jump, a FORWARD REJECT catch-all
//! ahead of our accept rules, ip_forward off and a cni0 MTU above FLANNEL_MTU gets each of them
//! reported as a problem (exit 1), with its id and fix.

use flanneld_tests::cluster::{flanneld_bin, Cluster};

const CONFIG: &str = r#"{"Network":"10.47.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// Runs `flanneld doctor --json` on host `i` with the agent's etcd flags and subnet.env.
fn doctor(c: &Cluster, i: usize) -> (Option<i32>, serde_json::Value) {
    let wanted =
        |a: &&String| a.trim_start_matches('-').starts_with("etcd-") || a.contains("subnet-file");
    let flags: Vec<String> = c.agent_args(i).iter().filter(wanted).cloned().collect();
    doctor_with(c, i, &flags).0
}

/// Runs `flanneld doctor --json flags...` on host `i`; returns the exit status, the report and
/// what it said on stderr.
fn doctor_with(
    c: &Cluster,
    i: usize,
    flags: &[String],
) -> ((Option<i32>, serde_json::Value), String) {
    let mut args = vec!["doctor", "--json"];
    args.extend(flags.iter().map(String::as_str));
    let out = c.hosts[i].try_exec(flanneld_bin().to_str().unwrap(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {stderr}"));
    ((out.status.code(), report), stderr)
}

/// The ids of the findings of `severity`.
fn ids(report: &serde_json::Value, severity: &str) -> Vec<String> {
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    findings
        .iter()
        .filter(|f| f["severity"] == severity)
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn doctor_reports_a_healthy_host_and_each_problem_of_a_broken_one() {
    let mut c = Cluster::start(2, CONFIG, &["--ip-masq", "--iptables-resync=1"]);
    let subnet1 = c.wait_subnet(1);
    c.wait_subnet(0);
    c.wait_ready(0);
    c.wait_ready(1);

    let (code, report) = doctor(&c, 0);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["healthy"], true);
    assert!(ids(&report, "problem").is_empty(), "{report:#}");

    // Host 1 breaks while its agent is stopped (so nothing is repaired under the doctor).
    c.stop_agent(1);
    let host = &c.hosts[1];
    host.sh("sysctl -qw net.ipv4.ip_forward=0");
    let docker = format!(
        "iptables-nft -t nat -I POSTROUTING -s {} ! -o docker0 -j MASQUERADE",
        Cluster::network_of(&subnet1)
    );
    host.sh(&docker);
    host.sh("iptables-nft -I FORWARD -j REJECT --reject-with icmp-host-prohibited");
    host.sh("ip link add cni0 type bridge && ip link set cni0 mtu 9000");

    let (code, report) = doctor(&c, 1);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["healthy"], false);
    let problems = ids(&report, "problem");
    for id in [
        "ip-forward-off",
        "foreign-masquerade",
        "forward-reject-ahead",
        "bridge-mtu",
    ] {
        assert!(problems.iter().any(|p| p == id), "{id} missing: {report:#}");
    }
    let findings = report["findings"].as_array().unwrap();
    let docker_finding = findings
        .iter()
        .find(|f| f["id"] == "foreign-masquerade")
        .unwrap();
    assert!(docker_finding["summary"]
        .as_str()
        .unwrap()
        .contains("! -o docker0 -j MASQUERADE"));
    assert!(docker_finding["doc"]
        .as_str()
        .unwrap()
        .ends_with("troubleshooting.md#foreign-masquerade"));
    let mtu = findings.iter().find(|f| f["id"] == "bridge-mtu").unwrap();
    assert!(
        mtu["fix"]
            .as_str()
            .unwrap()
            .contains("ip link set cni0 mtu 1500"),
        "{mtu}"
    );
}

#[test]
fn doctor_takes_the_agents_own_command_line_or_reads_it_from_the_running_agent() {
    let mut c = Cluster::start(1, CONFIG, &["--ip-masq"]);
    c.wait_subnet(0);
    c.wait_ready(0);
    // A finding on the host, so there is something to agree on.
    c.hosts[0].sh("sysctl -qw net.ipv4.ip_forward=0");
    let minimal = doctor(&c, 0);
    assert_eq!(minimal.0, Some(1), "{:#}", minimal.1);
    assert!(ids(&minimal.1, "problem").contains(&"ip-forward-off".to_string()));

    // The agent's whole command line (--iface, --public-ip, --ip-masq, -v, ...) is accepted and
    // gives the same findings.
    let (full, said) = doctor_with(&c, 0, &c.agent_args(0));
    assert_eq!(full, minimal, "{said}");

    // No flags at all: the running agent's, read from its process.
    let pid = c.agents[0]
        .as_ref()
        .and_then(|a| a.pid())
        .expect("the agent runs");
    let (found, said) = doctor_with(&c, 0, &[]);
    assert!(
        said.contains(&format!("using the flags of the running agent, pid {pid}")),
        "{said}"
    );
    assert_eq!(found, minimal, "its etcd and subnet.env were found: {said}");

    // --no-agent: the defaults (no etcd at 127.0.0.1:2379 here, no /run/flannel/subnet.env).
    let (defaults, said) = doctor_with(&c, 0, &["--no-agent".to_string()]);
    assert!(!said.contains("running agent"), "{said}");
    assert_ne!(defaults, minimal);
}
