//! The egress policy for pod traffic leaving the cluster Network: which destinations keep the
//! pod's source address and which are masqueraded, in ip-masq-agent's terms plus masquerade
//! exceptions, decided by the longest matching prefix.
//!
//! [`EgressPolicy::compile`] turns the two CIDR lists into an ordered rule list, most specific
//! first, without rules that cannot change a decision; the first rule matching a destination
//! then decides exactly what the longest-prefix classifier [`EgressPolicy::classify`] decides
//! (proved by the property test in `tests/egress_lpm.rs`). Destinations no rule matches are
//! masqueraded.

use std::fmt;
use std::time::Duration;

use ipnet::Ipv4Net;

/// 169.254.0.0/16: exempt unless `masqLinkLocal` is true.
pub const LINK_LOCAL: Ipv4Net = match Ipv4Net::new(std::net::Ipv4Addr::new(169, 254, 0, 0), 16) {
    Ok(net) => net,
    Err(_) => panic!("169.254.0.0/16 is a valid network"),
};

/// What happens to pod traffic towards a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Keeps the pod's source address (no NAT).
    Exempt,
    /// Masqueraded to the host's address.
    Masquerade,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Exempt => "not masqueraded",
            Action::Masquerade => "masqueraded",
        })
    }
}

/// Where a compiled rule comes from (shown in its iptables comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// An entry of `nonMasqueradeCIDRs`.
    NonMasquerade,
    /// An entry of `masqueradeCIDRs`.
    Masquerade,
    /// 169.254.0.0/16 because `masqLinkLocal` is false.
    LinkLocal,
}

impl Origin {
    /// The iptables comment of a rule from this origin.
    pub fn comment(self) -> &'static str {
        match self {
            Origin::NonMasquerade => "flanneld egress: nonMasqueradeCIDRs",
            Origin::Masquerade => "flanneld egress: masqueradeCIDRs",
            Origin::LinkLocal => "flanneld egress: link-local, masqLinkLocal is false",
        }
    }
}

/// One compiled rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// The destinations it matches.
    pub dst: Ipv4Net,
    /// What it decides.
    pub action: Action,
    /// Why it exists.
    pub origin: Origin,
}

/// A validated egress policy (ip-masq-agent's config keys plus `masqueradeCIDRs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Destinations never masqueraded (`nonMasqueradeCIDRs`).
    pub non_masquerade: Vec<Ipv4Net>,
    /// Exceptions inside those that are masqueraded after all (`masqueradeCIDRs`).
    pub masquerade: Vec<Ipv4Net>,
    /// `masqLinkLocal`: masquerade 169.254.0.0/16 too.
    pub masq_link_local: bool,
    /// `masqLinkLocalIPv6`: accepted for compatibility; IPv6 is not programmed yet.
    pub masq_link_local_ipv6: bool,
    /// `resyncInterval`: how often the file is re-read when no change notification arrives.
    pub resync_interval: Duration,
    /// `cidrLimit`: the most entries either list may hold.
    pub cidr_limit: usize,
}

impl Default for EgressPolicy {
    /// ip-masq-agent's defaults: the RFC 1918 ranges exempt, link-local exempt, 60 s resync.
    fn default() -> Self {
        let net = |a, b, len| Ipv4Net::new(std::net::Ipv4Addr::new(a, b, 0, 0), len).ok();
        EgressPolicy {
            non_masquerade: [net(10, 0, 8), net(172, 16, 12), net(192, 168, 16)]
                .into_iter()
                .flatten()
                .collect(),
            masquerade: Vec::new(),
            masq_link_local: false,
            masq_link_local_ipv6: false,
            resync_interval: Duration::from_secs(60),
            cidr_limit: 64,
        }
    }
}

impl EgressPolicy {
    /// Every entry with its action, link-local included; an explicit `masqueradeCIDRs` entry
    /// for 169.254.0.0/16 wins over the implicit exemption.
    fn entries(&self) -> Vec<EgressRule> {
        let rule = |dst: &Ipv4Net, action, origin| EgressRule {
            dst: *dst,
            action,
            origin,
        };
        let mut entries: Vec<EgressRule> = (self.non_masquerade.iter())
            .map(|d| rule(d, Action::Exempt, Origin::NonMasquerade))
            .chain(
                (self.masquerade.iter()).map(|d| rule(d, Action::Masquerade, Origin::Masquerade)),
            )
            .collect();
        let listed = |net: Ipv4Net| entries.iter().any(|e| e.dst == net);
        if !self.masq_link_local && !listed(LINK_LOCAL) {
            entries.push(rule(&LINK_LOCAL, Action::Exempt, Origin::LinkLocal));
        }
        entries
    }

    /// The reference classifier: the action of the longest entry containing `dst`, else
    /// masquerade.
    pub fn classify(&self, dst: std::net::Ipv4Addr) -> Action {
        self.entries()
            .iter()
            .filter(|e| e.dst.contains(&dst))
            .max_by_key(|e| e.dst.prefix_len())
            .map_or(Action::Masquerade, |e| e.action)
    }

    /// The ordered rule list: most specific first, then by address; an entry is left out when
    /// its nearest enclosing entry (or, with none, the default) decides the same.
    pub fn compile(&self) -> Vec<EgressRule> {
        let mut entries = self.entries();
        entries.sort_by_key(|e| (std::cmp::Reverse(e.dst.prefix_len()), e.dst.network()));
        entries.dedup_by_key(|e| e.dst);
        let nearest_enclosing = |at: usize| {
            let inner = entries[at].dst;
            entries[at + 1..]
                .iter()
                .find(|outer| {
                    outer.dst.prefix_len() < inner.prefix_len() && outer.dst.contains(&inner)
                })
                .map_or(Action::Masquerade, |outer| outer.action)
        };
        (0..entries.len())
            .filter(|&at| nearest_enclosing(at) != entries[at].action)
            .map(|at| entries[at])
            .collect()
    }
}

/// The action of the first rule of `rules` that matches `dst`, else masquerade: what the
/// kernel does with the compiled list.
pub fn first_match(rules: &[EgressRule], dst: std::net::Ipv4Addr) -> Action {
    rules
        .iter()
        .find(|r| r.dst.contains(&dst))
        .map_or(Action::Masquerade, |r| r.action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Ipv4Net> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn policy(non_masq: &[&str], masq: &[&str]) -> EgressPolicy {
        EgressPolicy {
            non_masquerade: nets(non_masq),
            masquerade: nets(masq),
            ..EgressPolicy::default()
        }
    }

    fn golden(rules: &[EgressRule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| format!("{} {:?} {:?}", r.dst, r.action, r.origin))
            .collect()
    }

    #[test]
    fn nested_ranges_compile_most_specific_first() {
        let p = policy(
            &["10.0.0.0/8", "10.100.10.128/25", "192.168.0.0/16"],
            &["10.100.10.0/24"],
        );
        assert_eq!(
            golden(&p.compile()),
            [
                "10.100.10.128/25 Exempt NonMasquerade",
                "10.100.10.0/24 Masquerade Masquerade",
                "169.254.0.0/16 Exempt LinkLocal",
                "192.168.0.0/16 Exempt NonMasquerade",
                "10.0.0.0/8 Exempt NonMasquerade",
            ]
        );
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(p.classify(ip("10.100.10.5")), Action::Masquerade);
        assert_eq!(p.classify(ip("10.100.10.200")), Action::Exempt);
        assert_eq!(p.classify(ip("10.9.9.9")), Action::Exempt);
        assert_eq!(p.classify(ip("8.8.8.8")), Action::Masquerade);
        assert_eq!(p.classify(ip("169.254.169.254")), Action::Exempt);
    }

    #[test]
    fn redundant_rules_are_left_out() {
        let p = policy(&["10.0.0.0/8", "10.1.0.0/16"], &["8.8.8.0/24"]);
        assert_eq!(
            golden(&p.compile()),
            [
                "169.254.0.0/16 Exempt LinkLocal",
                "10.0.0.0/8 Exempt NonMasquerade",
            ]
        );
        let linked = EgressPolicy {
            masq_link_local: true,
            ..policy(&[], &[])
        };
        assert!(linked.compile().is_empty(), "everything is masqueraded");
    }
}
