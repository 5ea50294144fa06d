//! Property: the compiled rule list, evaluated first-match like the kernel, decides exactly what
//! the longest-prefix classifier decides, for random nested CIDR sets and random destinations.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netfilter::{first_match, EgressPolicy};
use proptest::prelude::*;

/// CIDRs packed into 10.0.0.0/8 (and a few around 169.254/16) so that they nest often.
fn cidr() -> impl Strategy<Value = Ipv4Net> {
    let base = prop_oneof![Just(0x0a00_0000u32), Just(0xa9fe_0000u32), any::<u32>()];
    (base, 0u32..0x0001_ffff, 0u8..=32).prop_map(|(base, offset, len)| {
        let addr = Ipv4Addr::from(base.wrapping_add(offset << 8));
        Ipv4Net::new(addr, len)
            .map(|n| n.trunc())
            .unwrap_or_default()
    })
}

/// Destinations near the CIDRs, so most fall inside one or several.
fn destination() -> impl Strategy<Value = Ipv4Addr> {
    let base = prop_oneof![Just(0x0a00_0000u32), Just(0xa9fe_0000u32), any::<u32>()];
    (base, 0u32..0x01ff_ffff).prop_map(|(base, offset)| Ipv4Addr::from(base.wrapping_add(offset)))
}

fn policy() -> impl Strategy<Value = EgressPolicy> {
    let list = || proptest::collection::vec(cidr(), 0..24);
    (list(), list(), any::<bool>()).prop_map(|(mut non_masq, mut masq, link_local)| {
        non_masq.sort();
        non_masq.dedup();
        masq.sort();
        masq.dedup();
        masq.retain(|c| !non_masq.contains(c));
        EgressPolicy {
            non_masquerade: non_masq,
            masquerade: masq,
            masq_link_local: link_local,
            ..EgressPolicy::default()
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn compiled_rules_decide_like_the_longest_prefix(
        policy in policy(),
        destinations in proptest::collection::vec(destination(), 64),
    ) {
        let rules = policy.compile();
        for dst in destinations {
            prop_assert_eq!(first_match(&rules, dst), policy.classify(dst), "{} with {:?}", dst, rules);
        }
        // Also at every rule's own edges, where off-by-one mistakes live.
        for rule in &rules {
            for dst in [rule.dst.network(), rule.dst.broadcast()] {
                prop_assert_eq!(first_match(&rules, dst), policy.classify(dst), "{}", dst);
            }
        }
    }
}
