//! Which rule decides NAT for a flow: the nat POSTROUTING path walked as the kernel walks it,
//! over a live `iptables-save` dump (our rules and everyone else's, such as docker's).
//!
//! The walk understands the matches such rules use: `-s`, `-d`, `-o` (with `+` wildcards), `-m
//! mark --mark`, `-m addrtype --dst-type`, `-m comment`, each optionally negated. A rule with any
//! other match (protocols, ports, conntrack states, ipsets) cannot be decided for an address pair;
//! it is assumed not to match and listed in [`Verdict::uncertain`].

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::rule::Rule;
use crate::save::SavedTable;

/// The flow to explain, with what the host says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The source address (a pod's, for pod traffic).
    pub src: Ipv4Addr,
    /// The destination.
    pub dst: Ipv4Addr,
    /// The interface the kernel routes `dst` out of, if known.
    pub out_iface: Option<String>,
    /// The address MASQUERADE would pick on that interface.
    pub out_addr: Option<Ipv4Addr>,
    /// Whether `dst` is one of this host's addresses (`addrtype --dst-type LOCAL`).
    pub dst_is_local: bool,
    /// The packet mark (0: nothing marked it, e.g. not kube-proxy service traffic).
    pub mark: u32,
}

/// One rule on the path: where it is and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The chain holding it.
    pub chain: String,
    /// Its 1-based position in that chain.
    pub position: usize,
    /// The rule as `iptables-save` prints it.
    pub rule: String,
}

/// What NAT does with the flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The source address is kept.
    Kept,
    /// Masqueraded to the out interface's address (`None` when it is not known).
    Masqueraded(Option<Ipv4Addr>),
    /// Rewritten to a fixed address by SNAT (the `--to-source` text).
    Snat(String),
}

impl Outcome {
    /// Whether the source address is rewritten.
    pub fn rewrites(&self) -> bool {
        !matches!(self, Outcome::Kept)
    }
}

/// The walk's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The rule that decided (ACCEPT, MASQUERADE, SNAT, or a RETURN out of POSTROUTING);
    /// `None` when the flow fell off the end of POSTROUTING (its policy, ACCEPT, applies).
    pub decided_by: Option<Step>,
    /// What happens to the source address.
    pub outcome: Outcome,
    /// The jumps taken, in order, ending with the deciding rule.
    pub path: Vec<Step>,
    /// Rules on the path whose matches could not be evaluated, assumed not to match.
    pub uncertain: Vec<Step>,
}

/// How one rule relates to the flow.
enum Match {
    Yes,
    No,
    Unknown,
}

/// Walks nat POSTROUTING of `nat` for `flow`. A flow to one of this host's addresses is
/// delivered locally (PREROUTING, INPUT) and never reaches POSTROUTING: its source is kept.
pub fn walk(nat: &SavedTable, flow: &Flow) -> Verdict {
    let mut verdict = Verdict {
        decided_by: None,
        outcome: Outcome::Kept,
        path: Vec::new(),
        uncertain: Vec::new(),
    };
    if !flow.dst_is_local {
        walk_chain(nat, "POSTROUTING", flow, &mut verdict, 0);
    }
    verdict
}

/// How a walk through one chain ended.
enum Exit {
    /// A verdict: stop everything.
    Decided,
    /// Back to the calling chain (end of chain or RETURN).
    Returned,
}

/// The deepest chain nesting followed (iptables itself refuses loops).
const MAX_DEPTH: usize = 32;

fn walk_chain(
    nat: &SavedTable,
    chain: &str,
    flow: &Flow,
    verdict: &mut Verdict,
    depth: usize,
) -> Exit {
    for (index, rule) in nat.chain_rules(chain).enumerate() {
        let step = Step {
            chain: chain.to_string(),
            position: index + 1,
            rule: rule.to_string(),
        };
        match matches(rule, flow) {
            Match::No => continue,
            Match::Unknown => {
                verdict.uncertain.push(step);
                continue;
            }
            Match::Yes => {}
        }
        let target = rule.target().unwrap_or_default();
        let outcome = match target {
            "ACCEPT" => Outcome::Kept,
            "MASQUERADE" => Outcome::Masqueraded(flow.out_addr),
            "SNAT" => Outcome::Snat(
                rule_value(rule, "--to-source")
                    .unwrap_or_default()
                    .to_string(),
            ),
            "RETURN" if chain == "POSTROUTING" => Outcome::Kept,
            "RETURN" => return Exit::Returned,
            user if nat.has_chain(user) && depth < MAX_DEPTH => {
                verdict.path.push(step);
                match walk_chain(nat, user, flow, verdict, depth + 1) {
                    Exit::Decided => return Exit::Decided,
                    Exit::Returned => {
                        verdict.path.pop();
                        continue;
                    }
                }
            }
            // Non-terminating targets (MARK, LOG, CONNMARK, ...) and rules without one.
            _ => continue,
        };
        verdict.outcome = outcome;
        verdict.path.push(step.clone());
        verdict.decided_by = Some(step);
        return Exit::Decided;
    }
    Exit::Returned
}

/// The word after `flag` in a rule.
fn rule_value<'a>(rule: &'a Rule, flag: &str) -> Option<&'a str> {
    let at = rule.spec.iter().position(|w| w == flag)?;
    rule.spec.get(at + 1).map(String::as_str)
}

/// Whether every match of `rule` holds for `flow` (`Unknown` when one cannot be evaluated and
/// none fails).
fn matches(rule: &Rule, flow: &Flow) -> Match {
    let mut result = Match::Yes;
    let mut words = rule.spec.iter().map(String::as_str);
    let mut negate = false;
    while let Some(word) = words.next() {
        if matches!(word, "-j" | "--jump" | "-g" | "--goto") {
            break;
        }
        if word == "!" {
            negate = true;
            continue;
        }
        let value = words.next().unwrap_or_default();
        let holds = match word {
            // Loading a match module or a comment decides nothing.
            "-m" | "--match" | "--comment" => continue,
            "-s" | "--source" => Some(in_net(value, flow.src)),
            "-d" | "--destination" => Some(in_net(value, flow.dst)),
            "-o" | "--out-interface" => flow.out_iface.as_deref().map(|i| iface_matches(value, i)),
            "--mark" => Some(mark_matches(value, flow.mark)),
            "--dst-type" if value == "LOCAL" => Some(flow.dst_is_local),
            _ => None,
        };
        match holds {
            Some(h) if h == negate => return Match::No,
            Some(_) => {}
            None => result = Match::Unknown,
        }
        negate = false;
    }
    result
}

fn in_net(text: &str, addr: Ipv4Addr) -> bool {
    let net = text
        .parse::<Ipv4Net>()
        .or_else(|_| text.parse::<Ipv4Addr>().map(Ipv4Net::from));
    net.is_ok_and(|n| n.contains(&addr))
}

fn iface_matches(pattern: &str, iface: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => iface.starts_with(prefix),
        None => pattern == iface,
    }
}

/// `--mark value[/mask]`, in hex or decimal.
fn mark_matches(text: &str, mark: u32) -> bool {
    let number = |s: &str| match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    let (value, mask) = match text.split_once('/') {
        Some((v, m)) => (number(v), number(m)),
        None => (number(text), Some(u32::MAX)),
    };
    match (value, mask) {
        (Some(value), Some(mask)) => mark & mask == value,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::save::Saved;

    const NAT: &str = r#"*nat
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 10.1.74.0/24 ! -o docker0 -j MASQUERADE
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -d 10.1.74.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.0.0.0/8 -m comment --comment "flanneld egress: nonMasqueradeCIDRs" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
COMMIT
"#;

    fn flow(src: &str, dst: &str) -> Flow {
        Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            out_iface: Some("eth0".into()),
            out_addr: Some("192.168.65.1".parse().unwrap()),
            dst_is_local: false,
            mark: 0,
        }
    }

    fn verdict(nat: &str, flow: &Flow) -> Verdict {
        let saved = Saved::parse(nat).unwrap();
        walk(saved.table(crate::Table::Nat).unwrap(), flow)
    }

    fn decider(v: &Verdict) -> (String, usize) {
        let step = v.decided_by.clone().unwrap();
        (step.chain, step.position)
    }

    #[test]
    fn our_chain_decides_pod_traffic() {
        let corporate = verdict(NAT, &flow("10.1.74.5", "10.200.0.9"));
        assert_eq!(decider(&corporate), ("FLANNEL-POSTRTG".into(), 4));
        assert_eq!(corporate.outcome, Outcome::Kept);
        assert_eq!(corporate.path.len(), 2, "{:?}", corporate.path);

        let internet = verdict(NAT, &flow("10.1.74.5", "8.8.8.8"));
        assert_eq!(decider(&internet), ("FLANNEL-POSTRTG".into(), 5));
        assert_eq!(
            internet.outcome,
            Outcome::Masqueraded(Some("192.168.65.1".parse().unwrap()))
        );
    }

    #[test]
    fn docker_ahead_of_our_jump_decides_and_marks_and_returns_are_followed() {
        let docker_first = NAT.replacen(
            "-A POSTROUTING -m comment --comment \"flanneld masq\"",
            "-A POSTROUTING -s 10.1.74.0/24 ! -o docker0 -j MASQUERADE\n-A POSTROUTING -m comment --comment \"flanneld masq\"",
            1,
        );
        let v = verdict(&docker_first, &flow("10.1.74.5", "10.200.0.9"));
        assert_eq!(decider(&v), ("POSTROUTING".into(), 1));
        assert!(v.outcome.rewrites());

        // kube-proxy's marked traffic: our chain returns, KUBE-POSTROUTING masquerades.
        let marked = Flow {
            mark: 0x4000,
            ..flow("10.1.74.5", "10.200.0.9")
        };
        let v = verdict(NAT, &marked);
        assert_eq!(decider(&v), ("KUBE-POSTROUTING".into(), 2));

        // To this host: delivered locally, POSTROUTING is not walked.
        let local = Flow {
            dst_is_local: true,
            ..flow("10.1.74.5", "8.8.8.8")
        };
        let v = verdict(NAT, &local);
        assert_eq!(
            (v.decided_by.clone(), v.outcome.clone()),
            (None, Outcome::Kept)
        );

        // Not from the pod network, not to it: nothing rewrites it.
        let v = verdict(NAT, &flow("192.168.65.1", "8.8.8.8"));
        assert_eq!((v.decided_by, v.outcome), (None, Outcome::Kept));
    }

    #[test]
    fn unknown_matches_are_listed_and_interfaces_match_wildcards() {
        let nat = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -p tcp --dport 80 -j MASQUERADE\n-A POSTROUTING -o eth+ -j SNAT --to-source 1.2.3.4\nCOMMIT\n";
        let v = verdict(nat, &flow("10.1.74.5", "8.8.8.8"));
        assert_eq!(v.uncertain.len(), 1);
        assert_eq!(v.outcome, Outcome::Snat("1.2.3.4".into()));
        assert!(mark_matches("0x4000/0x4000", 0x4000) && !mark_matches("0x4000/0x4000", 0));
    }
}
