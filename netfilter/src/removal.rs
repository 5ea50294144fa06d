//! Removing everything of the agent's from a dump (`flanneld cleanup`): its chains and every jump
//! into them, and nothing else. Pure; [`crate::Iptables::remove_ours`] applies it.

use crate::rule::Table;
use crate::ruleset::{FORWARD_CHAIN, MASQ_CHAIN};
use crate::save::Saved;

/// What removing the agent's rules takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// The `iptables-restore --noflush` payload.
    pub payload: String,
    /// What it removes, one line each (`-A ...` rules and `chain nat/FLANNEL-POSTRTG`).
    pub removed: Vec<String>,
}

/// The removal of the agent's chains from `saved`; `None` when none of them is there.
pub fn removal(saved: &Saved) -> Option<Removal> {
    let mut removal = Removal::default();
    for (table, chain) in [(Table::Nat, MASQ_CHAIN), (Table::Filter, FORWARD_CHAIN)] {
        let Some(dump) = saved.table(table).filter(|t| t.has_chain(chain)) else {
            continue;
        };
        let mut section = format!("*{table}\n");
        for jump in dump
            .rules
            .iter()
            .filter(|r| r.target() == Some(chain) && r.chain != chain)
        {
            section += &format!("{}\n", jump.line("-D"));
            removal.removed.push(jump.to_string());
        }
        section += &format!("-F {chain}\n-X {chain}\nCOMMIT\n");
        removal.payload += &section;
        let rules = dump.chain_rules(chain).count();
        removal
            .removed
            .push(format!("chain {table}/{chain} ({rules} rules)"));
    }
    (!removal.removed.is_empty()).then_some(removal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_chains_and_jumps_go() {
        let saved = Saved::parse(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.0.0/16 -j ACCEPT\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j REJECT\nCOMMIT\n",
        )
        .unwrap();
        let removal = removal(&saved).unwrap();
        assert_eq!(
            removal.payload,
            "*nat\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n-F FLANNEL-POSTRTG\n-X FLANNEL-POSTRTG\nCOMMIT\n"
        );
        assert_eq!(removal.removed.len(), 2);
        assert!(super::removal(
            &Saved::parse("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n").unwrap()
        )
        .is_none());
    }
}
