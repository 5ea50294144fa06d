//! The released binary on an older userland (issue 27): host 0 of a three-host cluster runs the
//! release tarball's static `flanneld` inside a Debian 11 root (glibc 2.31, iptables 1.8.7) with
//! that root's own `iptables-restore`/`iptables-save`, beside two agents of the normal build. What
//! a user sees: pods on all hosts reach each other with their own source addresses, traffic to the
//! outside leaves with the host's address, and the root's `iptables-save` shows our rules.
//!
//! Run by `contrib/release-check.sh` (after the suite in CI), which builds the release, unpacks the
//! root and the tarball into it and sets `FLANNELD_RELEASE_ROOT`; hence `#[ignore]` here.

use std::path::PathBuf;
use std::sync::Mutex;

use flanneld_tests::cluster::{wait_seen_by, Cluster, Pod, Whoami};
use flanneld_tests::root::ForeignRoot;

/// Where the release tarball is unpacked inside the root (`/opt/flannel` links to it).
const RELEASED: &str = "/opt/flannel/flanneld";
/// A machine outside the cluster Network, on the hosts' LAN.
const EXTERNAL: &str = "192.168.100.50";

/// The tests share one root, whose /run and mounts each test sets up and tears down: one at a time.
static ROOT_IN_USE: Mutex<()> = Mutex::new(());

fn release_root() -> PathBuf {
    PathBuf::from(std::env::var("FLANNELD_RELEASE_ROOT").expect(
        "FLANNELD_RELEASE_ROOT names the Debian 11 root with the release in /opt/flannel: \
         run contrib/release-check.sh",
    ))
}

#[test]
#[ignore = "needs the Debian 11 root of contrib/release-check.sh"]
fn released_binary_runs_a_host_with_debian_11_iptables_nft_on_host_gw() {
    mixed_cluster(
        "iptables-nft",
        r#"{"Network":"10.31.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
}

#[test]
#[ignore = "needs the Debian 11 root of contrib/release-check.sh"]
fn released_binary_runs_a_host_with_debian_11_iptables_legacy_on_vxlan() {
    mixed_cluster(
        "iptables-legacy",
        r#"{"Network":"10.32.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
}

/// Host 0 runs the released binary in the root; its firewall already holds a rule of the root's
/// `iptables` flavour (`iptables-nft` or `iptables-legacy`), so the agent must use that one.
fn mixed_cluster(iptables: &str, config: &str) {
    let _one_at_a_time = ROOT_IN_USE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut root = ForeignRoot::open(&release_root());
    let mut c = Cluster::build(3, config, &["--ip-masq"]);
    let certs = c.etcd.tls().expect("TLS etcd").ca.clone();
    root.share(certs.parent().expect("the certificates' folder"));
    root.share(c.dir.path());
    root.exec(&c.hosts[0], iptables, &["-A", "FORWARD", "-j", "ACCEPT"]);
    c.start_agent_via(0, &root.launcher(RELEASED));
    c.start_agent(1);
    c.start_agent(2);
    let subnets: Vec<String> = (0..3).map(|i| c.wait_subnet(i)).collect();
    c.wait_ready(0);
    let log = c.log(0);
    assert!(
        log.contains(&format!("using {iptables} (")) && log.contains("v1.8.7"),
        "the released agent uses the root's {iptables} 1.8.7:\n{log}"
    );

    let pods: Vec<Pod> = (0..3)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let _servers: Vec<Whoami> = pods.iter().map(|p| Whoami::start(&p.ns)).collect();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert_eq!(
                wait_seen_by(&from.ns, &to.ip),
                from.ip,
                "pod on host {j} sees the pod on host {i} by its own address"
            );
        }
    }
    let ext = c.external(EXTERNAL);
    c.route_pods_from(&ext, &subnets);
    let _ext_server = Whoami::start(&ext);
    for (i, pod) in pods.iter().enumerate() {
        assert_eq!(
            wait_seen_by(&pod.ns, EXTERNAL),
            c.host_ip(i),
            "host {i} masquerades traffic leaving the cluster Network"
        );
    }

    let rules = root.exec(&c.hosts[0], &format!("{iptables}-save"), &["-t", "nat"]);
    assert!(
        rules.contains("-A FLANNEL-POSTRTG") && rules.contains("-j MASQUERADE"),
        "the root's {iptables}-save shows the agent's nat rules:\n{rules}"
    );
}
