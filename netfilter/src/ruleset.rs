//! The pure rule-set builder: from the cluster Network, our lease subnet and the options to the
//! rules of the agent-owned chains, the jumps into them and the stale rules to retire. No I/O.
//! The same builder serves iptables (IPv4 Network) and ip6tables (IPv6Network).

use ipnet::{IpNet, Ipv4Net};

use crate::egress::{Action, EgressRule};
use crate::rule::{Rule, Table};
use crate::words;

/// The agent-owned nat chain (same name as Go flanneld, so its chain is taken over).
pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
/// The agent-owned filter chain (same name as Go flanneld).
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";
/// The comment on every masquerade rule and on the POSTROUTING jump.
pub const MASQ_COMMENT: &str = "flanneld masq";
/// The comment on every forward rule and on the FORWARD jump.
pub const FORWARD_COMMENT: &str = "flanneld forward";
/// kube-proxy's masquerade mark: packets carrying it are left to KUBE-POSTROUTING.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";
/// Multicast destinations are never masqueraded (IPv4).
const MULTICAST: &str = "224.0.0.0/4";
/// Multicast destinations are never masqueraded (IPv6).
const MULTICAST_V6: &str = "ff00::/8";

/// What the rules are built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The cluster Network from the network config (`Network`, or `IPv6Network` for ip6tables).
    pub network: IpNet,
    /// Our own lease subnet of that family (network address, e.g. `10.1.74.0/24`).
    pub subnet: IpNet,
    /// `--ip-masq`: install the nat chain. Off means the nat table is not touched at all.
    pub ip_masq: bool,
    /// Add `--random-fully` to MASQUERADE: pass `supported && !--ip-masq-fully-random-disable`.
    pub random_fully: bool,
    /// `--iptables-forward-rules`: install the filter chain.
    pub forward_rules: bool,
    /// `--ip-masq-config`: the compiled egress policy for pod traffic leaving the Network;
    /// `None` masquerades all of it (Go flanneld's behaviour). IPv4 only: an IPv6 rule set
    /// masquerades all of it.
    pub egress: Option<Vec<EgressRule>>,
}

/// The Network and subnet of the previous run (from the old subnet.env).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Previous {
    /// The old `FLANNEL_NETWORK`.
    pub network: Ipv4Net,
    /// The old `FLANNEL_SUBNET`, as a network (`10.1.74.1/24` becomes `10.1.74.0/24`).
    pub subnet: Ipv4Net,
}

/// One agent-owned chain: its rules, the jump into it from a built-in chain, which must come
/// first there, and rules of earlier flanneld versions to delete from that built-in chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedChain {
    /// The table holding the chain.
    pub table: Table,
    /// The chain's name.
    pub name: &'static str,
    /// The rules, in order, all with `chain == name`.
    pub rules: Vec<Rule>,
    /// The jump, in the built-in chain (`jump.chain`, e.g. `POSTROUTING`).
    pub jump: Rule,
    /// Rules to delete from the built-in chain where present, matched word for word.
    pub retire: Vec<Rule>,
}

/// The desired state of every agent-owned chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    network: IpNet,
    chains: Vec<OwnedChain>,
}

impl RuleSet {
    /// Builds the rules for `config`. With `previous`, the Go flanneld v0.11 rules (placed
    /// directly in POSTROUTING / FORWARD) for those values are retired too (IPv4 only: v0.11 had
    /// no IPv6); the rules of our own chains need no retiring since each chain is replaced as a
    /// whole.
    pub fn build(config: &Config, previous: Option<&Previous>) -> RuleSet {
        let previous = previous.filter(|_| matches!(config.network, IpNet::V4(_)));
        let mut chains = Vec::new();
        if config.ip_masq {
            chains.push(masq_chain(config, previous));
        }
        if config.forward_rules {
            chains.push(forward_chain(config.network, previous));
        }
        RuleSet {
            network: config.network,
            chains,
        }
    }

    /// The cluster Network the rules are for.
    pub fn network(&self) -> IpNet {
        self.network
    }

    /// The owned chains, nat first.
    pub fn chains(&self) -> &[OwnedChain] {
        &self.chains
    }

    /// The `iptables-restore --noflush` payload that installs every chain into tables that hold
    /// none of our rules yet.
    pub fn render(&self) -> String {
        self.chains
            .iter()
            .map(|chain| chain.restore_section(&[]))
            .collect()
    }
}

impl OwnedChain {
    /// One `*table ... COMMIT` section that declares the chain (creating it, or atomically
    /// flushing and refilling it), deletes each rule of `delete` (seen in the built-in chain)
    /// and inserts the jump at position 1.
    pub fn restore_section(&self, delete: &[&Rule]) -> String {
        let mut out = format!("*{}\n:{} - [0:0]\n", self.table, self.name);
        for rule in &self.rules {
            out.push_str(&rule.line("-A"));
            out.push('\n');
        }
        for rule in delete {
            out.push_str(&rule.line("-D"));
            out.push('\n');
        }
        out.push_str(&format!(
            "-I {} 1 {}\nCOMMIT\n",
            self.jump.chain,
            words::join(&self.jump.spec)
        ));
        out
    }
}

fn comment(text: &str) -> [&str; 4] {
    ["-m", "comment", "--comment", text]
}

/// A rule: `matches`, then the comment, then `-j target` and the target's options.
fn commented(chain: &str, matches: &[&str], text: &str, target: &[&str]) -> Rule {
    let mut spec: Vec<&str> = matches.to_vec();
    spec.extend(comment(text));
    spec.push("-j");
    spec.extend(target);
    Rule::new(chain, &spec)
}

fn masquerade(random_fully: bool) -> &'static [&'static str] {
    if random_fully {
        &["MASQUERADE", "--random-fully"]
    } else {
        &["MASQUERADE"]
    }
}

fn masq_chain(config: &Config, previous: Option<&Previous>) -> OwnedChain {
    let network = config.network.to_string();
    let subnet = config.subnet.to_string();
    let masq = masquerade(config.random_fully);
    let multicast = multicast(config.network);
    let rule =
        |matches: &[&str], target: &[&str]| commented(MASQ_CHAIN, matches, MASQ_COMMENT, target);
    OwnedChain {
        table: Table::Nat,
        name: MASQ_CHAIN,
        rules: [
            // kube-proxy's service and hairpin SNAT stays with KUBE-POSTROUTING.
            rule(&["-m", "mark", "--mark", KUBE_PROXY_MARK], &["RETURN"]),
            // Delivery to our own pods (out the pod bridge): left to the host, keeps client IPs.
            rule(&["-d", &subnet], &["RETURN"]),
            // Pod to pod: ACCEPT ends nat processing, so no later MASQUERADE (docker's) applies.
            rule(&["-s", &network, "-d", &network], &["ACCEPT"]),
        ]
        .into_iter()
        .chain(egress_rules(config))
        .chain([
            rule(&["-s", &network, "!", "-d", multicast], masq),
            rule(&["!", "-s", &network, "-d", &network], masq),
        ])
        .collect(),
        jump: commented("POSTROUTING", &[], MASQ_COMMENT, &[MASQ_CHAIN]),
        retire: previous.map(v011_masq_rules).unwrap_or_default(),
    }
}

/// What one egress rule does with pod traffic to its destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EgressVerdict {
    /// Leave it to later rules (multicast, which is never masqueraded).
    Return,
    /// Keep the pod address.
    Keep,
    /// Masquerade it.
    Masquerade,
}

/// The egress policy's steps for pod-sourced traffic, most specific first: destination,
/// verdict and comment. When an exception covers multicast, multicast is returned first: it is
/// never masqueraded. IPv4 only; shared by the iptables and nftables renderings.
pub(crate) fn egress_steps(config: &Config) -> Vec<(String, EgressVerdict, &'static str)> {
    let (Some(policy), IpNet::V4(_)) = (&config.egress, config.network) else {
        return Vec::new();
    };
    let multicast: Ipv4Net = MULTICAST.parse().unwrap_or_default();
    let covers_multicast = policy.iter().any(|r| {
        r.action == Action::Masquerade && (r.dst.contains(&multicast) || multicast.contains(&r.dst))
    });
    let guard = covers_multicast.then(|| {
        let why = "flanneld egress: multicast is never masqueraded";
        (MULTICAST.to_string(), EgressVerdict::Return, why)
    });
    let steps = policy.iter().map(|r| {
        let verdict = match r.action {
            Action::Exempt => EgressVerdict::Keep,
            Action::Masquerade => EgressVerdict::Masquerade,
        };
        (r.dst.to_string(), verdict, r.origin.comment())
    });
    guard.into_iter().chain(steps).collect()
}

/// The egress steps as iptables rules: ACCEPT keeps the pod address (and, like pod to pod,
/// stops a later MASQUERADE); an exception masquerades.
fn egress_rules(config: &Config) -> Vec<Rule> {
    let network = config.network.to_string();
    let steps = egress_steps(config);
    steps
        .iter()
        .map(|(dst, verdict, comment)| {
            let target: &[&str] = match verdict {
                EgressVerdict::Return => &["RETURN"],
                EgressVerdict::Keep => &["ACCEPT"],
                EgressVerdict::Masquerade => masquerade(config.random_fully),
            };
            commented(MASQ_CHAIN, &["-s", &network, "-d", dst], comment, target)
        })
        .collect()
}

/// The multicast range of the network's family.
pub(crate) fn multicast(network: IpNet) -> &'static str {
    match network {
        IpNet::V4(_) => MULTICAST,
        IpNet::V6(_) => MULTICAST_V6,
    }
}

fn forward_chain(network: IpNet, previous: Option<&Previous>) -> OwnedChain {
    let network = network.to_string();
    let rule = |matches: &[&str]| commented(FORWARD_CHAIN, matches, FORWARD_COMMENT, &["ACCEPT"]);
    OwnedChain {
        table: Table::Filter,
        name: FORWARD_CHAIN,
        rules: vec![rule(&["-s", &network]), rule(&["-d", &network])],
        jump: commented("FORWARD", &[], FORWARD_COMMENT, &[FORWARD_CHAIN]),
        retire: previous
            .map(|p| v011_forward_rules(p.network))
            .unwrap_or_default(),
    }
}

/// Go flanneld v0.11's masquerade rules for the previous values (appended directly to nat
/// POSTROUTING, with and without `--random-fully`).
fn v011_masq_rules(previous: &Previous) -> Vec<Rule> {
    let network = previous.network.into();
    crate::go_rules::go_masq_rules(network, previous.subnet.into(), None, multicast(network))
}

/// Go flanneld v0.11's forward rules, appended directly to filter FORWARD.
fn v011_forward_rules(network: Ipv4Net) -> Vec<Rule> {
    crate::go_rules::go_forward_rules(network.into(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet: "10.1.74.0/24".parse().unwrap(),
            ip_masq: true,
            random_fully: true,
            forward_rules: true,
            egress: None,
        }
    }

    #[test]
    fn golden_full_install() {
        assert_eq!(
            RuleSet::build(&config(), None).render(),
            r#"*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -d 10.1.74.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-I FORWARD 1 -m comment --comment "flanneld forward" -j FLANNEL-FWD
COMMIT
"#
        );
    }

    #[test]
    fn golden_ipv6_install_for_ip6tables_ignores_v4_only_inputs() {
        let policy = crate::EgressPolicy {
            non_masquerade: vec!["10.0.0.0/8".parse().unwrap()],
            ..crate::EgressPolicy::default()
        };
        let config = Config {
            network: "fd00:10::/48".parse().unwrap(),
            subnet: "fd00:10:0:4a::/64".parse().unwrap(),
            egress: Some(policy.compile()),
            ..config()
        };
        let previous = Previous {
            network: "10.9.0.0/16".parse().unwrap(),
            subnet: "10.9.1.0/24".parse().unwrap(),
        };
        assert_eq!(
            RuleSet::build(&config, Some(&previous)).render(),
            r#"*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -d fd00:10:0:4a::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10::/48 -d fd00:10::/48 -m comment --comment "flanneld masq" -j ACCEPT
-A FLANNEL-POSTRTG -s fd00:10::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s fd00:10::/48 -d fd00:10::/48 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FLANNEL-FWD -s fd00:10::/48 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d fd00:10::/48 -m comment --comment "flanneld forward" -j ACCEPT
-I FORWARD 1 -m comment --comment "flanneld forward" -j FLANNEL-FWD
COMMIT
"#
        );
        assert!(RuleSet::build(&config, Some(&previous))
            .chains()
            .iter()
            .all(|c| c.retire.is_empty()));
    }

    #[test]
    fn golden_without_random_fully() {
        let config = Config {
            random_fully: false,
            forward_rules: false,
            ..config()
        };
        assert_eq!(
            RuleSet::build(&config, None).render(),
            r#"*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -d 10.1.74.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE
-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
COMMIT
"#
        );
    }

    #[test]
    fn golden_with_an_egress_policy() {
        let policy = crate::EgressPolicy {
            non_masquerade: ["10.0.0.0/8", "10.100.10.128/25", "192.0.0.0/2"]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect(),
            masquerade: vec![
                "10.100.10.0/24".parse().unwrap(),
                "224.0.0.0/3".parse().unwrap(),
            ],
            ..crate::EgressPolicy::default()
        };
        let config = Config {
            random_fully: false,
            forward_rules: false,
            egress: Some(policy.compile()),
            ..config()
        };
        assert_eq!(
            RuleSet::build(&config, None).render(),
            r#"*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -d 10.1.74.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 224.0.0.0/4 -m comment --comment "flanneld egress: multicast is never masqueraded" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.100.10.128/25 -m comment --comment "flanneld egress: nonMasqueradeCIDRs" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.100.10.0/24 -m comment --comment "flanneld egress: masqueradeCIDRs" -j MASQUERADE
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 169.254.0.0/16 -m comment --comment "flanneld egress: link-local, masqLinkLocal is false" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.0.0.0/8 -m comment --comment "flanneld egress: nonMasqueradeCIDRs" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 224.0.0.0/3 -m comment --comment "flanneld egress: masqueradeCIDRs" -j MASQUERADE
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 192.0.0.0/2 -m comment --comment "flanneld egress: nonMasqueradeCIDRs" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE
-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
COMMIT
"#,
            "the exception 224.0.0.0/3 covers multicast: multicast is returned first"
        );
    }

    #[test]
    fn ip_masq_off_leaves_nat_alone() {
        let config = Config {
            ip_masq: false,
            ..config()
        };
        let previous = Previous {
            network: "10.9.0.0/16".parse().unwrap(),
            subnet: "10.9.3.0/24".parse().unwrap(),
        };
        let rules = RuleSet::build(&config, Some(&previous));
        assert!(rules.chains().iter().all(|c| c.table == Table::Filter));
        assert!(!rules.render().contains("*nat"));
        let none = RuleSet::build(
            &Config {
                forward_rules: false,
                ..config
            },
            Some(&previous),
        );
        assert_eq!(none.render(), "");
    }

    #[test]
    fn golden_retired_v011_rules_for_previous_values() {
        let previous = Previous {
            network: "10.9.0.0/16".parse().unwrap(),
            subnet: "10.9.3.0/24".parse().unwrap(),
        };
        let rules = RuleSet::build(&config(), Some(&previous));
        let retired: Vec<String> = rules
            .chains()
            .iter()
            .flat_map(|c| {
                c.retire
                    .iter()
                    .map(|r| format!("{}: {}", c.table, r.line("-D")))
            })
            .collect();
        assert_eq!(
            retired,
            [
                "nat: -D POSTROUTING -s 10.9.0.0/16 -d 10.9.0.0/16 -j RETURN",
                "nat: -D POSTROUTING ! -s 10.9.0.0/16 -d 10.9.3.0/24 -j RETURN",
                "nat: -D POSTROUTING -s 10.9.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
                "nat: -D POSTROUTING ! -s 10.9.0.0/16 -d 10.9.0.0/16 -j MASQUERADE",
                "nat: -D POSTROUTING -s 10.9.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully",
                "nat: -D POSTROUTING ! -s 10.9.0.0/16 -d 10.9.0.0/16 -j MASQUERADE --random-fully",
                "filter: -D FORWARD -s 10.9.0.0/16 -j ACCEPT",
                "filter: -D FORWARD -d 10.9.0.0/16 -j ACCEPT",
            ]
        );
        // The owned chains themselves do not depend on the previous values.
        let fresh = RuleSet::build(&config(), None);
        for (a, b) in rules.chains().iter().zip(fresh.chains()) {
            assert_eq!((&a.rules, &a.jump), (&b.rules, &b.jump));
        }
    }
}
