//! host-gw: one route per peer subnet via the peer's PublicIP on the external interface.

use std::net::Ipv4Addr;

use subnet::{Lease, LeaseAttrs};

use crate::desired::DesiredState;
use crate::drift::Drift;
use crate::notify::{react, Notification, Reaction};
use crate::{Error, ExternalInterface, Netlink};

/// The backend type name, in config and leases.
pub(crate) const TYPE: &str = "host-gw";

/// The host-gw backend.
#[derive(Debug)]
pub(crate) struct HostGw {
    ext: ExternalInterface,
    public_ip: Ipv4Addr,
}

impl HostGw {
    /// Refuses a public IP other than the interface's, like Go flanneld.
    pub(crate) fn new(ext: ExternalInterface, public_ip: Ipv4Addr) -> Result<HostGw, Error> {
        if public_ip != ext.addr {
            return Err(Error::PublicIpDiffers {
                public_ip,
                iface: ext.name.clone(),
                iface_ip: ext.addr,
            });
        }
        Ok(HostGw { ext, public_ip })
    }

    pub(crate) async fn init(&mut self, nl: &Netlink) -> Result<LeaseAttrs, Error> {
        self.ext.refresh(nl).await?;
        Ok(LeaseAttrs::new(self.public_ip, TYPE))
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    pub(crate) fn desired<'a>(&self, peers: impl IntoIterator<Item = &'a Lease>) -> DesiredState {
        desired(peers, self.ext.index)
    }

    pub(crate) fn reaction(&self, n: &Notification) -> Reaction {
        react(n, &self.ext, None)
    }

    pub(crate) async fn drift(&self, nl: &Netlink) -> Result<Vec<Drift>, Error> {
        Ok(self.ext.drift(nl).await?.into_iter().collect())
    }
}

fn desired<'a>(peers: impl IntoIterator<Item = &'a Lease>, oif: u32) -> DesiredState {
    let mut state = DesiredState::default();
    for peer in peers {
        if peer.attrs.backend_type == TYPE {
            state.add_direct_route(peer.subnet(), peer.attrs.public_ip, oif);
        } else {
            state.skipped.insert(
                peer.subnet(),
                format!(
                    "Ignoring non-host-gw subnet: its BackendType is {:?}",
                    peer.attrs.backend_type
                ),
            );
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
            addr: Ipv4Addr::new(192, 168, 1, 1),
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
        let state = HostGw::new(ext(), ext().addr)
            .unwrap()
            .desired(peers.iter());
        let dst = "10.5.2.0/24".parse().unwrap();
        assert_eq!(
            state.routes.values().copied().collect::<Vec<_>>(),
            vec![Route {
                dst,
                gateway: Ipv4Addr::new(192, 168, 1, 2),
                oif: 2,
                onlink: false
            }]
        );
        assert_eq!(state.vtep, None);
        let why = &state.skipped[&"10.5.3.0/24".parse().unwrap()];
        assert!(why.contains("vxlan"), "{why}");
    }

    #[test]
    fn public_ip_other_than_interface_ip_is_refused() {
        let err = HostGw::new(ext(), Ipv4Addr::new(1, 2, 3, 4)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("your PublicIP differs from interface IP"),
            "{err}"
        );
    }
}
