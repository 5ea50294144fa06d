//! vxlan: peers are reached through the device `flannel.<VNI>`; per peer a permanent
//! neighbour, a permanent FDB entry and an onlink route, or with DirectRouting a plain route
//! for on-link peers.

mod config;
mod data;
mod device;

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use subnet::{Lease, LeaseAttrs};

use crate::desired::{DesiredState, Family, Route, Vteps};
use crate::drift::Drift;
use crate::mac::Mac;
use crate::netlink::VxlanSpec;
use crate::notify::{react, Notification, Reaction};
use crate::{Error, ExternalInterface, Netlink};
use config::{VxlanConfig, OVERHEAD};
use data::VtepData;
use device::WantedDevice;

/// The backend type name, in config and leases.
pub(crate) const TYPE: &str = "vxlan";

/// The vxlan backend.
#[derive(Debug)]
pub(crate) struct Vxlan {
    cfg: VxlanConfig,
    ext: ExternalInterface,
    public_ip: Ipv4Addr,
    /// The device's index and MAC once set up; the MAC is kept if the device is recreated.
    device: Option<(u32, Mac)>,
    /// The own subnet and the cluster network of the last successful configure.
    configured: Option<(Ipv4Net, Ipv4Net)>,
    /// Subnets reachable without a gateway through the external interface.
    onlink: Vec<Ipv4Net>,
}

/// Parses the vxlan keys of a `Backend` object, for [`crate::check_config`].
pub(crate) fn check_config(raw: &Value) -> Result<(), Error> {
    VxlanConfig::parse(raw).map(|_| ())
}

impl Vxlan {
    /// Decodes the vxlan keys of the `Backend` object.
    pub(crate) fn new(
        raw: &Value,
        ext: ExternalInterface,
        public_ip: Ipv4Addr,
    ) -> Result<Vxlan, Error> {
        Ok(Vxlan {
            cfg: VxlanConfig::parse(raw)?,
            ext,
            public_ip,
            device: None,
            configured: None,
            onlink: Vec::new(),
        })
    }

    fn name(&self) -> String {
        format!("flannel.{}", self.cfg.vni)
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.cfg
            .mtu
            .unwrap_or(self.ext.mtu)
            .saturating_sub(OVERHEAD)
    }

    /// The device as the config and the external interface want it.
    fn spec(&self) -> VxlanSpec {
        VxlanSpec {
            name: self.name(),
            vni: self.cfg.vni,
            local: self.public_ip,
            dev: self.ext.index,
            port: self.cfg.port,
            gbp: self.cfg.gbp,
            learning: self.cfg.learning,
            mtu: self.mtu(),
        }
    }

    /// The subnets reachable without a gateway through the external interface.
    async fn onlink_subnets(&self, nl: &Netlink) -> Result<Vec<Ipv4Net>, Error> {
        let routes = nl
            .routes(Family::V4)
            .await
            .map_err(Error::netlink("list routes for DirectRouting"))?;
        Ok(routes
            .iter()
            .filter(|r| r.gateway.is_none() && r.oif == Some(self.ext.index))
            .filter_map(|r| match r.dst {
                IpNet::V4(dst) => Some(dst),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    pub(crate) async fn init(&mut self, nl: &Netlink) -> Result<LeaseAttrs, Error> {
        self.ext.refresh(nl).await?;
        let published = self.device.map(|(_, mac)| mac);
        let (index, mac) = device::ensure(nl, &self.spec(), published).await?;
        self.device = Some((index, mac));
        self.onlink = self.onlink_subnets(nl).await?;
        let mut attrs = LeaseAttrs::new(self.public_ip, TYPE);
        attrs.backend_data = Some(
            VtepData {
                vni: Some(self.cfg.vni),
                mac,
            }
            .to_json(),
        );
        Ok(attrs)
    }

    /// The existing device, if any, as if this backend had set it up (see `Backend::attach`).
    pub(crate) async fn attach(
        &mut self,
        nl: &Netlink,
        own: &Lease,
        network: Ipv4Net,
    ) -> Result<(), Error> {
        self.ext.refresh(nl).await?;
        let published = VtepData::from_json(own.attrs.backend_data.as_ref())
            .ok()
            .map(|d| d.mac);
        self.device = device::lookup(nl, &self.name())
            .await?
            .and_then(|link| Some((link.index, published.or(link.mac)?)));
        self.configured = self.device.map(|_| (own.subnet(), network));
        self.onlink = self.onlink_subnets(nl).await?;
        Ok(())
    }

    pub(crate) async fn configure(
        &mut self,
        nl: &Netlink,
        own: Ipv4Net,
        network: Ipv4Net,
    ) -> Result<(), Error> {
        let spec = self.spec();
        let (index, mac) = self
            .device
            .ok_or_else(|| Error::NoInterface(spec.name.clone()))?;
        self.configured = None;
        let want = WantedDevice {
            spec: &spec,
            index,
            mac,
            own,
            network,
        };
        device::configure(nl, &want).await?;
        self.configured = Some((own, network));
        Ok(())
    }

    pub(crate) async fn drift(&self, nl: &Netlink) -> Result<Vec<Drift>, Error> {
        let mut drift: Vec<Drift> = self.ext.drift(nl).await?.into_iter().collect();
        let (Some((index, mac)), Some((own, network))) = (self.device, self.configured) else {
            drift.push(Drift::DeviceNotSetUp { name: self.name() });
            return Ok(drift);
        };
        let spec = self.spec();
        let want = WantedDevice {
            spec: &spec,
            index,
            mac,
            own,
            network,
        };
        let name = &spec.name;
        let device = device::drift(nl, &want).await?.into_iter();
        drift.extend(device.map(|change| Drift::Device {
            name: name.clone(),
            change,
        }));
        if self.cfg.direct_routing && self.onlink_subnets(nl).await? != self.onlink {
            drift.push(Drift::OnLinkSubnetsChanged {
                iface: self.ext.name.clone(),
            });
        }
        Ok(drift)
    }

    pub(crate) fn desired<'a>(&self, peers: impl IntoIterator<Item = &'a Lease>) -> DesiredState {
        desired(
            peers,
            &self.cfg,
            self.ext.index,
            self.device.map(|(i, _)| i),
            &self.onlink,
        )
    }

    pub(crate) fn reaction(&self, n: &Notification) -> Reaction {
        let name = self.name();
        react(n, &self.ext, &[(&name, self.device.map(|(i, _)| i))])
    }
}

/// Deletes every vxlan device named `flannel.<VNI>` (`flanneld cleanup`); returns their names.
pub(crate) async fn remove_devices(nl: &Netlink) -> Result<Vec<String>, Error> {
    let view = nl
        .host_view(None)
        .await
        .map_err(Error::netlink("list links"))?;
    let ours = view.interfaces.iter().filter(|i| {
        i.name
            .strip_prefix("flannel.")
            .is_some_and(|vni| vni.parse::<u32>().is_ok())
    });
    let mut removed = Vec::new();
    for iface in ours {
        let Some(link) = device::lookup(nl, &iface.name).await? else {
            continue;
        };
        if link.vxlan.is_none() {
            continue;
        }
        nl.del_link(link.index)
            .await
            .map_err(Error::netlink(format!("delete {}", iface.name)))?;
        removed.push(iface.name.clone());
    }
    Ok(removed)
}

/// The pure core: what `peers` need, given the device index and the on-link subnets.
fn desired<'a>(
    peers: impl IntoIterator<Item = &'a Lease>,
    cfg: &VxlanConfig,
    ext_index: u32,
    vtep: Option<u32>,
    onlink: &[Ipv4Net],
) -> DesiredState {
    let mut state = DesiredState {
        vteps: Vteps { v4: vtep, v6: None },
        ..DesiredState::default()
    };
    for peer in peers {
        if let Err(why) = add_peer(&mut state, peer, cfg, ext_index, onlink) {
            state.skipped.insert(peer.subnet(), why);
        }
    }
    state
}

fn add_peer(
    state: &mut DesiredState,
    peer: &Lease,
    cfg: &VxlanConfig,
    ext_index: u32,
    onlink: &[Ipv4Net],
) -> Result<(), String> {
    if peer.attrs.backend_type != TYPE {
        return Err(format!(
            "Ignoring non-vxlan subnet: its BackendType is {:?}",
            peer.attrs.backend_type
        ));
    }
    let data = VtepData::from_json(peer.attrs.backend_data.as_ref())
        .map_err(|e| format!("Ignoring vxlan subnet: {e}"))?;
    let subnet = peer.subnet();
    let public_ip = peer.attrs.public_ip;
    if cfg.direct_routing && onlink.iter().any(|n| n.contains(&public_ip)) {
        state.add_direct_route(subnet.into(), public_ip.into(), ext_index);
        return Ok(());
    }
    let vtep = state.vteps.v4.ok_or("the vxlan device is not set up")?;
    state.neighbours.insert(subnet.network().into(), data.mac);
    state.fdb.insert(data.mac, public_ip.into());
    state.routes.insert(
        subnet.into(),
        Route {
            dst: subnet.into(),
            gateway: subnet.network().into(),
            oif: vtep,
            onlink: true,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use subnet::{LeaseEvent, PeerSet, SubnetKey};

    fn peer(subnet: &str, ip: &str, kind: &str, data: Option<Value>) -> LeaseEvent {
        let mut attrs = LeaseAttrs::new(ip.parse().unwrap(), kind);
        attrs.backend_data = data;
        LeaseEvent::Put(Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs,
            expiration: None,
        })
    }

    fn peers() -> PeerSet {
        let mut set = PeerSet::new("10.5.1.0/24".parse().unwrap());
        for e in [
            peer(
                "10.5.2.0/24",
                "192.168.1.2",
                "vxlan",
                Some(json!({"VNI":1,"VtepMAC":"02:00:00:00:00:02"})),
            ),
            peer(
                "10.5.3.0/24",
                "172.16.0.3",
                "vxlan",
                Some(json!({"VtepMAC":"02:00:00:00:00:03"})),
            ),
            peer("10.5.4.0/24", "192.168.1.4", "host-gw", None),
            peer(
                "10.5.5.0/24",
                "192.168.1.5",
                "vxlan",
                Some(json!({"VNI":1})),
            ),
        ] {
            set.apply(&e);
        }
        set
    }

    fn cfg(direct: bool) -> VxlanConfig {
        let mut cfg = VxlanConfig::parse(&json!({})).unwrap();
        cfg.direct_routing = direct;
        cfg
    }

    #[test]
    fn each_vxlan_peer_gets_neighbour_fdb_and_onlink_route() {
        let state = desired(peers().iter(), &cfg(false), 2, Some(9), &[]);
        assert_eq!(state.vteps.v4, Some(9));
        let n2: std::net::IpAddr = "10.5.2.0".parse().unwrap();
        let m2: Mac = "02:00:00:00:00:02".parse().unwrap();
        assert_eq!(state.neighbours.get(&n2), Some(&m2));
        assert_eq!(state.fdb.get(&m2), Some(&"192.168.1.2".parse().unwrap()));
        let r3 = state.routes[&"10.5.3.0/24".parse().unwrap()];
        assert_eq!(
            (r3.gateway, r3.oif, r3.onlink),
            ("10.5.3.0".parse().unwrap(), 9, true)
        );
        assert_eq!(state.routes.len(), 2);
        assert_eq!(state.skipped.len(), 2);
        assert!(state.skipped[&"10.5.4.0/24".parse().unwrap()].contains("non-vxlan"));
        assert!(state.skipped[&"10.5.5.0/24".parse().unwrap()].contains("VtepMAC"));
    }

    #[test]
    fn direct_routing_splits_on_link_peers_off() {
        let onlink = ["192.168.1.0/24".parse().unwrap()];
        let state = desired(peers().iter(), &cfg(true), 2, Some(9), &onlink);
        let r2 = state.routes[&"10.5.2.0/24".parse().unwrap()];
        assert_eq!(
            (r2.gateway, r2.oif, r2.onlink),
            ("192.168.1.2".parse().unwrap(), 2, false)
        );
        assert!(!state.neighbours.contains_key(&"10.5.2.0".parse().unwrap()));
        let r3 = state.routes[&"10.5.3.0/24".parse().unwrap()];
        assert_eq!((r3.oif, r3.onlink), (9, true));
        assert_eq!(state.neighbours.len(), 1);
        // Without DirectRouting the on-link peer goes through the device too.
        assert_eq!(
            desired(peers().iter(), &cfg(false), 2, Some(9), &onlink)
                .neighbours
                .len(),
            2
        );
    }

    #[test]
    fn mtu_is_underlay_minus_overhead() {
        let ext = ExternalInterface {
            name: "eth0".into(),
            index: 2,
            addr: "192.168.1.1".parse().unwrap(),
            addr6: None,
            mtu: 1500,
        };
        let ip = ext.addr;
        assert_eq!(Vxlan::new(&json!({}), ext.clone(), ip).unwrap().mtu(), 1450);
        assert_eq!(
            Vxlan::new(&json!({"MTU": 9000}), ext, ip).unwrap().mtu(),
            8950
        );
    }
}
