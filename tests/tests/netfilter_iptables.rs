//! The netfilter applier against real iptables (legacy and nft), each test in its own network
//! namespaces: exact rules and positions, idempotence, repair after docker-style inserts and
//! flushes, REJECT catch-alls, retiring old values, `--ip-masq=false`, backend detection, and
//! the data path (pod IPs kept between pods, host IP towards the outside).
//!
//! The applier is run inside a namespace through `Netns::enter`: the iptables processes it
//! spawns are forked from that thread and so act on that namespace, which every test checks by
//! reading the rules back with `ip netns exec`.

use flanneld_tests::cluster::{seen_by, wait_seen_by, Whoami};
use flanneld_tests::netns::Netns;
use netfilter::{
    BackendChoice, Config, EnsureOutcome, Flavour, IpFamily, Iptables, Netfilter, NftChanges,
    Previous, RuleSet,
};

const NETWORK: &str = "10.66.0.0/16";
const SUBNET: &str = "10.66.1.0/24";
const DOCKER_RULE: &[&str] = &[
    "POSTROUTING",
    "-s",
    SUBNET,
    "!",
    "-o",
    "cni0",
    "-j",
    "MASQUERADE",
];

fn backend(ns: &Netns, choice: BackendChoice) -> Iptables {
    let (iptables, reason) = ns
        .enter(|| Iptables::detect(choice))
        .unwrap_or_else(|e| panic!("detect {choice}: {e}"));
    assert!(
        iptables.supports_random_fully(),
        "iptables 1.8 supports --random-fully: {reason}"
    );
    iptables
}

fn config(iptables: &Iptables) -> Config {
    Config {
        network: NETWORK.parse().unwrap(),
        subnet: SUBNET.parse().unwrap(),
        ip_masq: true,
        random_fully: iptables.supports_random_fully(),
        forward_rules: true,
        egress: None,
    }
}

fn ensure(ns: &Netns, iptables: &Iptables, rules: &RuleSet) -> EnsureOutcome {
    ns.enter(|| iptables.ensure(rules))
        .unwrap_or_else(|e| panic!("ensure: {e}"))
}

fn iptables_run(ns: &Netns, iptables: &Iptables, table: &str, args: &[&str]) {
    let mut full = vec!["-t", table];
    full.extend_from_slice(args);
    ns.exec(&iptables.flavour().iptables_command(IpFamily::V4), &full);
}

/// The `-A` lines of one chain, as `iptables-save` prints them inside the namespace.
fn chain(ns: &Netns, iptables: &Iptables, table: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    ns.exec(
        &iptables.flavour().save_command(IpFamily::V4),
        &["-t", table],
    )
    .lines()
    .filter(|l| l.starts_with(&prefix))
    .map(str::to_string)
    .collect()
}

fn masq_jump() -> &'static str {
    r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#
}

fn forward_jump() -> &'static str {
    r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#
}

fn expected_masq_chain() -> Vec<String> {
    let c = r#"-m comment --comment "flanneld masq""#;
    vec![
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -d {SUBNET} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {NETWORK} -d {NETWORK} {c} -j ACCEPT"),
        format!(
            "-A FLANNEL-POSTRTG -s {NETWORK} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully"
        ),
        format!("-A FLANNEL-POSTRTG ! -s {NETWORK} -d {NETWORK} {c} -j MASQUERADE --random-fully"),
    ]
}

fn expected_forward_chain() -> Vec<String> {
    let c = r#"-m comment --comment "flanneld forward""#;
    vec![
        format!("-A FLANNEL-FWD -s {NETWORK} {c} -j ACCEPT"),
        format!("-A FLANNEL-FWD -d {NETWORK} {c} -j ACCEPT"),
    ]
}

fn assert_installed(ns: &Netns, iptables: &Iptables) {
    assert_eq!(
        chain(ns, iptables, "nat", "FLANNEL-POSTRTG"),
        expected_masq_chain()
    );
    assert_eq!(
        chain(ns, iptables, "filter", "FLANNEL-FWD"),
        expected_forward_chain()
    );
    assert_eq!(chain(ns, iptables, "nat", "POSTROUTING")[0], masq_jump());
    assert_eq!(chain(ns, iptables, "filter", "FORWARD")[0], forward_jump());
}

fn fresh_install_then_idempotent(choice: BackendChoice) {
    let ns = Netns::new("nf");
    let iptables = backend(&ns, choice);
    let rules = RuleSet::build(&config(&iptables), None);

    let first = ensure(&ns, &iptables, &rules);
    assert!(first.applied, "{first:?}");
    assert!(first.foreign.is_empty(), "{first:?}");
    assert_installed(&ns, &iptables);
    assert_eq!(chain(&ns, &iptables, "nat", "POSTROUTING"), [masq_jump()]);
    assert_eq!(chain(&ns, &iptables, "filter", "FORWARD"), [forward_jump()]);

    let second = ensure(&ns, &iptables, &rules);
    assert_eq!(second, EnsureOutcome::default());
}

#[test]
fn fresh_install_is_exact_and_idempotent_nft() {
    fresh_install_then_idempotent(BackendChoice::Nft);
}

#[test]
fn fresh_install_is_exact_and_idempotent_legacy() {
    fresh_install_then_idempotent(BackendChoice::Legacy);
}

fn repairs(choice: BackendChoice) {
    let ns = Netns::new("nf");
    let iptables = backend(&ns, choice);
    let rules = RuleSet::build(&config(&iptables), None);
    ensure(&ns, &iptables, &rules);
    let docker = format!("-A POSTROUTING -s {SUBNET} ! -o cni0 -j MASQUERADE");

    // Docker (re)starts: its MASQUERADE lands at the head of POSTROUTING.
    let mut insert = vec!["-I"];
    insert.extend_from_slice(DOCKER_RULE);
    iptables_run(&ns, &iptables, "nat", &insert);
    let outcome = ensure(&ns, &iptables, &rules);
    assert!(outcome.applied);
    assert!(
        outcome.reason.as_deref().unwrap().contains("sits above"),
        "{outcome:?}"
    );
    assert_eq!(outcome.foreign, [docker.as_str()]);
    assert_eq!(
        chain(&ns, &iptables, "nat", "POSTROUTING"),
        [masq_jump(), docker.as_str()]
    );
    // Docker's rule below ours is still reported, but needs no repair.
    let outcome = ensure(&ns, &iptables, &rules);
    assert!(!outcome.applied);
    assert_eq!(outcome.foreign, [docker.as_str()]);

    // An operator flushes the nat table: chain emptied, jump gone.
    iptables_run(&ns, &iptables, "nat", &["-F"]);
    assert!(ensure(&ns, &iptables, &rules).applied);
    assert_installed(&ns, &iptables);
    // ... or deletes our chain altogether.
    iptables_run(&ns, &iptables, "nat", &["-F"]);
    iptables_run(&ns, &iptables, "nat", &["-X", "FLANNEL-POSTRTG"]);
    assert!(ensure(&ns, &iptables, &rules).applied);
    assert_installed(&ns, &iptables);

    // A CentOS-style REJECT catch-all, appended and inserted at the head.
    iptables_run(&ns, &iptables, "filter", &["-A", "FORWARD", "-j", "REJECT"]);
    assert!(!ensure(&ns, &iptables, &rules).applied);
    iptables_run(&ns, &iptables, "filter", &["-I", "FORWARD", "-j", "REJECT"]);
    assert!(ensure(&ns, &iptables, &rules).applied);
    let forward = chain(&ns, &iptables, "filter", "FORWARD");
    assert_eq!(forward[0], forward_jump());
    assert_eq!(forward.len(), 3, "both REJECT rules stay: {forward:?}");

    // Someone edits a rule inside our chain.
    iptables_run(&ns, &iptables, "nat", &["-D", "FLANNEL-POSTRTG", "3"]);
    assert!(ensure(&ns, &iptables, &rules).applied);
    assert_installed(&ns, &iptables);
}

#[test]
fn repairs_order_flushes_and_reject_catch_alls_nft() {
    repairs(BackendChoice::Nft);
}

#[test]
fn repairs_order_flushes_and_reject_catch_alls_legacy() {
    repairs(BackendChoice::Legacy);
}

#[test]
fn kube_postrouting_may_stay_above_our_jump() {
    let ns = Netns::new("nf");
    let iptables = backend(&ns, BackendChoice::Nft);
    let rules = RuleSet::build(&config(&iptables), None);
    ensure(&ns, &iptables, &rules);
    iptables_run(&ns, &iptables, "nat", &["-N", "KUBE-POSTROUTING"]);
    iptables_run(
        &ns,
        &iptables,
        "nat",
        &["-I", "POSTROUTING", "-j", "KUBE-POSTROUTING"],
    );
    assert!(!ensure(&ns, &iptables, &rules).applied);
}

#[test]
fn old_values_are_retired_and_foreign_rules_kept() {
    let ns = Netns::new("nf");
    let iptables = backend(&ns, BackendChoice::Nft);
    let old_n = "10.55.0.0/16";
    let old_s = "10.55.7.0/24";
    // Go flanneld v0.11 rules for the old values, directly in the built-in chains.
    for rule in [
        vec!["-s", old_n, "-d", old_n, "-j", "RETURN"],
        vec!["-s", old_n, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"],
        vec!["!", "-s", old_n, "-d", old_s, "-j", "RETURN"],
        vec![
            "!",
            "-s",
            old_n,
            "-d",
            old_n,
            "-j",
            "MASQUERADE",
            "--random-fully",
        ],
    ] {
        let mut args = vec!["-A", "POSTROUTING"];
        args.extend(rule);
        iptables_run(&ns, &iptables, "nat", &args);
    }
    iptables_run(
        &ns,
        &iptables,
        "filter",
        &["-A", "FORWARD", "-s", old_n, "-j", "ACCEPT"],
    );
    iptables_run(
        &ns,
        &iptables,
        "filter",
        &["-A", "FORWARD", "-d", old_n, "-j", "ACCEPT"],
    );
    // Go flanneld HEAD: its chain with the old values, jump appended.
    iptables_run(&ns, &iptables, "nat", &["-N", "FLANNEL-POSTRTG"]);
    iptables_run(
        &ns,
        &iptables,
        "nat",
        &[
            "-A",
            "FLANNEL-POSTRTG",
            "-s",
            old_s,
            "-d",
            old_n,
            "-j",
            "RETURN",
        ],
    );
    iptables_run(
        &ns,
        &iptables,
        "nat",
        &[
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ],
    );
    // Not an exact match of a flannel rule: someone else's, kept.
    let foreign = [
        "-A",
        "POSTROUTING",
        "-s",
        old_n,
        "-o",
        "eth9",
        "-j",
        "MASQUERADE",
    ];
    iptables_run(&ns, &iptables, "nat", &foreign);

    let previous = Previous {
        network: old_n.parse().unwrap(),
        subnet: old_s.parse().unwrap(),
    };
    let rules = RuleSet::build(&config(&iptables), Some(&previous));
    let outcome = ensure(&ns, &iptables, &rules);
    assert!(outcome.applied);
    assert_installed(&ns, &iptables);
    let leftovers: Vec<String> = ["nat", "filter"]
        .iter()
        .flat_map(|table| {
            ns.exec(
                &iptables.flavour().save_command(IpFamily::V4),
                &["-t", table],
            )
            .lines()
            .filter(|l| l.contains("10.55."))
            .map(str::to_string)
            .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(leftovers, [foreign.join(" ")]);
    assert!(!ensure(&ns, &iptables, &rules).applied);
}

#[test]
fn ip_masq_off_leaves_the_nat_table_byte_for_byte() {
    let ns = Netns::new("nf");
    let iptables = backend(&ns, BackendChoice::Nft);
    let mut insert = vec!["-I"];
    insert.extend_from_slice(DOCKER_RULE);
    iptables_run(&ns, &iptables, "nat", &insert);
    let nat = || {
        ns.exec(
            &iptables.flavour().save_command(IpFamily::V4),
            &["-t", "nat"],
        )
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
    };
    let before = nat();
    let rules = RuleSet::build(
        &Config {
            ip_masq: false,
            ..config(&iptables)
        },
        Some(&Previous {
            network: NETWORK.parse().unwrap(),
            subnet: SUBNET.parse().unwrap(),
        }),
    );
    let outcome = ensure(&ns, &iptables, &rules);
    assert!(outcome.applied);
    assert!(outcome.foreign.is_empty(), "nat is not even looked at");
    assert_eq!(nat(), before);
    assert_eq!(
        chain(&ns, &iptables, "filter", "FORWARD")[0],
        forward_jump()
    );
}

#[test]
fn detection_follows_the_backend_holding_the_rules() {
    let fresh = Netns::new("nf");
    let (iptables, reason) = fresh
        .enter(|| Iptables::detect(BackendChoice::Auto))
        .unwrap();
    assert_eq!(iptables.flavour(), Flavour::System, "{reason}");
    assert!(reason.contains("no preference"), "{reason}");

    let docker_legacy = Netns::new("nf");
    docker_legacy.exec("iptables-legacy", &["-t", "nat", "-N", "DOCKER"]);
    let (iptables, reason) = docker_legacy
        .enter(|| Iptables::detect(BackendChoice::Auto))
        .unwrap();
    assert_eq!(iptables.flavour(), Flavour::Legacy, "{reason}");
    assert!(reason.contains("KUBE-/DOCKER"), "{reason}");
    assert!(!iptables.uses_nf_tables());

    let kube_nft = Netns::new("nf");
    kube_nft.exec("iptables-nft", &["-t", "filter", "-N", "KUBE-FORWARD"]);
    kube_nft.exec("iptables-legacy", &["-A", "INPUT", "-j", "ACCEPT"]);
    let (iptables, reason) = kube_nft
        .enter(|| Iptables::detect(BackendChoice::Auto))
        .unwrap();
    assert_eq!(iptables.flavour(), Flavour::Nft, "{reason}");
    assert!(iptables.uses_nf_tables());

    let (iptables, reason) = kube_nft
        .enter(|| Iptables::detect(BackendChoice::Legacy))
        .unwrap();
    assert_eq!(iptables.flavour(), Flavour::Legacy, "{reason}");
    assert!(reason.starts_with("legacy: requested"), "{reason}");
}

#[test]
fn nft_changes_are_noticed_and_reading_is_not_a_change() {
    let ns = Netns::new("nf");
    let mut changes = ns
        .enter(NftChanges::subscribe)
        .expect("subscribe to nf_tables changes");
    assert!(!changes.take());
    ns.exec("iptables-nft", &["-t", "filter", "-N", "SOMEONE-ELSE"]);
    assert!(changes.take());
    assert!(!changes.take(), "one change is reported once");
    ns.exec("iptables-nft-save", &[]);
    assert!(!changes.take(), "reading the rules changes nothing");
    ns.exec(
        "iptables-nft",
        &["-t", "nat", "-A", "POSTROUTING", "-j", "RETURN"],
    );
    assert!(changes.take());
}

/// host (cni0 10.66.1.1/24, pod 10.66.1.2) — remote host (cni0 10.66.2.1/24, pod 10.66.2.2)
/// over 192.168.66.0/24; an external namespace 192.168.67.2 outside the cluster Network.
struct Cluster {
    host: Netns,
    pod: Netns,
    remote: Netns,
    remote_pod: Netns,
    external: Netns,
}

impl Cluster {
    fn new() -> Cluster {
        let host = Netns::new("host");
        let pod = Netns::new("pod");
        let remote = Netns::new("remote");
        let remote_pod = Netns::new("rpod");
        let external = Netns::new("ext");
        for (node, node_pod, prefix) in
            [(&host, &pod, "10.66.1"), (&remote, &remote_pod, "10.66.2")]
        {
            node.sh(&format!(
                "sysctl -qw net.ipv4.ip_forward=1
                 ip link add cni0 type bridge && ip link set cni0 up
                 ip addr add {prefix}.1/24 dev cni0"
            ));
            node.link_to("vpod", node_pod, "eth0");
            node.sh("ip link set vpod master cni0");
            node_pod.sh(&format!(
                "ip addr add {prefix}.2/24 dev eth0 && ip route add default via {prefix}.1"
            ));
        }
        host.link_to("eth0", &remote, "eth0");
        host.sh(
            "ip addr add 192.168.66.1/24 dev eth0 && ip route add 10.66.2.0/24 via 192.168.66.2",
        );
        remote.sh(
            "ip addr add 192.168.66.2/24 dev eth0 && ip route add 10.66.1.0/24 via 192.168.66.1",
        );
        host.link_to("ext0", &external, "eth0");
        host.sh("ip addr add 192.168.67.1/24 dev ext0");
        external.sh(
            "ip addr add 192.168.67.2/24 dev eth0 && ip route add 10.66.1.0/24 via 192.168.67.1",
        );
        Cluster {
            host,
            pod,
            remote,
            remote_pod,
            external,
        }
    }
}

fn data_path(choice: BackendChoice) {
    let cluster = Cluster::new();
    let _servers = [
        Whoami::start(&cluster.remote_pod),
        Whoami::start(&cluster.external),
        Whoami::start(&cluster.pod),
    ];
    let host = &cluster.host;
    let iptables = backend(host, choice);
    let rules = RuleSet::build(&config(&iptables), None);
    let mut insert = vec!["-I"];
    insert.extend_from_slice(DOCKER_RULE);

    // Docker's rule first, then the agent.
    iptables_run(host, &iptables, "nat", &insert);
    assert!(ensure(host, &iptables, &rules).applied);
    assert_eq!(wait_seen_by(&cluster.pod, "10.66.2.2"), "10.66.1.2");

    // Docker restarts: its rule is re-inserted at the head and wins until the next ensure.
    let mut delete = vec!["-D"];
    delete.extend_from_slice(DOCKER_RULE);
    iptables_run(host, &iptables, "nat", &delete);
    iptables_run(host, &iptables, "nat", &insert);
    assert_eq!(wait_seen_by(&cluster.pod, "10.66.2.2"), "192.168.66.1");
    let outcome = ensure(host, &iptables, &rules);
    assert!(outcome.applied && outcome.foreign.len() == 1, "{outcome:?}");
    assert_eq!(wait_seen_by(&cluster.pod, "10.66.2.2"), "10.66.1.2");

    // Leaving the cluster Network: the host's address. Coming in: the client's own.
    assert_eq!(wait_seen_by(&cluster.pod, "192.168.67.2"), "192.168.67.1");
    assert_eq!(wait_seen_by(&cluster.external, "10.66.1.2"), "192.168.67.2");
    // The remote host itself reaches the pod from its own address.
    assert_eq!(wait_seen_by(&cluster.remote, "10.66.1.2"), "192.168.66.2");

    // A REJECT catch-all at the head of FORWARD blocks pods until the next ensure.
    iptables_run(
        host,
        &iptables,
        "filter",
        &["-I", "FORWARD", "-j", "REJECT"],
    );
    assert_eq!(seen_by(&cluster.pod, "10.66.2.2"), None);
    assert!(ensure(host, &iptables, &rules).applied);
    assert_eq!(wait_seen_by(&cluster.pod, "10.66.2.2"), "10.66.1.2");
}

#[test]
fn data_path_keeps_pod_ips_and_masquerades_to_the_outside_nft() {
    data_path(BackendChoice::Nft);
}

#[test]
fn data_path_keeps_pod_ips_and_masquerades_to_the_outside_legacy() {
    data_path(BackendChoice::Legacy);
}
