//! `--ip-blackhole-route`: a `blackhole <own subnet>` route per family, so that traffic to an
//! unused pod address of this host is dropped here instead of following the default route (for
//! set-ups without a pod bridge, e.g. Canal). Go flanneld adds it when no blackhole route for the
//! subnet exists, every `--iptables-resync`; ours carry our tag, so that the one of a subnet we
//! no longer hold is removed.

use ipnet::IpNet;

use crate::desired::Family;
use crate::{Error, Netlink, ROUTE_PROTOCOL};

/// What to change: blackholes to add and ours to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlackholePlan {
    pub add: Vec<IpNet>,
    pub delete: Vec<IpNet>,
}

/// Plans (pure) from the existing blackhole routes (destination, protocol): each wanted subnet
/// without any blackhole route gets ours; ours inside `networks` that are not wanted go.
pub(crate) fn plan(
    existing: &[(IpNet, u8)],
    wanted: &[IpNet],
    networks: &[IpNet],
) -> BlackholePlan {
    let add = wanted
        .iter()
        .filter(|w| !existing.iter().any(|(dst, _)| dst == *w))
        .copied()
        .collect();
    let delete = existing
        .iter()
        .filter(|(dst, proto)| *proto == ROUTE_PROTOCOL && !wanted.contains(dst))
        .filter(|(dst, _)| networks.iter().any(|n| n.contains(dst)))
        .map(|(dst, _)| *dst)
        .collect();
    BlackholePlan { add, delete }
}

/// Makes the main table hold a blackhole route for each of `subnets` (our lease's, one per
/// family) and none of ours for another subnet inside `networks`. Returns what it changed, for
/// the log.
pub async fn ensure_blackholes(
    nl: &Netlink,
    subnets: &[IpNet],
    networks: &[IpNet],
) -> Result<Vec<String>, Error> {
    let mut existing = Vec::new();
    let mut families: Vec<Family> = networks.iter().map(Family::of_net).collect();
    families.dedup();
    for family in families {
        let found = nl.blackholes(family).await;
        existing.extend(found.map_err(Error::netlink("list blackhole routes"))?);
    }
    let plan = plan(&existing, subnets, networks);
    let mut changed = Vec::new();
    for dst in plan.add {
        let added = nl.add_blackhole(dst).await;
        added.map_err(Error::netlink(format!("add route blackhole {dst}")))?;
        changed.push(format!("added blackhole {dst}"));
    }
    for dst in plan.delete {
        let deleted = nl.del_blackhole(dst).await;
        deleted.map_err(Error::netlink(format!("delete route blackhole {dst}")))?;
        changed.push(format!("deleted blackhole {dst} (no longer our subnet)"));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn each_wanted_subnet_gets_one_and_ours_of_old_subnets_go() {
        let networks = [net("10.5.0.0/16"), net("fd00:5::/48")];
        let wanted = [net("10.5.7.0/24"), net("fd00:5:0:7::/64")];
        let existing = [
            (net("10.5.7.0/24"), 3),
            (net("10.5.9.0/24"), ROUTE_PROTOCOL),
            (net("10.6.9.0/24"), ROUTE_PROTOCOL),
            (net("10.5.8.0/24"), 3),
        ];
        assert_eq!(
            plan(&existing, &wanted, &networks),
            BlackholePlan {
                add: vec![net("fd00:5:0:7::/64")],
                delete: vec![net("10.5.9.0/24")],
            }
        );
    }
}
