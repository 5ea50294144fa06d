//! Choosing this host's subnet from the current leases; pure functions, no I/O.
//!
//! The order is Go flanneld's: the lease already holding our PublicIP (if the config still allows
//! it), else the subnet of the previous run (from subnet.env) if free and allowed, else a random
//! free subnet among the first 100 from SubnetMin.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::Rng;

use crate::config::Ipv4Range;
use crate::registry::StoredLease;
use crate::validate::overlaps;

/// At most this many free subnets are considered for a random pick (as in Go flanneld).
pub const MAX_CANDIDATES: usize = 100;

/// No free subnet is left in the configured range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "out of subnets: no free /{subnet_len} between SubnetMin {min} and SubnetMax {max} \
     ({leases} leases exist{}); delete stale leases under <prefix>/subnets/ or widen the range \
     (Network, SubnetLen, SubnetMin, SubnetMax)",
    holders_text(holders)
)]
pub struct OutOfSubnets {
    /// The subnet length.
    pub subnet_len: u8,
    /// SubnetMin.
    pub min: Ipv4Addr,
    /// SubnetMax.
    pub max: Ipv4Addr,
    /// How many leases of the config's shape exist.
    pub leases: usize,
    /// The keys of those leases (the ones filling the range).
    pub holders: Vec<String>,
}

/// `, e.g. 10.5.1.0-24, 10.5.2.0-24 and 252 more` for the error message.
fn holders_text(holders: &[String]) -> String {
    const SHOWN: usize = 5;
    match holders.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(": {}", holders.join(", ")),
        n => format!(
            ", e.g. {} and {} more",
            holders[..SHOWN].join(", "),
            n - SHOWN
        ),
    }
}

/// Why a subnet is to be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// It is the subnet of the previous run (subnet.env) and nobody holds it.
    PreviousSubnet,
    /// It was picked at random among the free subnets.
    Allocated,
}

/// What to do to get a lease.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// Renew this lease: it holds our PublicIP and the config allows its subnet.
    Reuse(Box<StoredLease>),
    /// Create a lease for this subnet.
    Create {
        /// The subnet.
        subnet: Ipv4Net,
        /// Why this one.
        reason: Reason,
    },
}

/// The decision, with what to clean up first and why alternatives were rejected.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Leases holding our PublicIP whose subnet the config no longer allows; delete them.
    pub stale: Vec<StoredLease>,
    /// The subnet to use.
    pub choice: Choice,
    /// Human-readable reasons alternatives were rejected, for the log.
    pub rejected: Vec<String>,
}

/// Decides which subnet this host (advertising `public_ip`) should lease.
pub fn choose_subnet(
    range: &Ipv4Range,
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    leases: &[StoredLease],
    rng: &mut impl Rng,
) -> Result<Plan, OutOfSubnets> {
    let mut rejected = Vec::new();
    let (ours, others): (Vec<&StoredLease>, Vec<&StoredLease>) = leases
        .iter()
        .partition(|l| l.lease.attrs.public_ip == public_ip);
    let (usable, stale): (Vec<&StoredLease>, Vec<&StoredLease>) =
        ours.into_iter().partition(|l| allowed(range, l));
    for lease in &stale {
        rejected.push(format!(
            "lease {} holds our PublicIP {public_ip} but is outside the configured range {}; \
             deleting it",
            lease.lease.key,
            describe(range)
        ));
    }
    let stale: Vec<StoredLease> = stale.into_iter().cloned().collect();
    if let Some((first, more)) = usable.split_first() {
        for extra in more {
            rejected.push(format!(
                "lease {} also holds our PublicIP {public_ip}; leaving it to expire",
                extra.lease.key
            ));
        }
        return Ok(Plan {
            stale,
            choice: Choice::Reuse(Box::new((*first).clone())),
            rejected,
        });
    }
    // Only leases this config could have handed out occupy the range: one of another length or
    // outside the Network (a hostile or stale key) must not exhaust the pool.
    let (others, misshapen): (Vec<&StoredLease>, Vec<&StoredLease>) =
        others.into_iter().partition(|l| in_shape(range, l));
    for lease in &misshapen {
        rejected.push(format!(
            "lease {} is not a /{} inside the Network {}; it does not occupy the range",
            lease.lease.key, range.subnet_len, range.network
        ));
    }
    let taken: Vec<Ipv4Net> = others.iter().map(|l| l.lease.subnet()).collect();
    if let Some(previous) = previous {
        if !range.allows(previous) {
            rejected.push(format!(
                "previous subnet {previous} (subnet.env) is outside the configured range {}",
                describe(range)
            ));
        } else if let Some(holder) = others.iter().find(|l| overlaps(l.lease.subnet(), previous)) {
            rejected.push(format!(
                "previous subnet {previous} (subnet.env) is held by {} ({})",
                holder.lease.attrs.public_ip, holder.lease.key
            ));
        } else {
            return Ok(Plan {
                stale,
                choice: Choice::Create {
                    subnet: previous,
                    reason: Reason::PreviousSubnet,
                },
                rejected,
            });
        }
    }
    let subnet = allocate(range, &taken, rng).map_err(|mut e| {
        e.holders = others.iter().map(|l| l.lease.key.to_string()).collect();
        e
    })?;
    Ok(Plan {
        stale,
        choice: Choice::Create {
            subnet,
            reason: Reason::Allocated,
        },
        rejected,
    })
}

/// Picks uniformly at random one of the first [`MAX_CANDIDATES`] subnets from SubnetMin that
/// overlap no subnet in `taken`.
pub fn allocate(
    range: &Ipv4Range,
    taken: &[Ipv4Net],
    rng: &mut impl Rng,
) -> Result<Ipv4Net, OutOfSubnets> {
    let candidates = free_subnets(range, taken);
    if candidates.is_empty() {
        return Err(OutOfSubnets {
            subnet_len: range.subnet_len,
            min: range.subnet_min,
            max: range.subnet_max,
            leases: taken.len(),
            holders: Vec::new(),
        });
    }
    Ok(candidates[rng.random_range(0..candidates.len())])
}

/// The first [`MAX_CANDIDATES`] subnets in [SubnetMin, SubnetMax] overlapping nothing in `taken`.
pub fn free_subnets(range: &Ipv4Range, taken: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let step = 1u64 << (32 - u32::from(range.subnet_len.min(32)));
    let max = u64::from(u32::from(range.subnet_max));
    let mut addr = u64::from(u32::from(range.subnet_min));
    let mut free = Vec::new();
    while addr <= max && free.len() < MAX_CANDIDATES {
        let Ok(ip) = u32::try_from(addr) else { break };
        if let Ok(subnet) = Ipv4Net::new(Ipv4Addr::from(ip), range.subnet_len) {
            if !taken.iter().any(|t| overlaps(*t, subnet)) {
                free.push(subnet);
            }
        }
        addr += step;
    }
    free
}

/// Whether the config allows this lease's subnet (IPv4 only: this agent leases no IPv6 subnets).
fn allowed(range: &Ipv4Range, lease: &StoredLease) -> bool {
    lease.lease.key.ipv6.is_none() && range.allows(lease.lease.subnet())
}

/// Whether the lease's subnet is one of this config's: SubnetLen, aligned, inside the Network.
fn in_shape(range: &Ipv4Range, lease: &StoredLease) -> bool {
    let subnet = lease.lease.subnet();
    subnet.prefix_len() == range.subnet_len
        && subnet.trunc() == subnet
        && range.network.contains(&subnet)
}

fn describe(range: &Ipv4Range) -> String {
    format!(
        "/{} in {}..{}",
        range.subnet_len, range.subnet_min, range.subnet_max
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;
    use crate::lease::{Lease, LeaseAttrs, SubnetKey};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn range(json: &str) -> Ipv4Range {
        *NetworkConfig::parse(json.as_bytes()).unwrap().v4().unwrap()
    }

    fn stored(subnet: &str, ip: [u8; 4]) -> StoredLease {
        StoredLease {
            lease: Lease {
                key: SubnetKey::v4(subnet.parse().unwrap()),
                attrs: LeaseAttrs::new(Ipv4Addr::from(ip), "host-gw"),
                expiration: None,
            },
            mod_revision: 7,
            reservation: false,
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    const OURS: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

    #[test]
    fn free_subnets_start_at_subnet_min_skip_taken_and_stop_at_100() {
        let r = range(r#"{"Network":"10.3.0.0/16"}"#);
        let free = free_subnets(&r, &[net("10.3.1.0/24"), net("10.3.2.128/25")]);
        assert_eq!(free.len(), MAX_CANDIDATES);
        assert_eq!(free[0], net("10.3.3.0/24"));
        assert_eq!(free[99], net("10.3.102.0/24"));
        let r = range(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.250.0"}"#);
        let free = free_subnets(&r, &[net("10.3.0.0/16")]);
        assert!(free.is_empty());
        let r = range(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.250.0"}"#);
        assert_eq!(free_subnets(&r, &[]).len(), 6);
    }

    #[test]
    fn the_top_of_the_address_space_does_not_overflow() {
        let r = range(r#"{"Network":"255.255.255.0/24","SubnetLen":28}"#);
        let free = free_subnets(&r, &[]);
        assert_eq!(free.last(), Some(&net("255.255.255.240/28")));
        assert_eq!(free.len(), 15);
    }

    #[test]
    fn allocation_is_uniform_over_the_free_candidates() {
        let r =
            range(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.10.0","SubnetMax":"10.3.13.0"}"#);
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..400 {
            let s = allocate(&r, &[net("10.3.11.0/24")], &mut rng).unwrap();
            *seen.entry(s).or_insert(0) += 1;
        }
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            vec![
                net("10.3.10.0/24"),
                net("10.3.12.0/24"),
                net("10.3.13.0/24")
            ]
        );
        assert!(seen.values().all(|n| *n > 80), "{seen:?}");
    }

    #[test]
    fn out_of_subnets_names_the_range_and_lease_count() {
        let r =
            range(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.10.0","SubnetMax":"10.3.11.0"}"#);
        let taken = [
            net("10.3.10.0/24"),
            net("10.3.11.0/24"),
            net("10.3.12.0/24"),
        ];
        let err = allocate(&r, &taken, &mut rand::rng()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("out of subnets"), "{text}");
        assert!(
            text.contains("10.3.10.0") && text.contains("10.3.11.0"),
            "{text}"
        );
        assert!(text.contains("3 leases"), "{text}");
    }

    #[test]
    fn misshapen_leases_do_not_occupy_the_range_and_a_full_range_names_its_holders() {
        let r =
            range(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.10.0","SubnetMax":"10.3.11.0"}"#);
        let hostile = [
            stored("10.3.0.0/16", [1, 1, 1, 2]),
            stored("10.3.10.0/25", [1, 1, 1, 3]),
            stored("0.0.0.0/0", [1, 1, 1, 4]),
            stored("192.168.1.0/24", [1, 1, 1, 5]),
        ];
        let p = choose_subnet(&r, OURS, None, &hostile, &mut rand::rng()).unwrap();
        assert!(matches!(p.choice, Choice::Create { .. }), "{p:?}");
        assert_eq!(p.rejected.len(), 4, "{:?}", p.rejected);
        assert!(p.rejected[0].contains("10.3.0.0-16"), "{:?}", p.rejected);

        let mut full = hostile.to_vec();
        full.push(stored("10.3.10.0/24", [1, 1, 1, 6]));
        full.push(stored("10.3.11.0/24", [1, 1, 1, 7]));
        let text = choose_subnet(&r, OURS, None, &full, &mut rand::rng())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("(2 leases exist: 10.3.10.0-24, 10.3.11.0-24)"),
            "{text}"
        );
    }

    #[test]
    fn a_lease_with_our_public_ip_is_reused_before_anything_else() {
        let r = range(r#"{"Network":"10.3.0.0/16"}"#);
        let leases = [
            stored("10.3.7.0/24", [1, 1, 1, 1]),
            stored("10.3.9.0/24", OURS.octets()),
        ];
        let plan = choose_subnet(
            &r,
            OURS,
            Some(net("10.3.5.0/24")),
            &leases,
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(plan.choice, Choice::Reuse(Box::new(leases[1].clone())));
        assert!(plan.stale.is_empty());
    }

    #[test]
    fn our_lease_outside_the_range_is_stale_and_the_previous_subnet_is_used() {
        let r = range(r#"{"Network":"10.3.0.0/16"}"#);
        let leases = [
            stored("10.4.1.0/24", OURS.octets()),
            stored("10.3.7.0/24", [1, 1, 1, 1]),
        ];
        let plan = choose_subnet(
            &r,
            OURS,
            Some(net("10.3.5.0/24")),
            &leases,
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(plan.stale, vec![leases[0].clone()]);
        assert_eq!(
            plan.choice,
            Choice::Create {
                subnet: net("10.3.5.0/24"),
                reason: Reason::PreviousSubnet
            }
        );
        assert!(
            plan.rejected[0].contains("10.4.1.0-24"),
            "{:?}",
            plan.rejected
        );
    }

    #[test]
    fn a_taken_or_disallowed_previous_subnet_falls_back_to_allocation() {
        let r = range(r#"{"Network":"10.3.0.0/16","SubnetMax":"10.3.3.0"}"#);
        let leases = [stored("10.3.1.0/24", [1, 1, 1, 1])];
        let taken = choose_subnet(
            &r,
            OURS,
            Some(net("10.3.1.0/24")),
            &leases,
            &mut rand::rng(),
        )
        .unwrap();
        assert!(
            taken.rejected[0].contains("held by 1.1.1.1"),
            "{:?}",
            taken.rejected
        );
        let Choice::Create { subnet, reason } = taken.choice else {
            panic!("expected a new lease, got {:?}", taken.choice)
        };
        assert_eq!(reason, Reason::Allocated);
        assert!(subnet == net("10.3.2.0/24") || subnet == net("10.3.3.0/24"));

        let outside =
            choose_subnet(&r, OURS, Some(net("10.4.1.0/24")), &[], &mut rand::rng()).unwrap();
        assert!(
            outside.rejected[0].contains("outside"),
            "{:?}",
            outside.rejected
        );
        assert!(matches!(
            outside.choice,
            Choice::Create {
                reason: Reason::Allocated,
                ..
            }
        ));
    }
}
