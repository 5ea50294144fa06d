//! Choosing this host's subnet from the current leases; pure functions, no I/O.
//!
//! The order is Go flanneld's: the lease already holding our PublicIP (if the config still allows
//! it), else the subnet of the previous run (from subnet.env) if free and allowed, else a random
//! free subnet among the first 100 from SubnetMin. A dual-stack config gets both halves at once:
//! an IPv4 and an IPv6 subnet in one key (`10.5.34.0-24&fd00:5:34::-64`), reused together.

use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;

use crate::config::{family_of_bits as keys, NetworkConfig, SubnetRange};
use crate::family::Subnet;
use crate::lease::{LeaseAttrs, SubnetKey, NO_IPV4};
use crate::registry::StoredLease;

/// At most this many free subnets are considered for a random pick (as in Go flanneld).
pub const MAX_CANDIDATES: usize = 100;

/// No free subnet is left in the configured range of one family.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "out of {family} subnets: no free /{subnet_len} between {} {min} and {} {max} \
     ({leases} leases exist{}); delete stale leases under <prefix>/subnets/ or widen the range \
     ({}, {}, {}, {})",
    keys(*bits).min_key, keys(*bits).max_key, holders_text(holders),
    keys(*bits).network_key, keys(*bits).len_key, keys(*bits).min_key, keys(*bits).max_key
)]
pub struct OutOfSubnets {
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
    /// The family's address width (32 or 128), naming its config keys.
    bits: u8,
    /// The subnet length.
    pub subnet_len: u8,
    /// The first subnet of the range.
    pub min: String,
    /// The last subnet of the range.
    pub max: String,
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
    /// Renew this lease: it holds our PublicIP and the config allows its subnet(s).
    Reuse(Box<StoredLease>),
    /// Create a lease for these subnets.
    Create {
        /// The subnet(s): IPv4, IPv6 or both.
        key: SubnetKey,
        /// Why these.
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

/// Decides which subnet(s) this host, publishing `ours`, should lease. `previous` is the key
/// rebuilt from subnet.env (its IPv6 half from `FLANNEL_IPV6_SUBNET`).
pub fn choose_subnet(
    config: &NetworkConfig,
    ours: &LeaseAttrs,
    previous: Option<SubnetKey>,
    leases: &[StoredLease],
    rng: &mut impl Rng,
) -> Result<Plan, OutOfSubnets> {
    let mut rejected = Vec::new();
    let (mine, others): (Vec<&StoredLease>, Vec<&StoredLease>) = leases
        .iter()
        .partition(|l| same_host(config, ours, &l.lease.attrs));
    let (usable, stale): (Vec<&StoredLease>, Vec<&StoredLease>) = mine
        .into_iter()
        .partition(|l| allows_key(config, l.lease.key));
    let who = host_name(config, ours);
    for lease in &stale {
        rejected.push(format!(
            "lease {} holds our {who} but the config does not allow it ({}); deleting it",
            lease.lease.key,
            describe(config)
        ));
    }
    let stale: Vec<StoredLease> = stale.into_iter().cloned().collect();
    if let Some((first, more)) = usable.split_first() {
        for extra in more {
            rejected.push(format!(
                "lease {} also holds our {who}; leaving it to expire",
                extra.lease.key
            ));
        }
        let choice = Choice::Reuse(Box::new((*first).clone()));
        return Ok(Plan {
            stale,
            choice,
            rejected,
        });
    }
    let occupied = Occupied::of(config, &others, &mut rejected);
    if let Some(key) = previous.filter(|p| previous_is_free(config, *p, &occupied, &mut rejected)) {
        let choice = Choice::Create {
            key,
            reason: Reason::PreviousSubnet,
        };
        return Ok(Plan {
            stale,
            choice,
            rejected,
        });
    }
    let key = occupied.allocate(config, rng)?;
    let choice = Choice::Create {
        key,
        reason: Reason::Allocated,
    };
    Ok(Plan {
        stale,
        choice,
        rejected,
    })
}

/// Whether a lease with `theirs` was published by this host: the same PublicIP, or the same
/// PublicIPv6 on an IPv6-only network.
fn same_host(config: &NetworkConfig, ours: &LeaseAttrs, theirs: &LeaseAttrs) -> bool {
    if config.ipv4.is_some() {
        theirs.public_ip == ours.public_ip
    } else {
        ours.public_ipv6.is_some() && theirs.public_ipv6 == ours.public_ipv6
    }
}

/// `PublicIP 10.0.0.5` or `PublicIPv6 fd00::5`, for messages.
fn host_name(config: &NetworkConfig, ours: &LeaseAttrs) -> String {
    match (config.ipv4.is_some(), ours.public_ipv6) {
        (false, Some(v6)) => format!("PublicIPv6 {v6}"),
        _ => format!("PublicIP {}", ours.public_ip),
    }
}

/// Whether the config could have handed out `key`: each enabled family's half in its range, and
/// no half of a disabled family (Go's `isSubnetConfigCompat` and `isIPv6SubnetConfigCompat`).
pub fn allows_key(config: &NetworkConfig, key: SubnetKey) -> bool {
    let v4 = match &config.ipv4 {
        Some(range) => range.allows(key.ipv4),
        None => key.ipv4 == NO_IPV4,
    };
    let v6 = match (&config.ipv6, key.ipv6) {
        (Some(range), Some(subnet)) => range.allows(subnet),
        (None, None) => true,
        _ => false,
    };
    v4 && v6
}

/// The subnets other hosts hold, per family; only subnets of the config's shape count, so a
/// hostile or stale key of another length or outside the Network cannot exhaust the pool.
struct Occupied<'a> {
    ipv4: Vec<Ipv4Net>,
    ipv6: Vec<Ipv6Net>,
    holders: Vec<&'a StoredLease>,
}

impl<'a> Occupied<'a> {
    fn of(config: &NetworkConfig, others: &[&'a StoredLease], notes: &mut Vec<String>) -> Self {
        let mut occupied = Occupied {
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            holders: Vec::new(),
        };
        for lease in others {
            let key = lease.lease.key;
            let v4 = config.ipv4.as_ref().map(|r| (r.in_shape(key.ipv4), r));
            let v6 = config
                .ipv6
                .as_ref()
                .zip(key.ipv6)
                .map(|(r, s)| (r.in_shape(s), r));
            if let Some((false, range)) = v4 {
                notes.push(misshapen(key, range.shape()));
            }
            if let Some((false, range)) = v6 {
                notes.push(misshapen(key, range.shape()));
            }
            if let Some((true, _)) = v4 {
                occupied.ipv4.push(key.ipv4);
            }
            if let (Some((true, _)), Some(subnet)) = (v6, key.ipv6) {
                occupied.ipv6.push(subnet);
            }
            if v4.is_none_or(|(fits, _)| fits) {
                occupied.holders.push(lease);
            }
        }
        occupied
    }

    /// A random free subnet of each enabled family.
    fn allocate(
        &self,
        config: &NetworkConfig,
        rng: &mut impl Rng,
    ) -> Result<SubnetKey, OutOfSubnets> {
        let named = |mut e: OutOfSubnets| {
            e.holders = self
                .holders
                .iter()
                .map(|l| l.lease.key.to_string())
                .collect();
            e
        };
        let ipv4 = match &config.ipv4 {
            Some(range) => allocate(range, &self.ipv4, rng).map_err(named)?,
            None => NO_IPV4,
        };
        let ipv6 = match &config.ipv6 {
            Some(range) => Some(allocate(range, &self.ipv6, rng).map_err(named)?),
            None => None,
        };
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

fn misshapen(key: SubnetKey, shape: String) -> String {
    format!("lease {key} is not {shape}; it does not occupy the range")
}

/// Whether the previous run's subnet(s) may be claimed again: allowed by the config and
/// overlapping no other host's subnet; otherwise the reason is noted.
fn previous_is_free(
    config: &NetworkConfig,
    previous: SubnetKey,
    occupied: &Occupied,
    notes: &mut Vec<String>,
) -> bool {
    if !allows_key(config, previous) {
        notes.push(format!(
            "previous subnet {previous} (subnet.env) is outside the configured range ({})",
            describe(config)
        ));
        return false;
    }
    let clash = (occupied.holders.iter()).find(|l| clashes(l.lease.key, previous));
    if let Some(holder) = clash {
        notes.push(format!(
            "previous subnet {previous} (subnet.env) is held by {} ({})",
            holder.lease.attrs.public_ip, holder.lease.key
        ));
        return false;
    }
    true
}

/// Whether two lease keys share addresses (an IPv6-only lease's `0.0.0.0/0` IPv4 half is no
/// subnet, so no clash).
fn clashes(a: SubnetKey, b: SubnetKey) -> bool {
    let v4 = a.has_ipv4() && b.has_ipv4() && a.ipv4.overlaps(&b.ipv4);
    let v6 = a.ipv6.zip(b.ipv6).is_some_and(|(a, b)| a.overlaps(&b));
    v4 || v6
}

/// After we created the dual-stack lease `ours`: our stored lease and a lease written before it
/// that shares one of its halves, if `leases` (listed after the create) holds one. Hosts that
/// chose at the same time may each create their own key: etcd's create-if-absent compares whole
/// keys, and a dual-stack key (`10.5.1.0-24&fd00:5:0:1::-64`) differs from another with the
/// same IPv4 half and another IPv6 half. The later writer gives way, so every host that sees
/// both decides the same.
pub fn earlier_clash(
    ours: SubnetKey,
    leases: &[StoredLease],
) -> Option<(&StoredLease, &StoredLease)> {
    let stored = leases.iter().find(|l| l.lease.key == ours)?;
    let earlier = leases.iter().find(|l| {
        l.lease.key != ours && l.mod_revision < stored.mod_revision && clashes(l.lease.key, ours)
    })?;
    Some((stored, earlier))
}

/// Picks uniformly at random one of the first [`MAX_CANDIDATES`] subnets from SubnetMin that
/// overlap no subnet in `taken`.
pub fn allocate<N: Subnet>(
    range: &SubnetRange<N, N::Addr>,
    taken: &[N],
    rng: &mut impl Rng,
) -> Result<N, OutOfSubnets> {
    let candidates = free_subnets(range, taken);
    if candidates.is_empty() {
        return Err(OutOfSubnets {
            family: N::FAMILY,
            bits: N::BITS,
            subnet_len: range.subnet_len,
            min: range.subnet_min.to_string(),
            max: range.subnet_max.to_string(),
            leases: taken.len(),
            holders: Vec::new(),
        });
    }
    Ok(candidates[rng.random_range(0..candidates.len())])
}

/// The first [`MAX_CANDIDATES`] subnets in [SubnetMin, SubnetMax] overlapping nothing in `taken`.
pub fn free_subnets<N: Subnet>(range: &SubnetRange<N, N::Addr>, taken: &[N]) -> Vec<N> {
    let step = 1u128 << (N::BITS - range.subnet_len.min(N::BITS)).min(127);
    let max = N::bits_of(range.subnet_max);
    let taken = Spans::of(taken);
    let mut addr = Some(N::bits_of(range.subnet_min));
    let mut free = Vec::new();
    while let Some(at) = addr.filter(|a| *a <= max && free.len() < MAX_CANDIDATES) {
        if let Some(subnet) = N::with_len(N::addr_of(at), range.subnet_len) {
            if !taken.overlap(&subnet) {
                free.push(subnet);
            }
        }
        addr = at.checked_add(step);
    }
    free
}

/// Address spans (first and last address) sorted by their start, with the highest end among
/// each prefix of them: whether a subnet overlaps any takes a binary search, not a scan (with
/// 5000 leases the scan made choosing a subnet take 26 ms).
struct Spans {
    starts: Vec<u128>,
    /// `max_end[i]`: the highest last address among the spans `0..=i`.
    max_end: Vec<u128>,
}

impl Spans {
    fn of<N: Subnet>(subnets: &[N]) -> Spans {
        let mut spans: Vec<(u128, u128)> = subnets.iter().map(span).collect();
        spans.sort_unstable();
        let mut highest = 0;
        let max_end = (spans.iter())
            .map(|(_, end)| {
                highest = highest.max(*end);
                highest
            })
            .collect();
        Spans {
            starts: spans.into_iter().map(|(start, _)| start).collect(),
            max_end,
        }
    }

    /// Whether `subnet` overlaps any span: one that starts at or before its end and ends at
    /// or after its start.
    fn overlap<N: Subnet>(&self, subnet: &N) -> bool {
        let (start, end) = span(subnet);
        let before_end = self.starts.partition_point(|s| *s <= end);
        before_end > 0 && self.max_end[before_end - 1] >= start
    }
}

/// The first and last address of `subnet` as numbers.
fn span<N: Subnet>(subnet: &N) -> (u128, u128) {
    let start = N::bits_of(subnet.network_addr());
    let host_bits = u32::from(N::BITS - subnet.prefix().min(N::BITS));
    let size_less_one = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    (start, start.saturating_add(size_less_one))
}

/// Each enabled family's range, for messages: `/24 in 10.3.1.0..10.3.255.0`.
fn describe(config: &NetworkConfig) -> String {
    let v4 = config.ipv4.as_ref().map(|r| r.describe());
    let v6 = config.ipv6.as_ref().map(|r| r.describe());
    [v4, v6]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Lease;
    use ipnet::Ipv6Net;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::net::Ipv4Addr;

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json.as_bytes()).unwrap()
    }

    fn range(json: &str) -> crate::config::Ipv4Range {
        config(json).ipv4.unwrap()
    }

    fn ours() -> LeaseAttrs {
        LeaseAttrs::new(OURS, "host-gw")
    }

    fn key(s: &str) -> SubnetKey {
        s.parse().unwrap()
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

    /// A lease of `key` written at `revision`.
    fn written(k: &str, revision: i64) -> StoredLease {
        let mut lease = stored("10.0.0.0/24", [192, 168, 0, 9]);
        lease.lease.key = key(k);
        lease.mod_revision = revision;
        lease
    }

    #[test]
    fn the_later_of_two_dual_stack_leases_sharing_a_half_gives_way() {
        let ours = key("10.5.1.0-24&fd00:5:0:1::-64");
        let same_v4 = written("10.5.1.0-24&fd00:5:0:2::-64", 10);
        let same_v6 = written("10.5.2.0-24&fd00:5:0:1::-64", 10);
        let apart = written("10.5.3.0-24&fd00:5:0:3::-64", 10);
        for earlier in [same_v4, same_v6] {
            let leases = [
                apart.clone(),
                earlier.clone(),
                written(&ours.to_string(), 11),
            ];
            let (stored, clash) = earlier_clash(ours, &leases).expect("a clash");
            assert_eq!(
                (stored.mod_revision, clash.lease.key),
                (11, earlier.lease.key)
            );
            // Seen from the other host, whose lease was written first: it keeps its own.
            assert!(earlier_clash(earlier.lease.key, &leases).is_none());
        }
        let leases = [apart, written(&ours.to_string(), 11)];
        assert!(earlier_clash(ours, &leases).is_none());
    }

    #[test]
    fn ipv6_only_keys_do_not_clash_by_their_common_ipv4_half() {
        let ours = key("0.0.0.0-0&fd00:5:0:1::-64");
        let leases = [
            written("0.0.0.0-0&fd00:5:0:2::-64", 10),
            written(&ours.to_string(), 11),
        ];
        assert!(earlier_clash(ours, &leases).is_none());
    }

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

    proptest::proptest! {
        /// The binary search over spans finds exactly the subnets a scan of every taken
        /// subnet finds, for taken subnets of any length, nested or not.
        #[test]
        fn free_subnets_agree_with_a_scan_of_every_taken_subnet(
            taken in proptest::collection::vec((0u32..1 << 16, 16u8..=28), 0..60),
        ) {
            let r = range(r#"{"Network":"10.3.0.0/16","SubnetLen":26}"#);
            let taken: Vec<Ipv4Net> = taken
                .into_iter()
                .map(|(low, len)| {
                    let addr = std::net::Ipv4Addr::from(0x0a03_0000 | low);
                    Ipv4Net::new(addr, len).unwrap().trunc()
                })
                .collect();
            let scanned: Vec<Ipv4Net> = (0..1u32 << 10)
                .map(|i| Ipv4Net::new(std::net::Ipv4Addr::from(0x0a03_0000 + (i << 6)), 26).unwrap())
                .filter(|c| r.allows(*c) && !taken.iter().any(|t| t.overlaps(c)))
                .take(MAX_CANDIDATES)
                .collect();
            proptest::prop_assert_eq!(free_subnets(&r, &taken), scanned);
        }
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
        assert!(text.starts_with("out of IPv4 subnets"), "{text}");
        assert!(
            text.contains("10.3.10.0") && text.contains("10.3.11.0"),
            "{text}"
        );
        assert!(text.contains("3 leases"), "{text}");
    }

    #[test]
    fn misshapen_leases_do_not_occupy_the_range_and_a_full_range_names_its_holders() {
        let c =
            config(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.10.0","SubnetMax":"10.3.11.0"}"#);
        let hostile = [
            stored("10.3.0.0/16", [1, 1, 1, 2]),
            stored("10.3.10.0/25", [1, 1, 1, 3]),
            stored("0.0.0.0/0", [1, 1, 1, 4]),
            stored("192.168.1.0/24", [1, 1, 1, 5]),
        ];
        let p = choose_subnet(&c, &ours(), None, &hostile, &mut rand::rng()).unwrap();
        assert!(matches!(p.choice, Choice::Create { .. }), "{p:?}");
        assert_eq!(p.rejected.len(), 4, "{:?}", p.rejected);
        assert!(p.rejected[0].contains("10.3.0.0-16"), "{:?}", p.rejected);

        let mut full = hostile.to_vec();
        full.push(stored("10.3.10.0/24", [1, 1, 1, 6]));
        full.push(stored("10.3.11.0/24", [1, 1, 1, 7]));
        let text = choose_subnet(&c, &ours(), None, &full, &mut rand::rng())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("(2 leases exist: 10.3.10.0-24, 10.3.11.0-24)"),
            "{text}"
        );
    }

    #[test]
    fn a_lease_with_our_public_ip_is_reused_before_anything_else() {
        let c = config(r#"{"Network":"10.3.0.0/16"}"#);
        let leases = [
            stored("10.3.7.0/24", [1, 1, 1, 1]),
            stored("10.3.9.0/24", OURS.octets()),
        ];
        let plan = choose_subnet(
            &c,
            &ours(),
            Some(key("10.3.5.0-24")),
            &leases,
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(plan.choice, Choice::Reuse(Box::new(leases[1].clone())));
        assert!(plan.stale.is_empty());
    }

    #[test]
    fn our_lease_outside_the_range_is_stale_and_the_previous_subnet_is_used() {
        let c = config(r#"{"Network":"10.3.0.0/16"}"#);
        let leases = [
            stored("10.4.1.0/24", OURS.octets()),
            stored("10.3.7.0/24", [1, 1, 1, 1]),
        ];
        let plan = choose_subnet(
            &c,
            &ours(),
            Some(key("10.3.5.0-24")),
            &leases,
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(plan.stale, vec![leases[0].clone()]);
        assert_eq!(
            plan.choice,
            Choice::Create {
                key: key("10.3.5.0-24"),
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
        let c = config(r#"{"Network":"10.3.0.0/16","SubnetMax":"10.3.3.0"}"#);
        let leases = [stored("10.3.1.0/24", [1, 1, 1, 1])];
        let taken = choose_subnet(
            &c,
            &ours(),
            Some(key("10.3.1.0-24")),
            &leases,
            &mut rand::rng(),
        )
        .unwrap();
        assert!(
            taken.rejected[0].contains("held by 1.1.1.1"),
            "{:?}",
            taken.rejected
        );
        let Choice::Create {
            key: SubnetKey { ipv4: subnet, .. },
            reason,
        } = taken.choice
        else {
            panic!("expected a new lease, got {:?}", taken.choice)
        };
        assert_eq!(reason, Reason::Allocated);
        assert!(subnet == net("10.3.2.0/24") || subnet == net("10.3.3.0/24"));

        let outside =
            choose_subnet(&c, &ours(), Some(key("10.4.1.0-24")), &[], &mut rand::rng()).unwrap();
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

    const DUAL: &str = r#"{"Network":"10.3.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#;

    fn stored_key(k: &str, ip: [u8; 4], ipv6: Option<&str>) -> StoredLease {
        let mut lease = stored("10.0.0.0/24", ip);
        lease.lease.key = key(k);
        lease.lease.attrs.public_ipv6 = ipv6.map(|v| v.parse().unwrap());
        lease
    }

    #[test]
    fn ipv6_ranges_follow_go_defaults_and_step_by_the_subnet_length() {
        let r = config(DUAL).ipv6.unwrap();
        let taken: Ipv6Net = "fc00:0:0:1::/64".parse().unwrap();
        let free = free_subnets(&r, &[taken]);
        assert_eq!(free.len(), MAX_CANDIDATES);
        assert_eq!(free[0].to_string(), "fc00:0:0:2::/64");
        assert_eq!(free[99].to_string(), "fc00:0:0:65::/64");
        let top = config(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120","IPv6SubnetLen":124}"#,
        );
        let free = free_subnets(&top.ipv6.unwrap(), &[]);
        assert_eq!(free.len(), 15, "no overflow at the top of the space");
    }

    #[test]
    fn a_dual_stack_config_allocates_both_halves_at_once() {
        let c = config(DUAL);
        let taken = [stored_key(
            "10.3.1.0-24&fc00:0:0:1::-64",
            [1, 1, 1, 1],
            Some("fd00::1"),
        )];
        let plan = choose_subnet(&c, &ours(), None, &taken, &mut rand::rng()).unwrap();
        let Choice::Create {
            key,
            reason: Reason::Allocated,
        } = plan.choice
        else {
            panic!("{plan:?}")
        };
        let v6 = key.ipv6.expect("an IPv6 half");
        assert!(
            c.ipv4.unwrap().allows(key.ipv4) && c.ipv6.unwrap().allows(v6),
            "{key}"
        );
        assert_ne!(key.ipv4.to_string(), "10.3.1.0/24");
        assert_ne!(v6.to_string(), "fc00:0:0:1::/64");
    }

    #[test]
    fn our_dual_stack_lease_is_reused_whole_and_never_narrowed_to_ipv4() {
        let c = config(DUAL);
        let go_head = stored_key(
            "10.3.9.0-24&fc00:0:0:9::-64",
            OURS.octets(),
            Some("fd00::9"),
        );
        let plan = choose_subnet(
            &c,
            &ours(),
            None,
            std::slice::from_ref(&go_head),
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(plan.choice, Choice::Reuse(Box::new(go_head.clone())));
        assert!(plan.stale.is_empty());
        // An IPv4-only lease of ours does not fit a dual-stack config (Go: isIPv6SubnetConfigCompat).
        let v4_only = stored_key("10.3.9.0-24", OURS.octets(), None);
        let plan = choose_subnet(
            &c,
            &ours(),
            None,
            std::slice::from_ref(&v4_only),
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(plan.stale, vec![v4_only]);
        // And a dual lease does not fit an IPv4-only config.
        let v4_config = config(r#"{"Network":"10.3.0.0/16"}"#);
        let plan = choose_subnet(
            &v4_config,
            &ours(),
            None,
            std::slice::from_ref(&go_head),
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(plan.stale, vec![go_head]);
    }

    #[test]
    fn the_previous_dual_subnet_is_claimed_unless_either_half_is_held() {
        let c = config(DUAL);
        let previous = key("10.3.5.0-24&fc00:0:0:5::-64");
        let plan = choose_subnet(&c, &ours(), Some(previous), &[], &mut rand::rng()).unwrap();
        assert_eq!(
            plan.choice,
            Choice::Create {
                key: previous,
                reason: Reason::PreviousSubnet
            }
        );
        let holder = stored_key("10.3.7.0-24&fc00:0:0:5::-64", [1, 1, 1, 1], Some("fd00::1"));
        let plan = choose_subnet(&c, &ours(), Some(previous), &[holder], &mut rand::rng()).unwrap();
        assert!(
            plan.rejected[0].contains("held by 1.1.1.1"),
            "{:?}",
            plan.rejected
        );
        assert!(matches!(
            plan.choice,
            Choice::Create {
                reason: Reason::Allocated,
                ..
            }
        ));
    }

    #[test]
    fn an_ipv6_only_network_keys_leases_without_an_ipv4_half_and_knows_us_by_public_ipv6() {
        let c = config(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let mut me = ours();
        me.public_ipv6 = Some("fd00::5".parse().unwrap());
        let plan = choose_subnet(&c, &me, None, &[], &mut rand::rng()).unwrap();
        let Choice::Create { key, .. } = plan.choice else {
            panic!("{plan:?}")
        };
        assert_eq!(key.ipv4, NO_IPV4);
        assert!(key.to_string().starts_with("0.0.0.0-0&fc00:0:0:"), "{key}");
        let mine = stored_key(&key.to_string(), [9, 9, 9, 9], Some("fd00::5"));
        let plan =
            choose_subnet(&c, &me, None, std::slice::from_ref(&mine), &mut rand::rng()).unwrap();
        assert_eq!(plan.choice, Choice::Reuse(Box::new(mine)));
    }
}
