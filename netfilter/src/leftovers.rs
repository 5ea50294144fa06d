//! Go flanneld's rules left in the built-in chains after a host switched to this agent.
//!
//! Go flanneld v0.11 to v0.19 appended its masquerade rules directly to nat `POSTROUTING` and its
//! accept rules to filter `FORWARD` (v0.17 on with a `flanneld masq` / `flanneld forward`
//! comment); v0.19.2 and later keep them in `FLANNEL-POSTRTG` / `FLANNEL-FWD`, the chains this
//! agent takes over whole, so only the earlier shapes stay behind. They are harmless while our
//! jump comes first, but stale once the Network changes and confusing in `iptables-save`. They
//! are never removed silently: `flanneld doctor` names them (`go-flanneld-rules`) and `flanneld
//! cleanup --go-leftovers` removes exactly these, for the current Network and subnet.

use ipnet::IpNet;

use crate::go_rules::{go_forward_rules, go_masq_rules};
use crate::removal::Removal;
use crate::rule::{Rule, Table};
use crate::ruleset::{multicast, FORWARD_COMMENT, MASQ_COMMENT};
use crate::save::Saved;

/// Every rule any Go flanneld version wrote directly into a built-in chain for `network` and
/// `subnet`, with its table.
fn go_rules(network: IpNet, subnet: IpNet) -> Vec<(Table, Rule)> {
    let mut rules = Vec::new();
    for (masq, forward) in [(None, None), (Some(MASQ_COMMENT), Some(FORWARD_COMMENT))] {
        let nat = go_masq_rules(network, subnet, masq, multicast(network));
        rules.extend(nat.into_iter().map(|r| (Table::Nat, r)));
        let filter = go_forward_rules(network, forward);
        rules.extend(filter.into_iter().map(|r| (Table::Filter, r)));
    }
    rules
}

/// The Go flanneld rules for `network` and `subnet` present in `saved`, in dump order.
pub fn go_leftovers(saved: &Saved, network: IpNet, subnet: IpNet) -> Vec<(Table, Rule)> {
    let go = go_rules(network, subnet);
    [Table::Nat, Table::Filter]
        .into_iter()
        .filter_map(|table| saved.table(table).map(|dump| (table, dump)))
        .flat_map(|(table, dump)| {
            let go = &go;
            dump.rules
                .iter()
                .filter(move |rule| go.iter().any(|(t, r)| *t == table && r == *rule))
                .map(move |rule| (table, rule.clone()))
        })
        .collect()
}

/// The `iptables-restore --noflush` removal of [`go_leftovers`]; `None` when there are none.
pub fn go_leftover_removal(saved: &Saved, network: IpNet, subnet: IpNet) -> Option<Removal> {
    let leftovers = go_leftovers(saved, network, subnet);
    let mut removal = Removal::default();
    for table in [Table::Nat, Table::Filter] {
        let lines: Vec<String> = (leftovers.iter())
            .filter(|(t, _)| *t == table)
            .map(|(_, rule)| rule.line("-D"))
            .collect();
        if lines.is_empty() {
            continue;
        }
        removal.payload += &format!("*{table}\n{}\nCOMMIT\n", lines.join("\n"));
        removal
            .removed
            .extend(lines.iter().map(|line| format!("-t {table} {line}")));
    }
    (!removal.removed.is_empty()).then_some(removal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host after Go flanneld v0.11 (with --random-fully) and a v0.17 rule, with ours first
    /// and docker's and another masquerade rule that are not Go's.
    const DUMP: &str = r#"*nat
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j RETURN
-A POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully
-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.34.0/24 -j RETURN
-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE --random-fully
-A POSTROUTING ! -s 10.6.0.0/16 -d 10.6.0.0/16 -j MASQUERADE
-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j ACCEPT
COMMIT
*filter
:FORWARD ACCEPT [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FORWARD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FORWARD -d 10.5.0.0/16 -j ACCEPT
COMMIT
"#;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn exactly_gos_rules_for_the_current_network_are_found_and_removed() {
        let saved = Saved::parse(DUMP).unwrap();
        let removal = go_leftover_removal(&saved, net("10.5.0.0/16"), net("10.5.34.0/24"))
            .expect("leftovers");
        assert_eq!(
            removal.payload,
            "*nat\n\
             -D POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j RETURN\n\
             -D POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully\n\
             -D POSTROUTING ! -s 10.5.0.0/16 -d 10.5.34.0/24 -j RETURN\n\
             -D POSTROUTING ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE --random-fully\n\
             COMMIT\n\
             *filter\n\
             -D FORWARD -s 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -D FORWARD -d 10.5.0.0/16 -j ACCEPT\n\
             COMMIT\n"
        );
        assert_eq!(removal.removed.len(), 6);
        assert!(removal.removed[0].starts_with("-t nat -D POSTROUTING"));
    }

    #[test]
    fn another_network_or_subnet_leaves_nothing_to_remove() {
        let saved = Saved::parse(DUMP).unwrap();
        assert!(go_leftover_removal(&saved, net("10.7.0.0/16"), net("10.7.1.0/24")).is_none());
        // Another subnet: the network-wide rules are still Go's, the subnet one is not.
        let other = go_leftovers(&saved, net("10.5.0.0/16"), net("10.5.35.0/24"));
        assert_eq!(other.len(), 5);
    }

    #[test]
    fn ipv6_rules_use_the_ipv6_multicast_range() {
        let rules = go_masq_rules(
            net("fd00:10::/56"),
            net("fd00:10:0:3::/64"),
            None,
            multicast(net("fd00:10::/56")),
        );
        assert!(rules
            .iter()
            .any(|r| r.line("-A") == "-A POSTROUTING -s fd00:10::/56 ! -d ff00::/8 -j MASQUERADE"));
    }
}
