//! End to end, Docker 28's direct-access filtering (issue 24). Docker 28 cannot run here (Debian 12
//! ships 20.10), so host 0 gets the rules moby's bridge driver (v28.2 to v28.5) writes for a
//! container on its bridge in gateway mode nat, the way the masquerade tests reproduce docker's
//! MASQUERADE rule: the raw PREROUTING DROP for the container's address from anywhere but the
//! bridge, and the filter `DOCKER` chain's DROP behind `DOCKER-FORWARD`. What a user sees: the
//! pod on host 1 reaches the container (pod) on host 0, loses it under docker 28's rules, the
//! doctor says why and what to set, and with the fix (no raw rule, as docker with
//! `--allow-direct-routing` installs) it reaches it again, by its own address.

use std::time::Duration;

use flanneld_tests::cluster::{
    flanneld_bin, seen_by, wait_for, wait_seen_by, Cluster, Pod, Whoami,
};
use flanneld_tests::netns::Netns;

const CONFIG: &str = r#"{"Network":"10.49.0.0/16","Backend":{"Type":"host-gw"}}"#;
/// The pods' bridge, standing in for docker0.
const BRIDGE: &str = "cni0";

/// moby's raw rule for a container at `ip` on the bridge (libnetwork iptabler, endpoint.go).
fn raw_drop(ip: &str) -> String {
    format!("PREROUTING -d {ip}/32 ! -i {BRIDGE} -j DROP")
}

/// moby's filter chains for the bridge, with `DOCKER-FORWARD` inserted first in FORWARD, as a
/// docker daemon starting after the agent puts it.
fn docker_filter(host: &Netns) {
    for chain in ["DOCKER", "DOCKER-BRIDGE", "DOCKER-FORWARD"] {
        host.sh(&format!("iptables-nft -N {chain}"));
    }
    host.sh(&format!(
        "iptables-nft -A DOCKER ! -i {BRIDGE} -o {BRIDGE} -j DROP"
    ));
    host.sh(&format!(
        "iptables-nft -A DOCKER-BRIDGE -o {BRIDGE} -j DOCKER"
    ));
    host.sh("iptables-nft -A DOCKER-FORWARD -j DOCKER-BRIDGE");
    host.sh(&format!(
        "iptables-nft -A DOCKER-FORWARD -i {BRIDGE} -j ACCEPT"
    ));
    host.sh("iptables-nft -I FORWARD 1 -j DOCKER-FORWARD");
}

/// `flanneld doctor --json` on host 0 (it reads the running agent's flags): the exit status and
/// the ids of its findings.
fn doctor(c: &Cluster) -> (Option<i32>, Vec<String>, String) {
    let out = c.hosts[0].try_exec(flanneld_bin().to_str().unwrap(), &["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let ids = (report["findings"].as_array().cloned().unwrap_or_default())
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect();
    (out.status.code(), ids, format!("{report:#}"))
}

#[test]
fn docker_28_drops_other_hosts_pods_until_direct_routing_is_allowed() {
    let mut c = Cluster::start(2, CONFIG, &["--ip-masq", "--iptables-resync=1"]);
    let subnets = [c.wait_subnet(0), c.wait_subnet(1)];
    c.wait_ready(0);
    c.wait_ready(1);
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let _servers: Vec<Whoami> = pods.iter().map(|p| Whoami::start(&p.ns)).collect();
    assert_eq!(wait_seen_by(&pods[1].ns, &pods[0].ip), pods[1].ip);

    let host = &c.hosts[0];
    docker_filter(host);
    host.sh(&format!("iptables-nft -t raw -A {}", raw_drop(&pods[0].ip)));
    // The agent puts its FORWARD jump back above docker's: the filter DROP is not what stops
    // the traffic from here on.
    wait_for(
        "our FORWARD jump first again",
        Duration::from_secs(15),
        || {
            let forward = host.exec("iptables-nft", &["-S", "FORWARD"]);
            let first = forward.lines().find(|l| l.starts_with("-A FORWARD"))?;
            first.contains("-j FLANNEL-FWD").then_some(())
        },
    );
    assert_eq!(
        seen_by(&pods[1].ns, &pods[0].ip),
        None,
        "docker 28's raw rule drops it"
    );
    let (code, ids, report) = doctor(&c);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        ids.contains(&"docker-direct-routing-blocked".to_string()),
        "{report}"
    );
    assert!(
        report.contains(&pods[0].ip) && report.contains("allow-direct-routing"),
        "{report}"
    );

    // The fix: docker with --allow-direct-routing installs no raw rule; its DOCKER chain DROP
    // stays, behind the agent's accept.
    host.sh(&format!("iptables-nft -t raw -D {}", raw_drop(&pods[0].ip)));
    assert_eq!(wait_seen_by(&pods[1].ns, &pods[0].ip), pods[1].ip);
    let (_, ids, report) = doctor(&c);
    assert!(
        !ids.contains(&"docker-direct-routing-blocked".to_string()),
        "{report}"
    );
}
