//! Peers of the other backend while a cluster is switched between host-gw and vxlan (seed 001:
//! one host after the other is restarted with the new config, so for a while each host has peers
//! whose lease still names the old backend). Such a peer is routed when a path serves both
//! ends: a direct route (`<subnet> via <PublicIP>`) when its public address is on one of this
//! host's LANs, which is the path host-gw uses and vxlan with DirectRouting uses on a LAN. A
//! packet that arrives on the peer's LAN interface for its pod subnet is delivered whatever its
//! agent runs, and the peer routes its answers back the same way for the same reason.
//!
//! | this host | peer's lease | peer on a LAN of ours | programmed |
//! |---|---|---|---|
//! | host-gw | vxlan | yes | direct route |
//! | host-gw | vxlan | no | nothing: unreachable (no vxlan device here) |
//! | vxlan + DirectRouting | host-gw | yes | direct route |
//! | vxlan + DirectRouting | host-gw | no | nothing: unreachable (no VTEP there) |
//! | vxlan without DirectRouting | host-gw | either | nothing: unreachable (direct routes are off) |
//!
//! Everything else about a peer is checked as before (the lease policy, its other-family half).

use std::net::IpAddr;

use ipnet::IpNet;
use subnet::Lease;

use crate::desired::DesiredState;

/// Why a peer of the other backend is not routed; starts with "unreachable" (the metric label).
pub(crate) fn unreachable(ours: &str, peer: &Lease, why: &str) -> String {
    format!(
        "unreachable from this {ours} host: its lease says BackendType {:?} and {why}; it is routed again once both ends run the same backend",
        peer.attrs.backend_type
    )
}

/// The halves of `peer` (subnet and public address, per family this host routes) whose public
/// address is on one of `onlink`.
fn onlink_halves(peer: &Lease, onlink: &[IpNet], (v4, v6): (bool, bool)) -> Vec<(IpNet, IpAddr)> {
    let ipv4 = (v4 && peer.key.has_ipv4())
        .then(|| (peer.subnet().into(), IpAddr::from(peer.attrs.public_ip)));
    let ipv6 = (peer.key.ipv6.zip(peer.attrs.public_ipv6))
        .filter(|_| v6)
        .map(|(subnet, public)| (subnet.into(), IpAddr::from(public)));
    [ipv4, ipv6]
        .into_iter()
        .flatten()
        .filter(|(_, public)| onlink.iter().any(|net| net.contains(public)))
        .collect()
}

/// Adds direct routes through `oif` for the halves of `peer` on this host's LANs; `Err` with
/// the reason when none is.
pub(crate) fn add_direct(
    state: &mut DesiredState,
    peer: &Lease,
    onlink: &[IpNet],
    families: (bool, bool),
    oif: u32,
) -> Result<(), &'static str> {
    let halves = onlink_halves(peer, onlink, families);
    if halves.is_empty() {
        return Err("its public address is not on a LAN of this host");
    }
    for (subnet, public) in halves {
        state.add_direct_route(subnet, public, oif);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use subnet::{LeaseAttrs, SubnetKey};

    fn lease(subnet: &str, public: [u8; 4], kind: &str) -> Lease {
        Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs::new(public.into(), kind),
            expiration: None,
        }
    }

    #[test]
    fn only_halves_on_a_lan_of_ours_get_a_direct_route() {
        let lan: Vec<IpNet> = vec!["192.168.1.0/24".parse().unwrap()];
        let mut state = DesiredState::default();
        let near = lease("10.5.2.0/24", [192, 168, 1, 12], "vxlan");
        assert_eq!(
            add_direct(&mut state, &near, &lan, (true, false), 2),
            Ok(())
        );
        let route = &state.routes[&"10.5.2.0/24".parse().unwrap()];
        assert_eq!(
            (route.gateway, route.oif, route.onlink),
            ("192.168.1.12".parse().unwrap(), 2, false)
        );
        let far = lease("10.5.3.0/24", [192, 168, 7, 31], "vxlan");
        assert!(add_direct(&mut state, &far, &lan, (true, false), 2).is_err());
        assert_eq!(state.routes.len(), 1);
        // An IPv4 half on the LAN is not routed on an IPv6-only host.
        assert!(add_direct(&mut state, &near, &lan, (false, true), 2).is_err());
    }
}
