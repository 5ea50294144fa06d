//! The doctor's pure part: what was read from this host (and etcd) in, findings out. Each finding
//! has a stable id, which is also its section in `docs/troubleshooting.md`.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use netfilter::{Flavour, Rule, Saved, Table};
use subnet::SubnetEnv;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; the host works.
    Note,
    /// Breaks or will break pod traffic; `doctor` exits 1.
    Problem,
}

/// One finding: what is wrong, and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Stable id, also the anchor of its section in `docs/troubleshooting.md`.
    pub id: &'static str,
    pub severity: Severity,
    /// What was found, with the values.
    pub summary: String,
    /// What to do.
    pub fix: String,
}

/// Every id a finding can have (each has a section in `docs/troubleshooting.md`, see the test).
#[cfg(test)]
pub const IDS: [&str; 20] = [
    "ip-forward-off",
    "br-netfilter",
    "foreign-masquerade",
    "forward-reject-ahead",
    "rp-filter-strict",
    "bridge-mtu",
    "docker-bip",
    "peer-without-route",
    "route-without-lease",
    "subnet-shared",
    "vxlan-tx-checksum",
    "iptables-mixed",
    "subnet-env-missing",
    "subnet-env-stale",
    "clock-skew",
    "etcd-unreachable",
    "masquerade-missing",
    "go-flanneld-rules",
    "docker-direct-routing-blocked",
    "pod-mtu-above-backend",
];

/// One interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub name: String,
    pub mtu: u32,
    pub addrs: Vec<Ipv4Addr>,
    /// The effective rp_filter (the larger of `all` and the interface's own).
    pub rp_filter: Option<u8>,
    /// For vxlan devices: whether `tx-checksum-ip-generic` is on (`None`: not checked).
    pub tx_checksum: Option<bool>,
    /// The bridge it is a port of (a pod's host-side veth: `cni0`, `docker0`), if any.
    pub master: Option<String>,
}

/// What etcd says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdFacts {
    pub network: Ipv4Net,
    /// The subnets of every lease.
    pub leases: Vec<Ipv4Net>,
    /// etcd's clock minus ours (`None`: not measured), as (ahead, by).
    pub skew: Option<(bool, Duration)>,
}

/// Everything the checks look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub ip_forward: Option<bool>,
    /// `None`: br_netfilter is not loaded.
    pub bridge_nf_call_iptables: Option<bool>,
    pub links: Vec<LinkFacts>,
    /// Main-table routes: destination and whether it is ours (proto 70).
    pub routes: Vec<(Ipv4Net, bool)>,
    pub env: Option<SubnetEnv>,
    /// The rules of each iptables flavour whose binaries work.
    pub iptables: Vec<(Flavour, Saved)>,
    /// etcd's answers, or why it could not be asked.
    pub etcd: Option<Result<EtcdFacts, String>>,
}

/// Clock skew that matters: lease expirations in the v2 keyspace are etcd's clock.
const SKEW_LIMIT: Duration = Duration::from_secs(60);

/// Every finding for `facts`, problems first.
pub fn diagnose(facts: &Facts) -> Vec<Finding> {
    let mut findings = Vec::new();
    kernel(facts, &mut findings);
    links(facts, &mut findings);
    rules(facts, &mut findings);
    store(facts, &mut findings);
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

fn finding(
    id: &'static str,
    severity: Severity,
    summary: String,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        id,
        severity,
        summary,
        fix: fix.into(),
    }
}

fn kernel(facts: &Facts, out: &mut Vec<Finding>) {
    if facts.ip_forward == Some(false) {
        out.push(finding(
            "ip-forward-off",
            Severity::Problem,
            "net.ipv4.ip_forward is 0: this host does not route pod traffic".into(),
            "sysctl -w net.ipv4.ip_forward=1, and set it in /etc/sysctl.d/ so it survives a reboot",
        ));
    }
    let bridged = match facts.bridge_nf_call_iptables {
        None => Some("br_netfilter is not loaded: traffic between pods on one bridge bypasses iptables"),
        Some(false) => Some("net.bridge.bridge-nf-call-iptables is 0: traffic between pods on one bridge bypasses iptables"),
        Some(true) => None,
    };
    if let Some(summary) = bridged {
        out.push(finding("br-netfilter", Severity::Note, format!("{summary} (Kubernetes Services through kube-proxy need it)"), "modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1, if kube-proxy serves this host"));
    }
}

fn links(facts: &Facts, out: &mut Vec<Finding>) {
    for link in &facts.links {
        if link.rp_filter == Some(1) && !link.addrs.is_empty() {
            out.push(finding("rp-filter-strict", Severity::Problem, format!("rp_filter is strict (1) on {}: replies arriving on another interface than the route back are dropped", link.name), format!("sysctl -w net.ipv4.conf.{}.rp_filter=2 (loose), and net.ipv4.conf.all.rp_filter=2", link.name)));
        }
        if link.tx_checksum == Some(true) {
            out.push(finding("vxlan-tx-checksum", Severity::Note, format!("{} computes UDP checksums in software offload (tx-checksum-ip-generic on); some kernels and NICs send vxlan packets with bad checksums that peers drop, stalling TCP (flannel #1279, #2152)", link.name), format!("if pod traffic across hosts stalls: ethtool -K {} tx-checksum-ip-generic off", link.name)));
        }
    }
    let Some(env) = &facts.env else {
        return;
    };
    for link in facts
        .links
        .iter()
        .filter(|l| l.name == "cni0" || l.name == "docker0")
    {
        if link.mtu > env.mtu {
            out.push(finding(
                "bridge-mtu",
                Severity::Problem,
                format!(
                    "{} has MTU {}, above FLANNEL_MTU {}: large packets between hosts are dropped",
                    link.name, link.mtu, env.mtu
                ),
                format!(
                    "ip link set {} mtu {} (docker: --mtu={}, see flanneld mk-docker-opts)",
                    link.name, env.mtu, env.mtu
                ),
            ));
        }
    }
    pod_mtu(facts, env, out);
    let docker = facts.links.iter().find(|l| l.name == "docker0");
    if let (Some(docker), Some(flannel_subnet)) = (docker, env.flannel_subnet()) {
        let bip = flannel_subnet.addr();
        if !docker.addrs.is_empty() && !docker.addrs.contains(&bip) {
            let have: Vec<String> = docker.addrs.iter().map(ToString::to_string).collect();
            out.push(finding("docker-bip", Severity::Problem, format!("docker0 has {}, but FLANNEL_SUBNET is {}: containers get addresses peers do not route to this host", have.join(", "), flannel_subnet), format!("run dockerd with --bip={flannel_subnet} (flanneld mk-docker-opts writes it) and restart docker")));
        }
    }
}

fn rules(facts: &Facts, out: &mut Vec<Finding>) {
    let with_rules: Vec<&(Flavour, Saved)> = facts
        .iptables
        .iter()
        .filter(|(_, s)| s.rule_count() > 0)
        .collect();
    if with_rules.len() > 1 {
        out.push(finding("iptables-mixed", Severity::Problem, "both iptables-legacy and iptables-nft hold rules: the kernel applies both sets, and each tool shows only its own".into(), "make every tool (docker, kube-proxy, flanneld --iptables-backend) use one flavour (update-alternatives --config iptables), then flush the other"));
    }
    let Some(env) = &facts.env else {
        return;
    };
    if with_rules.is_empty() && env.ipmasq {
        out.push(finding(
            "masquerade-missing",
            Severity::Problem,
            "FLANNEL_IPMASQ is true but no iptables flavour holds any rule".into(),
            "is the agent running with --ip-masq? Its log says why the rules are not in place",
        ));
    }
    for (flavour, saved) in with_rules {
        let nat = saved
            .table(Table::Nat)
            .map(|t| t.chain_rules("POSTROUTING").collect::<Vec<_>>())
            .unwrap_or_default();
        masquerade_order(*flavour, &nat, env, out);
        let forward = saved
            .table(Table::Filter)
            .map(|t| t.chain_rules("FORWARD").collect::<Vec<_>>())
            .unwrap_or_default();
        forward_order(*flavour, &forward, env, out);
        go_flanneld_rules(*flavour, saved, env, out);
        docker_direct_routing(*flavour, saved, env, out);
    }
}

/// Pods whose interface MTU is above FLANNEL_MTU: created before the backend was switched to one
/// with a smaller MTU (host-gw 1500 to vxlan 1450), they keep theirs; their host-side veths on
/// the pod bridge show it.
fn pod_mtu(facts: &Facts, env: &SubnetEnv, out: &mut Vec<Finding>) {
    let above: Vec<&LinkFacts> = (facts.links.iter())
        .filter(|l| matches!(l.master.as_deref(), Some("cni0" | "docker0")))
        .filter(|l| l.mtu > env.mtu)
        .collect();
    let Some(first) = above.first() else { return };
    let names: Vec<&str> = above.iter().map(|l| l.name.as_str()).collect();
    out.push(finding(
        "pod-mtu-above-backend",
        Severity::Problem,
        format!(
            "{} pod interface(s) on {} have MTU {}, above FLANNEL_MTU {} (pods created before the backend switched keep their MTU): their packets over {} bytes to other hosts are dropped ({})",
            above.len(),
            first.master.as_deref().unwrap_or_default(),
            first.mtu,
            env.mtu,
            env.mtu,
            names.join(", ")
        ),
        format!("recreate those pods: new pods get FLANNEL_MTU={}", env.mtu),
    ));
}

/// Docker 28's direct-access filtering (moby `filterDirectAccess`): raw `PREROUTING -d
/// <container>/32 ! -i <bridge> [-p P --dport N] -j DROP` for containers on a bridge in gateway
/// mode nat. For a container in this host's flannel subnet (docker0 with `--bip` from
/// subnet.env) that drops every packet other hosts' pods send it, which arrive on eth0
/// (host-gw) or flannel.1 (vxlan).
fn docker_direct_routing(flavour: Flavour, saved: &Saved, env: &SubnetEnv, out: &mut Vec<Finding>) {
    let Some(v4) = env.ipv4 else { return };
    let raw = saved
        .table(Table::Raw)
        .map(|t| t.chain_rules("PREROUTING").collect::<Vec<_>>());
    let blocked: Vec<String> = raw
        .unwrap_or_default()
        .into_iter()
        .filter(|rule| rule.target() == Some("DROP"))
        .filter(|rule| matches!(rule.in_interface(), Some((_, true))))
        .filter(|rule| {
            let dst = rule.destination().filter(|(_, negated)| !negated);
            dst.and_then(|(d, _)| d.parse::<Ipv4Net>().ok())
                .is_some_and(|d| v4.subnet.contains(&d))
        })
        .map(|rule| rule.to_string())
        .collect();
    if blocked.is_empty() {
        return;
    }
    out.push(finding(
        "docker-direct-routing-blocked",
        Severity::Problem,
        format!(
            "{flavour} raw PREROUTING drops packets to {} container address(es) in this host's subnet {} unless they come from the bridge (docker 28's direct-access filtering): pods on other hosts cannot reach them, e.g. `{}`",
            blocked.len(),
            v4.subnet,
            blocked[0]
        ),
        "set \"allow-direct-routing\": true in /etc/docker/daemon.json (or dockerd --allow-direct-routing, which flanneld mk-docker-opts -a emits; docker 28.2 or later) and restart docker; keep --iptables-forward-rules on, so flanneld's FORWARD accept comes before docker's DOCKER chain drop",
    ));
}

/// Go flanneld's rules for the current Network left in the built-in chains (a host switched
/// from Go flanneld in place): a note with the exact commands that remove them.
fn go_flanneld_rules(flavour: Flavour, saved: &Saved, env: &SubnetEnv, out: &mut Vec<Finding>) {
    let Some(v4) = env.ipv4 else { return };
    let leftovers = netfilter::go_leftovers(saved, v4.network.into(), v4.subnet.into());
    if leftovers.is_empty() {
        return;
    }
    let iptables = flavour.iptables_command(netfilter::IpFamily::V4);
    let deletes: Vec<String> = (leftovers.iter())
        .map(|(table, rule)| format!("{iptables} -t {table} {}", rule.line("-D")))
        .collect();
    out.push(finding(
        "go-flanneld-rules",
        Severity::Note,
        format!(
            "{} rules of Go flanneld for {} are still in {flavour}'s built-in chains (harmless while our jumps come first, stale once the Network changes)",
            leftovers.len(),
            v4.network
        ),
        format!(
            "flanneld cleanup --go-leftovers removes exactly them; or: {}. A rollback to Go flanneld adds them again",
            deletes.join("; ")
        ),
    ));
}

/// Whether a source match (`-s X`, absent, or `! -s X`) can match pod addresses of `network`.
fn from_pods(rule: &Rule, network: Ipv4Net) -> bool {
    match rule.source() {
        None => true,
        Some((source, negated)) => match source.parse::<Ipv4Net>() {
            Ok(net) if negated => !net.contains(&network),
            Ok(net) => net.contains(&network.network()) || network.contains(&net.network()),
            Err(_) => true,
        },
    }
}

fn masquerade_order(
    flavour: Flavour,
    postrouting: &[&Rule],
    env: &SubnetEnv,
    out: &mut Vec<Finding>,
) {
    let Some(v4) = env.ipv4 else { return };
    let ours = postrouting
        .iter()
        .position(|r| r.target() == Some(netfilter::MASQ_CHAIN));
    if env.ipmasq && ours.is_none() {
        out.push(finding("masquerade-missing", Severity::Problem, format!("FLANNEL_IPMASQ is true but {flavour} nat POSTROUTING has no jump to {}", netfilter::MASQ_CHAIN), "is the agent running with --ip-masq and the right --iptables-backend? Its log says why the rules are not in place"));
    }
    for (at, rule) in postrouting.iter().enumerate() {
        let masquerades = matches!(rule.target(), Some("MASQUERADE" | "SNAT"));
        if !masquerades || !from_pods(rule, v4.network) {
            continue;
        }
        let ahead = ours.is_none_or(|o| at < o);
        let (severity, position) = if ahead {
            (
                Severity::Problem,
                "ahead of flanneld's jump (or without it): it rewrites pod-to-pod traffic",
            )
        } else {
            (
                Severity::Note,
                "behind flanneld's jump: pod-to-pod traffic is exempted before it",
            )
        };
        out.push(finding("foreign-masquerade", severity, format!("{flavour} nat: `{rule}` masquerades traffic from the cluster Network {}, {position}", v4.network), "run docker with --ip-masq=false (flanneld mk-docker-opts emits it); with --ip-masq the agent keeps its jump first"));
    }
}

fn forward_order(flavour: Flavour, forward: &[&Rule], env: &SubnetEnv, out: &mut Vec<Finding>) {
    let Some(v4) = env.ipv4 else { return };
    let ours = forward
        .iter()
        .position(|r| r.target() == Some(netfilter::FORWARD_CHAIN));
    let catch_all = |r: &&&Rule| {
        matches!(r.target(), Some("REJECT" | "DROP"))
            && r.source().is_none()
            && !r
                .spec
                .iter()
                .any(|w| w == "-d" || w == "-i" || w == "-o" || w == "-p")
    };
    if let Some((at, rule)) = forward.iter().enumerate().find(|(_, r)| catch_all(r)) {
        if ours.is_none_or(|o| at < o) {
            out.push(finding("forward-reject-ahead", Severity::Problem, format!("{flavour} filter: `{rule}` sits ahead of flanneld's FORWARD accept rules: traffic to and from the cluster Network {} is refused", v4.network), "run the agent with --iptables-forward-rules (the default) so its jump is kept first, or accept the Network ahead of the catch-all"));
        }
    }
}

fn store(facts: &Facts, out: &mut Vec<Finding>) {
    let Some(env) = &facts.env else {
        out.push(finding("subnet-env-missing", Severity::Problem, "subnet.env is missing or unreadable: the agent has not written it (yet)".into(), "start the agent, or point --subnet-file at the file it writes; its log says why it is not ready"));
        return;
    };
    let etcd = match &facts.etcd {
        None => return,
        Some(Err(why)) => {
            out.push(finding("etcd-unreachable", Severity::Problem, format!("etcd could not be asked: {why}"), "check --etcd-endpoints and the TLS files (the agent's flags and FLANNELD_* variables apply to doctor too)"));
            return;
        }
        Some(Ok(etcd)) => etcd,
    };
    let Some(v4) = env.ipv4 else { return };
    let own = v4.subnet;
    if v4.network != etcd.network || !etcd.leases.contains(&own) {
        out.push(finding("subnet-env-stale", Severity::Problem, format!("subnet.env says Network {} and subnet {own}; etcd has Network {} and {} that lease", v4.network, etcd.network, if etcd.leases.contains(&own) { "holds" } else { "no longer holds" }), "restart the agent: it re-claims the subnet or takes a new one and rewrites subnet.env; then restart the pods of this host"));
    }
    routes_vs_leases(facts, v4.network, etcd, own, out);
    shared_subnets(etcd, out);
    if let Some((ahead, by)) = etcd.skew.filter(|(_, by)| *by > SKEW_LIMIT) {
        let side = if ahead { "ahead of" } else { "behind" };
        out.push(finding("clock-skew", Severity::Problem, format!("etcd's clock is {}s {side} this host's: lease expirations (etcd's clock in the v2 keyspace) are misjudged by that much", by.as_secs()), "synchronise the clocks (chrony or systemd-timesyncd on every host and etcd member)"));
    }
}

/// Two leases in etcd with one IPv4 subnet (dual-stack keys that differ in the IPv6 half).
fn shared_subnets(etcd: &EtcdFacts, out: &mut Vec<Finding>) {
    let mut seen = std::collections::BTreeSet::new();
    let shared: std::collections::BTreeSet<_> =
        etcd.leases.iter().filter(|s| !seen.insert(*s)).collect();
    for subnet in shared {
        out.push(finding("subnet-shared", Severity::Problem, format!("several leases in etcd hold {subnet}: their hosts cut each other off, and every agent programs only the first it saw"), "delete the lease of the host that should move (`etcdctl get --prefix <prefix>/subnets/` shows both keys and their PublicIP) and restart its agent; flanneld-rs agents that chose at the same time settle it themselves within a second"));
    }
}

fn routes_vs_leases(
    facts: &Facts,
    network: Ipv4Net,
    etcd: &EtcdFacts,
    own: Ipv4Net,
    out: &mut Vec<Finding>,
) {
    let routed = |subnet: &Ipv4Net| facts.routes.iter().any(|(dst, _)| dst == subnet);
    for lease in etcd.leases.iter().filter(|l| **l != own && !routed(l)) {
        out.push(finding("peer-without-route", Severity::Problem, format!("the lease {lease} in etcd has no route on this host: its pods are unreachable from here"), "see the agent's log for why the peer is skipped (backend type, not on-link, rejected lease); `flanneld plan` shows what it would program"));
    }
    let stray = facts
        .routes
        .iter()
        .filter(|(dst, ours)| *ours && network.contains(dst) && !etcd.leases.contains(dst));
    for (dst, _) in stray {
        out.push(finding("route-without-lease", Severity::Problem, format!("the tagged route {dst} has no lease in etcd: traffic to it goes to a host that no longer owns it"), "a running agent removes it within 70 s (60 s grace, 10 s resync); if none runs, `flanneld cleanup` removes the agent's routes"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            ipv4: Some(subnet::FamilyEnv {
                network: "10.5.0.0/16".parse().unwrap(),
                subnet: "10.5.1.0/24".parse().unwrap(),
            }),
            ipv6: None,
            mtu: 1450,
            ipmasq: true,
        }
    }

    fn link(name: &str, mtu: u32, addrs: &[&str]) -> LinkFacts {
        LinkFacts {
            name: name.into(),
            mtu,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            rp_filter: Some(2),
            tx_checksum: None,
            master: None,
        }
    }

    fn healthy() -> Facts {
        let nat = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n-A POSTROUTING -s 10.5.1.0/24 ! -o docker0 -j MASQUERADE\nCOMMIT\n*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-A FORWARD -j REJECT\nCOMMIT\n";
        Facts {
            ip_forward: Some(true),
            bridge_nf_call_iptables: Some(true),
            links: vec![
                link("eth0", 1500, &["192.168.1.5"]),
                link("cni0", 1450, &["10.5.1.1"]),
            ],
            routes: vec![("10.5.2.0/24".parse().unwrap(), true)],
            env: Some(env()),
            iptables: vec![(Flavour::Nft, Saved::parse(nat).unwrap())],
            etcd: Some(Ok(EtcdFacts {
                network: "10.5.0.0/16".parse().unwrap(),
                leases: vec![
                    "10.5.1.0/24".parse().unwrap(),
                    "10.5.2.0/24".parse().unwrap(),
                ],
                skew: Some((true, Duration::from_secs(2))),
            })),
        }
    }

    fn ids(facts: &Facts) -> Vec<(&'static str, Severity)> {
        diagnose(facts).iter().map(|f| (f.id, f.severity)).collect()
    }

    #[test]
    fn a_healthy_host_has_only_the_note_about_docker_behind_us() {
        assert_eq!(ids(&healthy()), [("foreign-masquerade", Severity::Note)]);
    }

    #[test]
    fn each_problem_is_found_with_its_id() {
        let mut broken = healthy();
        broken.ip_forward = Some(false);
        broken.bridge_nf_call_iptables = None;
        broken.links[0].rp_filter = Some(1);
        broken.links[1].mtu = 1500;
        broken.links.push(link("docker0", 1500, &["172.17.0.1"]));
        broken.links.push(LinkFacts {
            tx_checksum: Some(true),
            ..link("flannel.1", 1450, &["10.5.1.0"])
        });
        broken.routes.push(("10.5.9.0/24".parse().unwrap(), true));
        let nat = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.5.1.0/24 ! -o docker0 -j MASQUERADE\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n";
        broken.iptables = vec![
            (Flavour::Nft, Saved::parse(nat).unwrap()),
            (
                Flavour::Legacy,
                Saved::parse("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n").unwrap(),
            ),
        ];
        broken.etcd = Some(Ok(EtcdFacts {
            network: "10.5.0.0/16".parse().unwrap(),
            leases: vec![
                "10.5.1.0/24".parse().unwrap(),
                "10.5.2.0/24".parse().unwrap(),
                "10.5.3.0/24".parse().unwrap(),
            ],
            skew: Some((false, Duration::from_secs(300))),
        }));
        let found = ids(&broken);
        for id in [
            "ip-forward-off",
            "rp-filter-strict",
            "bridge-mtu",
            "docker-bip",
            "iptables-mixed",
            "masquerade-missing",
            "foreign-masquerade",
            "forward-reject-ahead",
            "peer-without-route",
            "route-without-lease",
            "clock-skew",
        ] {
            assert!(found.contains(&(id, Severity::Problem)), "{id}: {found:?}");
        }
        for id in ["br-netfilter", "vxlan-tx-checksum"] {
            assert!(found.contains(&(id, Severity::Note)), "{id}: {found:?}");
        }
        assert!(found.iter().all(|(id, _)| IDS.contains(id)));
    }

    #[test]
    fn pods_left_above_flannel_mtu_by_a_backend_switch_are_named() {
        let mut facts = healthy();
        let port = |name: &str, mtu: u32| LinkFacts {
            master: Some("cni0".into()),
            ..link(name, mtu, &[])
        };
        facts.links.push(port("vethnew", 1450));
        assert!(!ids(&facts)
            .iter()
            .any(|(id, _)| *id == "pod-mtu-above-backend"));
        facts.links.push(port("vethold1", 1500));
        facts.links.push(port("vetholdx", 1500));
        let found = diagnose(&facts);
        let pods = found
            .iter()
            .find(|f| f.id == "pod-mtu-above-backend")
            .expect("the finding");
        assert_eq!(pods.severity, Severity::Problem);
        assert!(
            pods.summary
                .contains("2 pod interface(s) on cni0 have MTU 1500, above FLANNEL_MTU 1450")
                && pods.summary.contains("vethold1, vetholdx"),
            "{}",
            pods.summary
        );
    }

    #[test]
    fn two_leases_of_one_subnet_are_a_problem() {
        let mut facts = healthy();
        if let Some(Ok(etcd)) = facts.etcd.as_mut() {
            etcd.leases.push("10.5.2.0/24".parse().unwrap());
        }
        let found = diagnose(&facts);
        let shared: Vec<&Finding> = found.iter().filter(|f| f.id == "subnet-shared").collect();
        assert_eq!(shared.len(), 1, "{found:?}");
        assert!(
            shared[0].summary.contains("10.5.2.0/24"),
            "{}",
            shared[0].summary
        );
    }

    #[test]
    fn store_findings() {
        let mut facts = healthy();
        facts.etcd = Some(Err("connection refused".into()));
        assert!(ids(&facts).contains(&("etcd-unreachable", Severity::Problem)));
        facts.etcd = Some(Ok(EtcdFacts {
            network: "10.6.0.0/16".parse().unwrap(),
            leases: vec![],
            skew: None,
        }));
        assert!(ids(&facts).contains(&("subnet-env-stale", Severity::Problem)));
        facts.env = None;
        assert!(ids(&facts).contains(&("subnet-env-missing", Severity::Problem)));
    }

    #[test]
    fn every_id_has_a_section_in_the_troubleshooting_guide() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let guide = std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap();
        for id in IDS {
            assert!(
                guide.contains(&format!("\n### {id}\n")),
                "docs/troubleshooting.md lacks `### {id}`"
            );
        }
    }
}
