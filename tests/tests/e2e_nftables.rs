//! End to end, native nftables (`EnableNFTables`): two host-gw hosts running the real agent with
//! `--ip-masq`, pods behind `cni0`, docker's `-s <pod subnet> ! -o cni0 -j MASQUERADE` at the
//! head of iptables-nft's nat POSTROUTING on host 0. What a user sees: the source address each
//! whoami server reports, `nft list table` and `iptables-save`.
//!
//! In nftables every nat chain of the hook runs until one binds the connection's source NAT, so
//! an `accept` of ours would not stop docker's rule; the agent's chain runs first and binds
//! pod-to-pod connections to the pod's own address (see netfilter/src/nftables.rs).

use std::fs;
use std::time::Duration;

use flanneld_tests::cluster::{flanneld_bin, wait_for, wait_seen_by, Cluster, Pod, Whoami};
use flanneld_tests::netns::Netns;

const CONFIG: &str =
    r#"{"Network":"10.23.0.0/16","EnableNFTables":true,"Backend":{"Type":"host-gw"}}"#;
/// Host 0's subnet, recorded in its subnet.env by a "previous run" and used as docker's bip.
const SUBNET0: &str = "10.23.7.0/24";
/// The machine outside the cluster Network, on the hosts' LAN.
const EXTERNAL: &str = "192.168.100.50";

/// `nft list table ip flannel-ipv4` on `host`, or `None` when the table is missing.
fn our_table(host: &Netns) -> Option<String> {
    let out = host.try_exec("nft", &["list", "table", "ip", "flannel-ipv4"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// iptables-nft's nat table on `host`.
fn nat(host: &Netns) -> String {
    host.exec("iptables-nft-save", &["-t", "nat"])
}

/// Docker's masquerade rule for host 0's bridge, as `iptables-save` prints it.
const DOCKER_RULE: &str = "-A POSTROUTING -s 10.23.7.0/24 ! -o cni0 -j MASQUERADE";

#[test]
fn nftables_mode_keeps_pod_ips_despite_dockers_masquerade_and_heals() {
    let mut c = Cluster::build(2, CONFIG, &["--ip-masq", "--iptables-resync=1"]);
    let env = c.subnet_env(0);
    fs::create_dir_all(env.parent().unwrap()).unwrap();
    fs::write(
        &env,
        "FLANNEL_NETWORK=10.23.0.0/16\nFLANNEL_SUBNET=10.23.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    // Docker's rule first in nat POSTROUTING, and the chain an iptables-mode run left behind.
    let h0 = &c.hosts[0];
    h0.sh(&format!(
        "iptables-nft -t nat -I POSTROUTING -s {SUBNET0} ! -o cni0 -j MASQUERADE"
    ));
    h0.sh("iptables-nft -t nat -N FLANNEL-POSTRTG && iptables-nft -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG");
    for i in 0..2 {
        c.start_agent(i);
    }
    let subnets: Vec<String> = (0..2).map(|i| c.wait_subnet(i)).collect();
    assert_eq!(subnets[0], "10.23.7.1/24");
    let table = wait_for("our nftables table", Duration::from_secs(10), || {
        our_table(&c.hosts[0])
    });
    assert!(
        table.contains("priority srcnat - 10")
            && table.contains("ip saddr 10.23.0.0/16 ip daddr 10.23.0.0/16 snat to ip saddr"),
        "{table}"
    );
    // The iptables engine's rules of ours go (off the start-up path); docker's rule is not ours
    // and stays.
    let nat0 = wait_for("our iptables chain to go", Duration::from_secs(10), || {
        Some(nat(&c.hosts[0])).filter(|nat| !nat.contains("FLANNEL-POSTRTG"))
    });
    assert!(nat0.contains(DOCKER_RULE), "{nat0}");

    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let _server = Whoami::start(&pods[1].ns);
    assert_eq!(
        wait_seen_by(&pods[0].ns, &pods[1].ip),
        pods[0].ip,
        "docker's MASQUERADE must not rewrite pod-to-pod traffic"
    );
    let ext = c.external(EXTERNAL);
    let _outside = Whoami::start(&ext);
    assert_eq!(wait_seen_by(&pods[0].ns, EXTERNAL), c.host_ip(0));

    // Our table deleted by hand comes back; pod addresses are kept again.
    c.hosts[0].exec("nft", &["delete", "table", "ip", "flannel-ipv4"]);
    wait_for("our table to come back", Duration::from_secs(15), || {
        our_table(&c.hosts[0])
    });
    assert_eq!(wait_seen_by(&pods[0].ns, &pods[1].ip), pods[0].ip);
    // Flushed (chains kept, rules gone): refilled.
    c.hosts[0].exec("nft", &["flush", "table", "ip", "flannel-ipv4"]);
    wait_for("our rules to come back", Duration::from_secs(15), || {
        our_table(&c.hosts[0]).filter(|t| t.contains("snat to ip saddr"))
    });
    assert_eq!(wait_seen_by(&pods[0].ns, &pods[1].ip), pods[0].ip);

    // Back to iptables mode: our table goes, our chains come, docker's rule stays.
    c.etcd.put(
        &format!("{}/config", c.prefix),
        r#"{"Network":"10.23.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    assert_eq!(c.stop_agent(0), Some(0));
    c.start_agent(0);
    wait_for("our iptables chain", Duration::from_secs(10), || {
        let nat = c.hosts[0].exec("iptables-save", &["-t", "nat"]);
        nat.contains("-j FLANNEL-POSTRTG").then_some(())
    });
    wait_for("our table to go", Duration::from_secs(10), || {
        our_table(&c.hosts[0]).is_none().then_some(())
    });
    assert!(nat(&c.hosts[0]).contains(DOCKER_RULE));
    assert_eq!(wait_seen_by(&pods[0].ns, &pods[1].ip), pods[0].ip);

    // `flanneld cleanup` on host 1 (still in nftables mode) removes our table and no other.
    assert!(our_table(&c.hosts[1]).is_some());
    c.hosts[1].exec("nft", &["add", "table", "ip", "someone-else"]);
    assert_eq!(c.stop_agent(1), Some(0));
    let h1 = &c.hosts[1];
    let mut cleanup = vec!["cleanup".to_string()];
    cleanup.extend(c.agent_args(1));
    let out = h1.try_exec(
        flanneld_bin().to_str().unwrap(),
        &cleanup.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("nftables: removed nft table ip flannel-ipv4"),
        "{text}"
    );
    assert_eq!(our_table(h1), None);
    h1.exec("nft", &["list", "table", "ip", "someone-else"]);
}
