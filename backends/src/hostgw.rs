//! host-gw: one route per peer subnet via the peer's public address on the external interface,
//! for each address family the network has (IPv4, and IPv6 via the peer's PublicIPv6).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use subnet::{Lease, LeaseAttrs};

use crate::desired::{DesiredState, Family};
use crate::drift::Drift;
use crate::mixed;
use crate::notify::{react, Notification, Reaction};
use crate::{Error, ExternalInterface, Netlink};

/// The backend type name, in config and leases.
pub(crate) const TYPE: &str = crate::kind::HOST_GW;

/// The host-gw backend.
#[derive(Debug)]
pub(crate) struct HostGw {
    ext: ExternalInterface,
    /// Our PublicIP; `None` on an IPv6-only network.
    public_ip: Option<Ipv4Addr>,
    /// Our PublicIPv6 on a network with IPv6.
    public_ipv6: Option<Ipv6Addr>,
    /// The external interface's LANs, where vxlan peers are routed directly ([`mixed`]).
    onlink: Vec<IpNet>,
}

impl HostGw {
    /// Refuses a public address other than the interface's, like Go flanneld.
    pub(crate) fn new(
        ext: ExternalInterface,
        public_ip: Option<Ipv4Addr>,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<HostGw, Error> {
        if let Some(v4) = public_ip.filter(|v4| Some(*v4) != ext.addr) {
            return Err(Error::PublicIpDiffers {
                public_ip: v4.into(),
                iface: ext.name.clone(),
                iface_ip: ext.addr.map_or(Ipv4Addr::UNSPECIFIED.into(), Into::into),
            });
        }
        if let Some(v6) = public_ipv6.filter(|v6| Some(*v6) != ext.addr6) {
            return Err(Error::PublicIpDiffers {
                public_ip: v6.into(),
                iface: ext.name.clone(),
                iface_ip: ext.addr6.map_or(Ipv6Addr::UNSPECIFIED.into(), Into::into),
            });
        }
        Ok(HostGw {
            ext,
            public_ip,
            public_ipv6,
            onlink: Vec::new(),
        })
    }

    pub(crate) async fn init(&mut self, nl: &Netlink) -> Result<LeaseAttrs, Error> {
        self.ext.refresh(nl).await?;
        let families = [
            self.public_ip.map(|_| Family::V4),
            self.public_ipv6.map(|_| Family::V6),
        ];
        let families: Vec<Family> = families.into_iter().flatten().collect();
        self.onlink = self.ext.onlink(nl, &families).await?;
        let mut attrs = LeaseAttrs::new(self.public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), TYPE);
        attrs.public_ipv6 = self.public_ipv6;
        Ok(attrs)
    }

    /// The external interface and the public addresses.
    pub(crate) fn endpoint(&self) -> (ExternalInterface, Option<Ipv4Addr>, Option<Ipv6Addr>) {
        (self.ext.clone(), self.public_ip, self.public_ipv6)
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    pub(crate) fn desired<'a>(&self, peers: impl IntoIterator<Item = &'a Lease>) -> DesiredState {
        let families = (self.public_ip.is_some(), self.public_ipv6.is_some());
        desired(peers, self.ext.index, families, &self.onlink)
    }

    pub(crate) fn reaction(&self, n: &Notification) -> Reaction {
        react(n, &self.ext, &[])
    }

    pub(crate) async fn drift(&self, nl: &Netlink) -> Result<Vec<Drift>, Error> {
        Ok(self.ext.drift(nl).await?.into_iter().collect())
    }
}

/// A route per host-gw peer via its PublicIP (with `ipv4`) and one per IPv6 subnet via its
/// PublicIPv6 (with `ipv6`; a peer without an IPv6 half is reached over IPv4 only); a vxlan peer
/// on one of the `onlink` LANs is routed the same way during a switch ([`mixed`]).
fn desired<'a>(
    peers: impl IntoIterator<Item = &'a Lease>,
    oif: u32,
    (ipv4, ipv6): (bool, bool),
    onlink: &[IpNet],
) -> DesiredState {
    let mut state = DesiredState::default();
    for peer in peers {
        if peer.attrs.backend_type == crate::kind::VXLAN {
            if let Err(why) = mixed::add_direct(&mut state, peer, onlink, (ipv4, ipv6), oif) {
                let why = mixed::unreachable(TYPE, peer, why);
                state.skipped.insert(peer.id(), why);
            }
            continue;
        }
        if peer.attrs.backend_type != TYPE {
            state.skipped.insert(
                peer.id(),
                format!(
                    "Ignoring non-host-gw subnet: its BackendType is {:?}",
                    peer.attrs.backend_type
                ),
            );
            continue;
        }
        if ipv4 && peer.key.has_ipv4() {
            state.add_direct_route(peer.subnet().into(), peer.attrs.public_ip.into(), oif);
        }
        if let (true, Some(subnet), Some(via)) = (ipv6, peer.key.ipv6, peer.attrs.public_ipv6) {
            state.add_direct_route(subnet.into(), via.into(), oif);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Route;
    use subnet::{LeaseEvent, PeerSet, SubnetKey};

    fn ext() -> ExternalInterface {
        ExternalInterface {
            name: "eth0".into(),
            index: 2,
            addr: Some(Ipv4Addr::new(192, 168, 1, 1)),
            addr6: Some("fd00:1::1".parse().unwrap()),
            mtu: 1500,
        }
    }

    fn peer(subnet: &str, ip: [u8; 4], kind: &str) -> LeaseEvent {
        LeaseEvent::Put(Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs::new(Ipv4Addr::from(ip), kind),
            expiration: None,
        })
    }

    #[test]
    fn one_route_per_host_gw_peer_others_skipped() {
        let mut peers = PeerSet::new("10.5.1.0/24".parse().unwrap());
        peers.apply(&peer("10.5.2.0/24", [192, 168, 1, 2], "host-gw"));
        peers.apply(&peer("10.5.3.0/24", [192, 168, 1, 3], "vxlan"));
        let state = HostGw::new(ext(), ext().addr, None)
            .unwrap()
            .desired(peers.iter());
        let dst = "10.5.2.0/24".parse().unwrap();
        assert_eq!(
            state.routes.values().copied().collect::<Vec<_>>(),
            vec![Route {
                dst,
                gateway: Ipv4Addr::new(192, 168, 1, 2).into(),
                oif: 2,
                onlink: false,
                nexthop: None,
            }]
        );
        assert_eq!(state.vteps, crate::Vteps::default());
        let why = &state.skipped[&"10.5.3.0/24".parse().unwrap()];
        assert!(
            why.contains("vxlan") && why.contains("not on a LAN"),
            "{why}"
        );
    }

    #[test]
    fn a_vxlan_peer_on_our_lan_keeps_a_direct_route_during_a_switch() {
        let mut peers = PeerSet::new("10.5.1.0/24".parse().unwrap());
        peers.apply(&peer("10.5.3.0/24", [192, 168, 1, 3], "vxlan"));
        peers.apply(&peer("10.5.4.0/24", [172, 16, 0, 4], "vxlan"));
        let lan: Vec<IpNet> = vec!["192.168.1.0/24".parse().unwrap()];
        let state = desired(peers.iter(), 2, (true, false), &lan);
        let r3 = state.routes[&"10.5.3.0/24".parse().unwrap()];
        assert_eq!(
            (r3.gateway, r3.oif),
            (Ipv4Addr::new(192, 168, 1, 3).into(), 2)
        );
        let why = &state.skipped[&"10.5.4.0/24".parse().unwrap()];
        assert!(
            why.starts_with("unreachable from this host-gw host"),
            "{why}"
        );
    }

    #[test]
    fn public_ip_other_than_interface_ip_is_refused() {
        let err = HostGw::new(ext(), Some(Ipv4Addr::new(1, 2, 3, 4)), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("your PublicIP differs from interface IP"),
            "{err}"
        );
        let v6 = Some("fd00:1::99".parse().unwrap());
        let err = HostGw::new(ext(), ext().addr, v6).unwrap_err();
        assert!(err.to_string().contains("fd00:1::99"), "{err}");
    }

    #[test]
    fn a_dual_stack_peer_gets_a_route_per_family_and_an_ipv4_only_peer_one() {
        let mut peers = PeerSet::new("10.5.1.0/24".parse().unwrap());
        let mut dual = LeaseAttrs::new(Ipv4Addr::new(192, 168, 1, 2), "host-gw");
        dual.public_ipv6 = Some("fd00:1::2".parse().unwrap());
        peers.apply(&LeaseEvent::Put(Lease {
            key: "10.5.2.0-24&fd00:5:0:2::-64".parse().unwrap(),
            attrs: dual,
            expiration: None,
        }));
        peers.apply(&peer("10.5.3.0/24", [192, 168, 1, 3], "host-gw"));
        let backend = HostGw::new(ext(), ext().addr, ext().addr6).unwrap();
        let state = backend.desired(peers.iter());
        let routes: Vec<String> = state.routes.values().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            [
                "route 10.5.2.0/24 via 192.168.1.2 dev #2",
                "route 10.5.3.0/24 via 192.168.1.3 dev #2",
                "route fd00:5:0:2::/64 via fd00:1::2 dev #2",
            ]
        );
        // Without IPv6 in the config the IPv6 half is not routed.
        let v4_only = HostGw::new(ext(), ext().addr, None).unwrap();
        assert_eq!(v4_only.desired(peers.iter()).routes.len(), 2);
    }
}
