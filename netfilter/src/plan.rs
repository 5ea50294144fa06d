//! The pure decision: compare one `iptables-save` dump with the desired [`RuleSet`] and, when
//! anything is off, produce the `iptables-restore --noflush` payload that repairs it.
//!
//! A chain needs repair when it is missing or its rules differ, when the jump into it is
//! missing, duplicated, different, or has anything but kube-proxy's `KUBE-*` jumps above it,
//! or when a rule to retire is present. The payload then redeclares the chain (atomic flush and
//! refill), deletes exactly the jumps and retired rules just seen, and inserts the jump at 1.

use ipnet::IpNet;

use crate::rule::{source_overlaps, Rule, Table};
use crate::ruleset::{OwnedChain, RuleSet};
use crate::save::{Saved, SavedTable};

/// What to do about one dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Why a repair is needed; empty when everything is in place.
    pub reasons: Vec<String>,
    /// The restore payload, present exactly when `reasons` is not empty.
    pub payload: Option<String>,
    /// Foreign MASQUERADE/SNAT rules in nat POSTROUTING whose source overlaps the cluster
    /// Network, as `-A POSTROUTING ...` lines. Reported, never touched.
    pub foreign: Vec<String>,
}

/// Compares `saved` with `rules`.
pub fn plan(rules: &RuleSet, saved: &Saved) -> Plan {
    let empty = SavedTable::default();
    let mut plan = Plan::default();
    let mut payload = String::new();
    for chain in rules.chains() {
        let table = saved.table(chain.table).unwrap_or(&empty);
        if chain.table == Table::Nat {
            plan.foreign
                .extend(foreign_masquerades(chain, table, rules.network()));
        }
        let (reasons, delete) = check_chain(chain, table);
        if !reasons.is_empty() {
            payload.push_str(&chain.restore_section(&delete));
            plan.reasons.extend(reasons);
        }
    }
    plan.payload = (!payload.is_empty()).then_some(payload);
    plan
}

/// Rules allowed above our jump: kube-proxy's jumps (KUBE-POSTROUTING only acts on marked
/// packets; KUBE-FORWARD and friends are kube-proxy's own firewall).
fn tolerated_above(rule: &Rule) -> bool {
    rule.target().is_some_and(|t| t.starts_with("KUBE-"))
}

/// The reasons the chain needs repair, and the rules of the built-in chain to delete then.
fn check_chain<'a>(chain: &OwnedChain, table: &'a SavedTable) -> (Vec<String>, Vec<&'a Rule>) {
    let mut reasons: Vec<String> = body_problem(chain, table).into_iter().collect();
    let hook: Vec<&Rule> = table.chain_rules(&chain.jump.chain).collect();
    let builtin = format!("{}/{}", chain.table, chain.jump.chain);
    let jumps: Vec<&Rule> = hook
        .iter()
        .copied()
        .filter(|r| r.target() == Some(chain.name))
        .collect();
    reasons.extend(jump_problem(chain, &builtin, &hook, &jumps));
    let retire: Vec<&Rule> = hook
        .iter()
        .copied()
        .filter(|r| chain.retire.contains(r))
        .collect();
    for rule in &retire {
        reasons.push(format!(
            "`{rule}` in {builtin} belongs to the previous network"
        ));
    }
    let delete = if reasons.is_empty() {
        Vec::new()
    } else {
        jumps.into_iter().chain(retire).collect()
    };
    (reasons, delete)
}

/// What is wrong with the owned chain's own rules: missing, a rule that differs, or a count
/// that differs.
fn body_problem(chain: &OwnedChain, table: &SavedTable) -> Option<String> {
    let owned = format!("{}/{}", chain.table, chain.name);
    if !table.has_chain(chain.name) {
        return Some(format!("chain {owned} is missing"));
    }
    let actual: Vec<&Rule> = table.chain_rules(chain.name).collect();
    let first_difference = actual
        .iter()
        .zip(&chain.rules)
        .position(|(have, want)| *have != want);
    if let Some(at) = first_difference {
        return Some(format!(
            "chain {owned} differs: rule {} is `{}`, want `{}`",
            at + 1,
            actual[at],
            chain.rules[at]
        ));
    }
    (actual.len() != chain.rules.len()).then(|| {
        format!(
            "chain {owned} has {} rules, want {}",
            actual.len(),
            chain.rules.len()
        )
    })
}

/// What is wrong with the jump into the owned chain from the built-in chain `hook`: missing,
/// different, not first (rules other than kube-proxy's above it), or more than one.
fn jump_problem(
    chain: &OwnedChain,
    builtin: &str,
    hook: &[&Rule],
    jumps: &[&Rule],
) -> Option<String> {
    match jumps {
        [] => Some(format!(
            "the jump from {builtin} to {} is missing",
            chain.name
        )),
        [jump] if **jump != chain.jump => Some(format!(
            "the jump `{jump}` in {builtin} differs from the desired"
        )),
        [_] => {
            let above = hook
                .iter()
                .take_while(|r| r.target() != Some(chain.name))
                .find(|r| !tolerated_above(r));
            above.map(|rule| {
                format!(
                    "`{rule}` sits above the jump to {} in {builtin}",
                    chain.name
                )
            })
        }
        many => Some(format!(
            "{} jumps to {} in {builtin}, want one",
            many.len(),
            chain.name
        )),
    }
}

fn foreign_masquerades(chain: &OwnedChain, table: &SavedTable, network: IpNet) -> Vec<String> {
    table
        .chain_rules(&chain.jump.chain)
        .filter(|r| matches!(r.target(), Some("MASQUERADE" | "SNAT")))
        .filter(|r| !chain.retire.contains(r) && source_overlaps(r, network))
        .map(Rule::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Config, Previous};

    fn rules(previous: Option<&Previous>) -> RuleSet {
        let config = Config {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet: "10.1.74.0/24".parse().unwrap(),
            ip_masq: true,
            random_fully: false,
            forward_rules: true,
            egress: None,
        };
        RuleSet::build(&config, previous)
    }

    const OUR_NAT: &str = r#"*nat
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -d 10.1.74.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE
COMMIT
"#;

    const OUR_FILTER: &str = r#"*filter
:FORWARD DROP [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"#;

    fn dump(nat: &str, filter: &str) -> Saved {
        Saved::parse(&format!("{nat}{filter}")).unwrap()
    }

    /// `OUR_NAT` with `lines` inserted right after the `:` declarations.
    fn nat_with(lines: &str) -> String {
        OUR_NAT.replacen("-A POSTROUTING", &format!("{lines}-A POSTROUTING"), 1)
    }

    #[test]
    fn empty_dump_gets_the_full_install() {
        let rules = rules(None);
        let plan = plan(&rules, &Saved::default());
        assert_eq!(plan.payload.as_deref(), Some(rules.render().as_str()));
        assert_eq!(
            plan.reasons,
            [
                "chain nat/FLANNEL-POSTRTG is missing",
                "the jump from nat/POSTROUTING to FLANNEL-POSTRTG is missing",
                "chain filter/FLANNEL-FWD is missing",
                "the jump from filter/FORWARD to FLANNEL-FWD is missing",
            ]
        );
    }

    #[test]
    fn everything_in_place_needs_nothing() {
        let kube = "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n";
        let docker_below = "-A POSTROUTING -s 10.1.74.0/24 ! -o cni0 -j MASQUERADE\n";
        let plan_ = plan(&rules(None), &dump(&nat_with(kube), OUR_FILTER));
        assert_eq!(plan_, Plan::default());

        let saved = dump(
            &OUR_NAT.replace("COMMIT", &format!("{docker_below}COMMIT")),
            OUR_FILTER,
        );
        let plan_ = plan(&rules(None), &saved);
        assert_eq!(plan_.payload, None);
        assert_eq!(
            plan_.foreign,
            ["-A POSTROUTING -s 10.1.74.0/24 ! -o cni0 -j MASQUERADE"]
        );
    }

    #[test]
    fn docker_rule_above_our_jump_moves_it_back_to_the_top() {
        let docker = "-A POSTROUTING -s 10.1.74.0/24 ! -o cni0 -j MASQUERADE\n";
        let saved = dump(&nat_with(docker), OUR_FILTER);
        let plan = plan(&rules(None), &saved);
        assert_eq!(
            plan.reasons,
            ["`-A POSTROUTING -s 10.1.74.0/24 ! -o cni0 -j MASQUERADE` sits above the jump to FLANNEL-POSTRTG in nat/POSTROUTING"]
        );
        assert_eq!(
            plan.foreign,
            ["-A POSTROUTING -s 10.1.74.0/24 ! -o cni0 -j MASQUERADE"]
        );
        assert_eq!(
            plan.payload.unwrap(),
            r#"*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -d 10.1.74.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE
-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
COMMIT
"#
        );
    }

    #[test]
    fn go_flanneld_chain_with_appended_jump_and_old_rules_is_taken_over() {
        // Go flanneld HEAD: jump appended after docker's rule, its own chain order.
        let saved = Saved::parse(
            r#"*nat
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A POSTROUTING -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.74.0/24 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j RETURN
COMMIT
"#,
        )
        .unwrap();
        let rules = rules(None);
        let plan = plan(&rules, &saved);
        assert_eq!(
            plan.reasons[..2],
            [
                "chain nat/FLANNEL-POSTRTG differs: rule 2 is `-A FLANNEL-POSTRTG -s 10.1.74.0/24 -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN`, want `-A FLANNEL-POSTRTG -d 10.1.74.0/24 -m comment --comment \"flanneld masq\" -j RETURN`",
                "2 jumps to FLANNEL-POSTRTG in nat/POSTROUTING, want one",
            ]
        );
        assert!(plan.foreign.is_empty(), "{:?}", plan.foreign);
        let payload = plan.payload.unwrap();
        let nat = payload.split("COMMIT\n").next().unwrap();
        assert!(nat.ends_with(
            "-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -D POSTROUTING -j FLANNEL-POSTRTG\n\
             -I POSTROUTING 1 -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n"
        ));
    }

    #[test]
    fn golden_retires_exactly_the_v011_rules_seen() {
        let previous = Previous {
            network: "10.9.0.0/16".parse().unwrap(),
            subnet: "10.9.3.0/24".parse().unwrap(),
        };
        let v011 = "-A POSTROUTING -s 10.9.0.0/16 -d 10.9.0.0/16 -j RETURN\n\
                    -A POSTROUTING -s 10.9.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully\n\
                    -A POSTROUTING -s 10.9.0.0/16 ! -d 224.0.0.0/4 -o eth9 -j MASQUERADE\n";
        let nat = OUR_NAT.replace("COMMIT", &format!("{v011}COMMIT"));
        let filter = OUR_FILTER.replace("COMMIT", "-A FORWARD -d 10.9.0.0/16 -j ACCEPT\nCOMMIT");
        let plan = plan(&rules(Some(&previous)), &dump(&nat, &filter));
        assert_eq!(
            plan.reasons,
            [
                "`-A POSTROUTING -s 10.9.0.0/16 -d 10.9.0.0/16 -j RETURN` in nat/POSTROUTING belongs to the previous network",
                "`-A POSTROUTING -s 10.9.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully` in nat/POSTROUTING belongs to the previous network",
                "`-A FORWARD -d 10.9.0.0/16 -j ACCEPT` in filter/FORWARD belongs to the previous network",
            ]
        );
        // Not an exact match: a foreign rule, reported only if it overlaps the new Network.
        assert!(plan.foreign.is_empty());
        assert_eq!(
            plan.payload.unwrap(),
            r#"*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -d 10.1.74.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j ACCEPT
-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE
-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-D POSTROUTING -s 10.9.0.0/16 -d 10.9.0.0/16 -j RETURN
-D POSTROUTING -s 10.9.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully
-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-D FORWARD -d 10.9.0.0/16 -j ACCEPT
-I FORWARD 1 -m comment --comment "flanneld forward" -j FLANNEL-FWD
COMMIT
"#
        );
    }

    #[test]
    fn only_the_broken_table_is_repaired() {
        let filter = OUR_FILTER.replace(
            "-A FORWARD -m comment",
            "-A FORWARD -j REJECT\n-A FORWARD -m comment",
        );
        let plan = plan(&rules(None), &dump(OUR_NAT, &filter));
        let payload = plan.payload.unwrap();
        assert!(payload.starts_with("*filter\n") && !payload.contains("*nat"));
        assert_eq!(
            plan.reasons,
            ["`-A FORWARD -j REJECT` sits above the jump to FLANNEL-FWD in filter/FORWARD"]
        );
    }

    #[test]
    fn a_flushed_chain_is_refilled() {
        let flushed: String = OUR_NAT
            .lines()
            .filter(|l| !l.starts_with("-A FLANNEL-POSTRTG"))
            .map(|l| format!("{l}\n"))
            .collect();
        let plan = plan(&rules(None), &dump(&flushed, OUR_FILTER));
        assert_eq!(
            plan.reasons,
            ["chain nat/FLANNEL-POSTRTG has 0 rules, want 5"]
        );
        assert!(plan
            .payload
            .unwrap()
            .starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n"));
    }
}
