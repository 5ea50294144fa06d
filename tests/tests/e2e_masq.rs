//! End to end, masquerade (issue 4): two host-gw hosts running the real agent, pods behind
//! `cni0`, an HTTP whoami server in each pod and on an external machine. What a user sees: the
//! source address each server reports, `iptables-save` lines and subnet.env.
//!
//! Host 0 is prepared like a rebooted docker host: its subnet.env names the subnet of the
//! previous run (which the agent re-claims, so the subnet is known before the agent starts) and
//! docker's `-s <that subnet> ! -o cni0 -j MASQUERADE` is already at the head of nat
//! POSTROUTING. With `--ip-masq`, every host also carries CentOS' `-A FORWARD -j REJECT`
//! catch-all; with `--ip-masq=false`, docker's rule is left to do what it does.

use std::fs;
use std::time::Duration;

use flanneld_tests::cluster::{
    env_value, holds, seen_by, wait_for, wait_seen_by, Cluster, Pod, Whoami,
};
use flanneld_tests::netns::Netns;
use netfilter::{Flavour, IpFamily};

const CONFIG: &str = r#"{"Network":"10.20.0.0/16","Backend":{"Type":"host-gw"}}"#;
/// Host 0's subnet, recorded in its subnet.env by a "previous run" and used as docker's bip.
const SUBNET0: &str = "10.20.7.0/24";
/// The machine outside the cluster Network, on the hosts' LAN.
const EXTERNAL: &str = "192.168.100.50";
/// Our jump in nat POSTROUTING, as `iptables-save` prints it.
const MASQ_JUMP: &str = r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#;
/// Our jump in filter FORWARD, as `iptables-save` prints it.
const FORWARD_JUMP: &str = r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#;
/// What flanneld/src/firewall.rs logs each time it writes rules.
const APPLIED: &str = "iptables rules applied";
/// The text of flanneld/src/firewall.rs' warning about a foreign masquerading rule.
const FOREIGN_WARNING: &str = "masquerades traffic from the cluster Network; left in place";

/// Docker's masquerade rule for a bridge on `subnet`, without the `-I`/`-D`/`-A` verb.
fn docker_rule(subnet: &str) -> [&str; 8] {
    [
        "POSTROUTING",
        "-s",
        subnet,
        "!",
        "-o",
        "cni0",
        "-j",
        "MASQUERADE",
    ]
}

/// Runs `iptables -t <table> <verb> <rule...>` of `flavour` on `host`.
fn iptables(flavour: Flavour, host: &Netns, table: &str, verb: &str, rule: &[&str]) {
    let mut args = vec!["-t", table, verb];
    args.extend_from_slice(rule);
    host.exec(&flavour.iptables_command(IpFamily::V4), &args);
}

/// `iptables-save -t <table>` of `flavour` on `host` without the `#` comment lines and with
/// the packet counters of the chain declarations removed: what must not change when nothing is
/// written.
fn save(flavour: Flavour, host: &Netns, table: &str) -> String {
    host.exec(&flavour.save_command(IpFamily::V4), &["-t", table])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(
            |l| match l.strip_prefix(':').and_then(|d| d.rsplit_once(" [")) {
                Some((declaration, _counters)) => format!(":{declaration}\n"),
                None => format!("{l}\n"),
            },
        )
        .collect()
}

/// The `-A <chain>` lines of one chain, in order.
fn chain(flavour: Flavour, host: &Netns, table: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    save(flavour, host, table)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Writes subnet.env of host `i` as a previous run with `--ip-masq=<!ipmasq>` would have left
/// it (with the opposite `FLANNEL_IPMASQ`, so [`wait_rewritten`] can tell the agent's own file).
fn seed_subnet_env(c: &Cluster, i: usize, network: &str, flannel_subnet: &str, ipmasq: bool) {
    let path = c.subnet_env(i);
    fs::create_dir_all(path.parent().expect("subnet.env has a folder")).unwrap();
    fs::write(
        &path,
        format!(
            "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={flannel_subnet}\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ={}\n",
            !ipmasq
        ),
    )
    .unwrap();
}

/// Waits for host `i`'s agent to write its own subnet.env (the seeded one says the opposite
/// `FLANNEL_IPMASQ`, so the value proves whose file it is); returns its FLANNEL_SUBNET.
fn wait_rewritten(c: &mut Cluster, i: usize, ipmasq: bool) -> String {
    let subnet = c.wait_subnet(i);
    assert_eq!(
        env_value(&c.subnet_env(i), "FLANNEL_IPMASQ"),
        Some(ipmasq.to_string()),
        "host {i}'s subnet.env"
    );
    subnet
}

/// The external machine, routing each host's pod subnet via that host, with a whoami server.
fn external_machine(c: &Cluster, subnets: &[String]) -> (Netns, Whoami) {
    let ext = c.external(EXTERNAL);
    c.route_pods_from(&ext, subnets);
    let server = Whoami::start(&ext);
    (ext, server)
}

#[test]
fn pod_ips_survive_docker_masquerade_restarts_and_nat_flushes_nft() {
    pod_ips_survive_docker_masquerade_restarts_and_nat_flushes(Flavour::Nft);
}

#[test]
fn pod_ips_survive_docker_masquerade_restarts_and_nat_flushes_legacy() {
    pod_ips_survive_docker_masquerade_restarts_and_nat_flushes(Flavour::Legacy);
}

/// Docker and the host's firewall use the iptables of `flavour`; the agent must follow them.
fn pod_ips_survive_docker_masquerade_restarts_and_nat_flushes(flavour: Flavour) {
    let mut c = Cluster::build(2, CONFIG, &["--ip-masq"]);
    seed_subnet_env(&c, 0, "10.20.0.0/16", "10.20.7.1/24", true);
    for host in &c.hosts {
        iptables(
            flavour,
            host,
            "filter",
            "-A",
            &[
                "FORWARD",
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-host-prohibited",
            ],
        );
    }
    iptables(flavour, &c.hosts[0], "nat", "-I", &docker_rule(SUBNET0));
    // Host 0 first: host 1 picks a random free subnet and must not take 10.20.7.0/24 before
    // host 0 re-claims it from its subnet.env.
    c.start_agent(0);
    let first = wait_rewritten(&mut c, 0, true);
    c.start_agent(1);
    let subnets = [first, wait_rewritten(&mut c, 1, true)];
    assert_eq!(
        subnets[0], "10.20.7.1/24",
        "the previous subnet is re-claimed"
    );
    for i in 0..2 {
        let log = c.log(i);
        assert!(log.contains(&format!("using {flavour} (")), "{log}");
    }

    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let _servers: Vec<Whoami> = pods.iter().map(|p| Whoami::start(&p.ns)).collect();
    let (ext, _ext_server) = external_machine(&c, &subnets);

    // Docker's rule was there first: our jump went above it, and pods see each other's own
    // addresses, through the REJECT catch-all in FORWARD.
    let docker_line = format!("-A {}", docker_rule(SUBNET0).join(" "));
    assert_eq!(
        chain(flavour, &c.hosts[0], "nat", "POSTROUTING"),
        [MASQ_JUMP, docker_line.as_str()]
    );
    assert_eq!(wait_seen_by(&pods[0].ns, &pods[1].ip), pods[0].ip);
    assert_eq!(wait_seen_by(&pods[1].ns, &pods[0].ip), pods[1].ip);
    for host in &c.hosts {
        assert_eq!(
            chain(flavour, host, "filter", "FORWARD"),
            [
                FORWARD_JUMP,
                "-A FORWARD -j REJECT --reject-with icmp-host-prohibited"
            ]
        );
    }

    // Leaving the cluster Network: the host's address. Coming in: the client's own.
    for (i, pod) in pods.iter().enumerate() {
        assert_eq!(wait_seen_by(&pod.ns, EXTERNAL), c.host_ip(i));
        assert_eq!(wait_seen_by(&ext, &pod.ip), EXTERNAL);
    }

    // Docker restarts: its rule is deleted and re-inserted at the head. Within a resync period
    // our jump is first again; docker's rule stays, and was reported once in all.
    iptables(flavour, &c.hosts[0], "nat", "-D", &docker_rule(SUBNET0));
    iptables(flavour, &c.hosts[0], "nat", "-I", &docker_rule(SUBNET0));
    let repaired =
        || chain(flavour, &c.hosts[0], "nat", "POSTROUTING") == [MASQ_JUMP, docker_line.as_str()];
    wait_for(
        "our jump back above docker's rule",
        Duration::from_secs(20),
        || repaired().then_some(()),
    );
    assert_eq!(wait_seen_by(&pods[0].ns, &pods[1].ip), pods[0].ip);
    let log = c.log(0);
    assert_eq!(
        log.matches(FOREIGN_WARNING).count(),
        1,
        "one warning about docker's rule; log:\n{log}"
    );
    assert!(
        log.contains(&format!("foreign rule `{docker_line}`")),
        "the warning names the rule; log:\n{log}"
    );

    // Someone flushes host 1's nat table: the chain and the jump at position 1 come back, and
    // with them the host address towards the outside.
    let nat_before = save(flavour, &c.hosts[1], "nat");
    c.hosts[1].exec(
        &flavour.iptables_command(IpFamily::V4),
        &["-t", "nat", "-F"],
    );
    wait_for("host 1's nat rules back", Duration::from_secs(20), || {
        (save(flavour, &c.hosts[1], "nat") == nat_before).then_some(())
    });
    assert_eq!(
        chain(flavour, &c.hosts[1], "nat", "POSTROUTING"),
        [MASQ_JUMP]
    );
    assert_eq!(wait_seen_by(&pods[1].ns, EXTERNAL), c.host_ip(1));
    assert_eq!(wait_seen_by(&pods[1].ns, &pods[0].ip), pods[1].ip);
    assert_eq!(wait_seen_by(&pods[0].ns, &pods[1].ip), pods[0].ip);

    // Host 0 wrote its rules twice in all (install, docker restart): docker's rule below ours
    // does not make every resync rewrite them.
    let log = c.log(0);
    assert_eq!(log.matches(APPLIED).count(), 2, "log:\n{log}");
}

#[test]
fn ip_masq_false_leaves_the_nat_table_byte_for_byte() {
    let flavour = Flavour::Nft;
    let mut c = Cluster::build(2, CONFIG, &["--ip-masq=false", "--iptables-resync=1"]);
    // Host 0: docker's rule for the subnet it re-claims. Host 1: the Network changed since the
    // last run, whose Go flanneld v0.11 rules would be retired with --ip-masq.
    seed_subnet_env(&c, 0, "10.20.0.0/16", "10.20.7.1/24", false);
    iptables(flavour, &c.hosts[0], "nat", "-I", &docker_rule(SUBNET0));
    seed_subnet_env(&c, 1, "10.9.0.0/16", "10.9.3.1/24", false);
    iptables(
        flavour,
        &c.hosts[1],
        "nat",
        "-A",
        &[
            "POSTROUTING",
            "-s",
            "10.9.0.0/16",
            "-d",
            "10.9.0.0/16",
            "-j",
            "RETURN",
        ],
    );
    let before: Vec<String> = c.hosts.iter().map(|h| save(flavour, h, "nat")).collect();
    assert!(
        before.iter().all(|t| t.contains("-A POSTROUTING")),
        "{before:?}"
    );

    // Host 0 first: host 1 picks a random free subnet and must not take 10.20.7.0/24 before
    // host 0 re-claims it from its subnet.env.
    c.start_agent(0);
    let first = wait_rewritten(&mut c, 0, false);
    c.start_agent(1);
    let subnets = [first, wait_rewritten(&mut c, 1, false)];
    assert_eq!(subnets[0], "10.20.7.1/24");
    assert!(subnets[1].starts_with("10.20."), "{}", subnets[1]);
    for host in &c.hosts {
        // The forward rules are still ours to keep.
        assert_eq!(chain(flavour, host, "filter", "FORWARD"), [FORWARD_JUMP]);
    }

    // Docker masquerades pod traffic and the agent lets it: pod 0 is seen as host 0.
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let _servers: Vec<Whoami> = pods.iter().map(|p| Whoami::start(&p.ns)).collect();
    assert_eq!(wait_seen_by(&pods[0].ns, &pods[1].ip), c.host_ip(0));
    assert_eq!(wait_seen_by(&pods[1].ns, &pods[0].ip), pods[1].ip);

    // Over several rule-check periods (--iptables-resync=1) the nat tables stay exactly as
    // they were (nft binaries skip the check while nf_tables reports no change).
    holds(
        "the nat tables untouched",
        Duration::from_millis(2500),
        || (c.hosts.iter().enumerate()).all(|(i, host)| save(flavour, host, "nat") == before[i]),
    );
    for (i, host) in c.hosts.iter().enumerate() {
        assert_eq!(
            save(flavour, host, "nat"),
            before[i],
            "host {i}; log:\n{}",
            c.log(i)
        );
        let log = c.log(i);
        assert!(!log.contains(FOREIGN_WARNING), "nat is not even looked at");
        assert_eq!(
            log.matches(APPLIED).count(),
            1,
            "only the forward rules, once"
        );
    }
    assert_eq!(seen_by(&pods[0].ns, &pods[1].ip), Some(c.host_ip(0)));
}

/// subnet.env records a subnet another host holds now. The rules, checked before the lease for
/// the recorded subnet, are checked again for the leased one before subnet.env is written, and
/// Go flanneld v0.11's rule for the recorded subnet is retired.
#[test]
fn rules_follow_the_lease_when_the_recorded_subnet_is_taken() {
    let flavour = Flavour::Nft;
    let mut c = Cluster::build(1, CONFIG, &["--ip-masq"]);
    let taken = format!("{}/subnets/10.20.7.0-24", c.prefix);
    c.etcd.put(
        &taken,
        r#"{"PublicIP":"192.168.100.99","BackendType":"host-gw"}"#,
    );
    seed_subnet_env(&c, 0, "10.20.0.0/16", "10.20.7.1/24", true);
    let go_v011 = [
        "POSTROUTING",
        "!",
        "-s",
        "10.20.0.0/16",
        "-d",
        SUBNET0,
        "-j",
        "RETURN",
    ];
    iptables(flavour, &c.hosts[0], "nat", "-A", &go_v011);

    c.start_agent(0);
    let leased = Cluster::network_of(&wait_rewritten(&mut c, 0, true));
    assert_ne!(leased, SUBNET0, "the recorded subnet is another host's");
    let ours = chain(flavour, &c.hosts[0], "nat", "FLANNEL-POSTRTG");
    let log = c.log(0);
    assert!(
        ours.iter().any(|r| r.contains(&format!("-d {leased} "))),
        "{ours:#?}\n{log}"
    );
    let nat = save(flavour, &c.hosts[0], "nat");
    assert!(!nat.contains(SUBNET0), "{nat}\n{log}");
    assert!(log.contains("the rules are checked again for it"), "{log}");
}
