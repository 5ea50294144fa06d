//! vxlan: peers are reached through the device `flannel.<VNI>` and, on a dual-stack network,
//! `flannel-v6.<VNI>` (IPv6 overlay over an IPv6 underlay); per peer and family a permanent
//! neighbour, a permanent FDB entry and an onlink route, or with DirectRouting a plain route
//! for on-link peers.

mod config;
mod data;
mod device;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::Value;
use subnet::{Lease, LeaseAttrs};

use crate::desired::{DesiredState, Family, Route, Vteps};
use crate::drift::Drift;
use crate::mac::Mac;
use crate::mixed;
use crate::netlink::VxlanSpec;
use crate::notify::{react, Notification, Reaction};
use crate::{ClusterNetworks, Error, ExternalInterface, Netlink};
use config::{VxlanConfig, OVERHEAD};
use data::VtepData;
use device::WantedDevice;

/// The backend type name, in config and leases.
pub(crate) const TYPE: &str = crate::kind::VXLAN;

/// The encapsulation overhead over an IPv6 underlay: 20 bytes more than over IPv4.
const OVERHEAD_V6: u32 = OVERHEAD + 20;

/// One of the backend's vxlan devices.
#[derive(Debug)]
struct Vtep {
    /// The public address it sends from (`local`): PublicIP or PublicIPv6.
    local: IpAddr,
    /// The device's index and MAC once set up; the MAC is kept if the device is recreated.
    device: Option<(u32, Mac)>,
    /// The own subnet and the cluster network of the last successful configure.
    configured: Option<(IpNet, IpNet)>,
}

impl Vtep {
    fn new(local: IpAddr) -> Vtep {
        Vtep {
            local,
            device: None,
            configured: None,
        }
    }

    fn index(&self) -> Option<u32> {
        self.device.map(|(index, _)| index)
    }

    /// The family of its overlay and underlay: that of its local address.
    fn family(&self) -> Family {
        Family::of(&self.local)
    }
}

/// The vxlan backend.
#[derive(Debug)]
pub(crate) struct Vxlan {
    cfg: VxlanConfig,
    ext: ExternalInterface,
    /// The devices: `flannel.<VNI>` unless the network is IPv6-only, `flannel-v6.<VNI>` when it
    /// has IPv6.
    vteps: Vec<Vtep>,
    /// Subnets (both families) reachable without a gateway through the external interface.
    onlink: Vec<IpNet>,
}

/// Parses the vxlan keys of a `Backend` object, for [`crate::check_config`].
pub(crate) fn check_config(raw: &Value) -> Result<(), Error> {
    VxlanConfig::parse(raw).map(|_| ())
}

impl Vxlan {
    /// Decodes the vxlan keys of the `Backend` object; a device is set up for each family with
    /// a public address (`public_ip` unless the network is IPv6-only, `public_ipv6` when it has
    /// IPv6).
    pub(crate) fn new(
        raw: &Value,
        ext: ExternalInterface,
        public_ip: Option<Ipv4Addr>,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<Vxlan, Error> {
        let locals = [public_ip.map(IpAddr::V4), public_ipv6.map(IpAddr::V6)];
        Ok(Vxlan {
            cfg: VxlanConfig::parse(raw)?,
            ext,
            vteps: locals.into_iter().flatten().map(Vtep::new).collect(),
            onlink: Vec::new(),
        })
    }

    fn vteps(&self) -> impl Iterator<Item = &Vtep> {
        self.vteps.iter()
    }

    fn vtep(&self, family: Family) -> Option<&Vtep> {
        self.vteps.iter().find(|v| v.family() == family)
    }

    fn name(&self, family: Family) -> String {
        match family {
            Family::V4 => format!("flannel.{}", self.cfg.vni),
            Family::V6 => format!("flannel-v6.{}", self.cfg.vni),
        }
    }

    /// The external interface and the public addresses the devices send from.
    pub(crate) fn endpoint(&self) -> (ExternalInterface, Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let mut v4 = None;
        let mut v6 = None;
        for vtep in self.vteps() {
            match vtep.local {
                IpAddr::V4(ip) => v4 = Some(ip),
                IpAddr::V6(ip) => v6 = Some(ip),
            }
        }
        (self.ext.clone(), v4, v6)
    }

    /// The names of the devices this backend uses.
    pub(crate) fn device_names(&self) -> Vec<String> {
        self.vteps().map(|v| self.name(v.family())).collect()
    }

    /// Deletes the devices this backend set up whose names are not in `keep` (a live switch:
    /// the next backend's); their neighbours, FDB entries and routes go with them. Returns their
    /// names.
    pub(crate) async fn remove_devices_except(
        &self,
        nl: &Netlink,
        keep: &[String],
    ) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        for vtep in self.vteps() {
            let name = self.name(vtep.family());
            let Some((index, _)) = vtep.device.filter(|_| !keep.contains(&name)) else {
                continue;
            };
            nl.del_link(index)
                .await
                .map_err(Error::netlink(format!("delete {name}")))?;
            removed.push(name);
        }
        Ok(removed)
    }

    fn underlay_mtu(&self) -> u32 {
        self.cfg.mtu.unwrap_or(self.ext.mtu)
    }

    /// The MTU of the device of `family`: the underlay's less that family's encapsulation.
    fn device_mtu(&self, family: Family) -> u32 {
        let overhead = match family {
            Family::V4 => OVERHEAD,
            Family::V6 => OVERHEAD_V6,
        };
        self.underlay_mtu().saturating_sub(overhead)
    }

    /// FLANNEL_MTU: what fits through every device in use (pods send both families through one
    /// interface).
    pub(crate) fn mtu(&self) -> u32 {
        self.vteps()
            .map(|v| self.device_mtu(v.family()))
            .min()
            .unwrap_or_default()
    }

    /// A device as the config and the external interface want it.
    fn spec(&self, vtep: &Vtep) -> VxlanSpec {
        VxlanSpec {
            name: self.name(vtep.family()),
            vni: self.cfg.vni,
            local: vtep.local,
            dev: self.ext.index,
            port: self.cfg.port,
            gbp: self.cfg.gbp,
            learning: self.cfg.learning,
            mtu: self.device_mtu(vtep.family()),
        }
    }

    /// The subnets reachable without a gateway through the external interface.
    async fn onlink_subnets(&self, nl: &Netlink) -> Result<Vec<IpNet>, Error> {
        let families: Vec<Family> = self.vteps().map(Vtep::family).collect();
        self.ext.onlink(nl, &families).await
    }

    pub(crate) async fn init(&mut self, nl: &Netlink) -> Result<LeaseAttrs, Error> {
        self.ext.refresh(nl).await?;
        for at in 0..self.vteps.len() {
            let spec = self.spec(&self.vteps[at]);
            let published = self.vteps[at].device.map(|(_, mac)| mac);
            self.vteps[at].device = Some(device::ensure(nl, &spec, published).await?);
        }
        self.onlink = self.onlink_subnets(nl).await?;
        Ok(self.attrs())
    }

    /// The lease attributes: PublicIP with the IPv4 device's VtepMAC in `BackendData` and
    /// PublicIPv6 with the IPv6 device's in `BackendV6Data`, as Go HEAD (an IPv6-only host
    /// publishes PublicIP `0.0.0.0` and no `BackendData`).
    fn attrs(&self) -> LeaseAttrs {
        let data = |vtep: &Vtep| {
            let mac = vtep.device.map(|(_, mac)| mac)?;
            Some(
                VtepData {
                    vni: Some(self.cfg.vni),
                    mac,
                }
                .to_data(),
            )
        };
        let mut attrs = LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, TYPE);
        for vtep in self.vteps() {
            match vtep.local {
                IpAddr::V4(ip) => {
                    attrs.public_ip = ip;
                    attrs.backend_data = data(vtep);
                }
                IpAddr::V6(ip) => {
                    attrs.public_ipv6 = Some(ip);
                    attrs.backend_v6_data = data(vtep);
                }
            }
        }
        attrs
    }

    /// The existing devices, if any, as if this backend had set them up (see
    /// `Backend::attach`).
    pub(crate) async fn attach(
        &mut self,
        nl: &Netlink,
        own: &Lease,
        networks: ClusterNetworks,
    ) -> Result<(), Error> {
        self.ext.refresh(nl).await?;
        for at in 0..self.vteps.len() {
            let family = self.vteps[at].family();
            let data = match family {
                Family::V4 => own.attrs.backend_data.as_ref(),
                Family::V6 => own.attrs.backend_v6_data.as_ref(),
            };
            let published = VtepData::from_data(data).ok().map(|d| d.mac);
            let found = device::lookup(nl, &self.name(family)).await?;
            let vtep = &mut self.vteps[at];
            vtep.device = found.and_then(|link| Some((link.index, published.or(link.mac)?)));
            let want = targets(own, networks, family);
            vtep.configured = want.filter(|_| vtep.device.is_some());
        }
        self.onlink = self.onlink_subnets(nl).await?;
        Ok(())
    }

    /// Gives each device its address for our subnet of its family, sets it up and checks its
    /// MAC.
    pub(crate) async fn configure(
        &mut self,
        nl: &Netlink,
        own: &Lease,
        networks: ClusterNetworks,
    ) -> Result<(), Error> {
        for at in 0..self.vteps.len() {
            let family = self.vteps[at].family();
            let want = targets(own, networks, family).ok_or_else(|| Error::Config {
                key: "Network",
                problem: format!(
                    "the lease {} has no {family} subnet for the network",
                    own.key
                ),
            })?;
            self.vteps[at].configured = None;
            self.configure_vtep(nl, &self.vteps[at], want).await?;
            self.vteps[at].configured = Some(want);
        }
        Ok(())
    }

    async fn configure_vtep(
        &self,
        nl: &Netlink,
        vtep: &Vtep,
        (own, network): (IpNet, IpNet),
    ) -> Result<(), Error> {
        let spec = self.spec(vtep);
        let (index, mac) = vtep
            .device
            .ok_or_else(|| Error::NoInterface(spec.name.clone()))?;
        let want = WantedDevice {
            spec: &spec,
            index,
            mac,
            own,
            network,
        };
        device::configure(nl, &want).await
    }

    pub(crate) async fn drift(&self, nl: &Netlink) -> Result<Vec<Drift>, Error> {
        let mut drift: Vec<Drift> = self.ext.drift(nl).await?.into_iter().collect();
        for vtep in self.vteps() {
            drift.extend(self.vtep_drift(nl, vtep).await?);
        }
        if self.cfg.direct_routing && self.onlink_subnets(nl).await? != self.onlink {
            drift.push(Drift::OnLinkSubnetsChanged {
                iface: self.ext.name.clone(),
            });
        }
        Ok(drift)
    }

    async fn vtep_drift(&self, nl: &Netlink, vtep: &Vtep) -> Result<Vec<Drift>, Error> {
        let name = self.name(vtep.family());
        let (Some((index, mac)), Some((own, network))) = (vtep.device, vtep.configured) else {
            return Ok(vec![Drift::DeviceNotSetUp { name }]);
        };
        let spec = self.spec(vtep);
        let want = WantedDevice {
            spec: &spec,
            index,
            mac,
            own,
            network,
        };
        let device = device::drift(nl, &want).await?.into_iter();
        Ok(device
            .map(|change| Drift::Device {
                name: name.clone(),
                change,
            })
            .collect())
    }

    pub(crate) fn desired<'a>(&self, peers: impl IntoIterator<Item = &'a Lease>) -> DesiredState {
        let vteps = Vteps {
            v4: self.vtep(Family::V4).and_then(Vtep::index),
            v6: self.vtep(Family::V6).and_then(Vtep::index),
        };
        desired(peers, &self.cfg, self.ext.index, vteps, &self.onlink)
    }

    pub(crate) fn reaction(&self, n: &Notification) -> Reaction {
        let names: Vec<(String, Option<u32>)> = self
            .vteps()
            .map(|v| (self.name(v.family()), v.index()))
            .collect();
        let devices: Vec<(&str, Option<u32>)> =
            names.iter().map(|(n, i)| (n.as_str(), *i)).collect();
        react(n, &self.ext, &devices)
    }
}

/// Our subnet and the cluster network of `family`, if the lease and the config have both.
fn targets(own: &Lease, networks: ClusterNetworks, family: Family) -> Option<(IpNet, IpNet)> {
    match family {
        Family::V4 => networks
            .v4
            .filter(|_| own.key.has_ipv4())
            .map(|n| (own.subnet().into(), n.into())),
        Family::V6 => own
            .key
            .ipv6
            .zip(networks.v6)
            .map(|(o, n)| (o.into(), n.into())),
    }
}

/// Deletes every vxlan device named `flannel.<VNI>` or `flannel-v6.<VNI>` (`flanneld cleanup`);
/// returns their names.
pub(crate) async fn remove_devices(nl: &Netlink) -> Result<Vec<String>, Error> {
    let view = nl
        .host_view(None)
        .await
        .map_err(Error::netlink("list links"))?;
    let ours = view.interfaces.iter().filter(|i| {
        (i.name
            .strip_prefix("flannel.")
            .or(i.name.strip_prefix("flannel-v6.")))
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

/// The pure core: what `peers` need, given the devices and the on-link subnets.
fn desired<'a>(
    peers: impl IntoIterator<Item = &'a Lease>,
    cfg: &VxlanConfig,
    ext_index: u32,
    vteps: Vteps,
    onlink: &[IpNet],
) -> DesiredState {
    let mut state = DesiredState {
        vteps,
        ..DesiredState::default()
    };
    for peer in peers {
        if let Err(why) = add_peer(&mut state, peer, cfg, ext_index, onlink) {
            state.skipped.insert(peer.id(), why);
        }
    }
    state
}

/// One half of a peer: its subnet, public address and VTEP of one family.
struct PeerHalf {
    subnet: IpNet,
    public: IpAddr,
    data: Result<VtepData, String>,
}

/// Adds a vxlan peer's objects: its IPv4 half and, on a dual-stack network, its IPv6 half (a
/// peer without one is reached over IPv4 only). An error leaves the whole peer out.
fn add_peer(
    state: &mut DesiredState,
    peer: &Lease,
    cfg: &VxlanConfig,
    ext_index: u32,
    onlink: &[IpNet],
) -> Result<(), String> {
    if peer.attrs.backend_type == crate::kind::HOST_GW {
        return host_gw_peer(state, peer, cfg, ext_index, onlink);
    }
    if peer.attrs.backend_type != TYPE {
        return Err(format!(
            "Ignoring non-vxlan subnet: its BackendType is {:?}",
            peer.attrs.backend_type
        ));
    }
    let v4 = (state.vteps.v4.is_some() && peer.key.has_ipv4()).then(|| PeerHalf {
        subnet: peer.subnet().into(),
        public: peer.attrs.public_ip.into(),
        data: VtepData::from_data(peer.attrs.backend_data.as_ref()),
    });
    let v6 = (peer.key.ipv6.zip(peer.attrs.public_ipv6))
        .filter(|_| state.vteps.v6.is_some())
        .map(|(subnet, public)| PeerHalf {
            subnet: subnet.into(),
            public: public.into(),
            data: VtepData::from_data(peer.attrs.backend_v6_data.as_ref())
                .map_err(|e| e.replace("BackendData", "BackendV6Data")),
        });
    // Both halves are decoded before anything is added: a bad half leaves the whole peer out.
    let mut planned = Vec::new();
    for half in [v4, v6].into_iter().flatten() {
        let data = (half.data.clone()).map_err(|e| format!("Ignoring vxlan subnet: {e}"))?;
        planned.push((half, data.mac));
    }
    for (half, mac) in planned {
        add_half(state, &half, mac, cfg, ext_index, onlink)?;
    }
    Ok(())
}

/// A host-gw peer during a switch ([`crate::mixed`]): a direct route when DirectRouting is on
/// and its public address is on one of our LANs; it has no VTEP to tunnel to.
fn host_gw_peer(
    state: &mut DesiredState,
    peer: &Lease,
    cfg: &VxlanConfig,
    ext_index: u32,
    onlink: &[IpNet],
) -> Result<(), String> {
    if !cfg.direct_routing {
        let why = "DirectRouting is off here (with \"DirectRouting\": true it is routed directly when on this host's LAN)";
        return Err(mixed::unreachable(TYPE, peer, why));
    }
    let families = (state.vteps.v4.is_some(), state.vteps.v6.is_some());
    mixed::add_direct(state, peer, onlink, families, ext_index)
        .map_err(|why| mixed::unreachable(TYPE, peer, why))
}

/// One family's objects for a peer: a direct route when DirectRouting finds its public address
/// on-link, else neighbour, FDB entry and onlink route on the device of that family.
fn add_half(
    state: &mut DesiredState,
    half: &PeerHalf,
    mac: Mac,
    cfg: &VxlanConfig,
    ext_index: u32,
    onlink: &[IpNet],
) -> Result<(), String> {
    if cfg.direct_routing && onlink.iter().any(|n| n.contains(&half.public)) {
        state.add_direct_route(half.subnet, half.public, ext_index);
        return Ok(());
    }
    let family = Family::of(&half.public);
    let vtep = (state.vteps.of(family)).ok_or("the vxlan device is not set up")?;
    let gateway = half.subnet.network();
    state.neighbours.insert(gateway, mac);
    state.fdb.insert(mac, half.public);
    state.routes.insert(
        half.subnet,
        Route {
            dst: half.subnet,
            gateway,
            oif: vtep,
            onlink: true,
            nexthop: None,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use subnet::{BackendData, LeaseEvent, PeerSet, SubnetKey};

    fn peer(subnet: &str, ip: &str, kind: &str, data: Option<Value>) -> LeaseEvent {
        let mut attrs = LeaseAttrs::new(ip.parse().unwrap(), kind);
        attrs.backend_data = data.as_ref().map(BackendData::new);
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

    /// [`peers`] and one more.
    fn peers_and(extra: LeaseEvent) -> PeerSet {
        let mut set = peers();
        set.apply(&extra);
        set
    }

    fn v4_vtep() -> Vteps {
        Vteps {
            v4: Some(9),
            v6: None,
        }
    }

    fn cfg(direct: bool) -> VxlanConfig {
        let mut cfg = VxlanConfig::parse(&json!({})).unwrap();
        cfg.direct_routing = direct;
        cfg
    }

    #[test]
    fn each_vxlan_peer_gets_neighbour_fdb_and_onlink_route() {
        let state = desired(peers().iter(), &cfg(false), 2, v4_vtep(), &[]);
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
        // A host-gw peer (a switch under way) needs DirectRouting to be routed at all.
        let host_gw = &state.skipped[&"10.5.4.0/24".parse().unwrap()];
        assert!(host_gw.starts_with("unreachable") && host_gw.contains("DirectRouting is off"));
        assert!(state.skipped[&"10.5.5.0/24".parse().unwrap()].contains("VtepMAC"));
        let set = peers_and(peer("10.5.6.0/24", "192.168.1.6", "udp", None));
        let state = desired(set.iter(), &cfg(false), 2, v4_vtep(), &[]);
        assert!(state.skipped[&"10.5.6.0/24".parse().unwrap()].contains("non-vxlan"));
    }

    #[test]
    fn with_direct_routing_a_host_gw_peer_on_our_lan_keeps_a_direct_route_one_elsewhere_none() {
        let onlink = ["192.168.1.0/24".parse().unwrap()];
        let state = desired(peers().iter(), &cfg(true), 2, v4_vtep(), &onlink);
        let r4 = state.routes[&"10.5.4.0/24".parse().unwrap()];
        assert_eq!(
            (r4.gateway, r4.onlink),
            ("192.168.1.4".parse().unwrap(), false)
        );
        let set = peers_and(peer("10.5.7.0/24", "172.16.0.7", "host-gw", None));
        let state = desired(set.iter(), &cfg(true), 2, v4_vtep(), &onlink);
        let why = &state.skipped[&"10.5.7.0/24".parse().unwrap()];
        assert!(
            why.starts_with("unreachable") && why.contains("not on a LAN"),
            "{why}"
        );
        assert!(!state.routes.contains_key(&"10.5.7.0/24".parse().unwrap()));
    }

    #[test]
    fn direct_routing_splits_on_link_peers_off() {
        let onlink = ["192.168.1.0/24".parse().unwrap()];
        let state = desired(peers().iter(), &cfg(true), 2, v4_vtep(), &onlink);
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
            desired(peers().iter(), &cfg(false), 2, v4_vtep(), &onlink)
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
            addr: Some("192.168.1.1".parse().unwrap()),
            addr6: None,
            mtu: 1500,
        };
        let ip = ext.addr;
        assert_eq!(
            Vxlan::new(&json!({}), ext.clone(), ip, None).unwrap().mtu(),
            1450
        );
        assert_eq!(
            Vxlan::new(&json!({"MTU": 9000}), ext.clone(), ip, None)
                .unwrap()
                .mtu(),
            8950
        );
        // Over an IPv6 underlay the encapsulation takes 20 bytes more; pods get what fits both.
        let dual = Vxlan::new(&json!({}), ext, ip, Some("fd00::1".parse().unwrap())).unwrap();
        assert_eq!(dual.device_mtu(Family::V6), 1430);
        assert_eq!(dual.mtu(), 1430);
    }

    fn dual_peer(key: &str, ip: &str, ip6: &str, data6: Option<Value>) -> LeaseEvent {
        let mut attrs = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
        let data = json!({"VNI":1,"VtepMAC":"02:00:00:00:04:02"});
        attrs.backend_data = Some(BackendData::new(&data));
        attrs.public_ipv6 = Some(ip6.parse().unwrap());
        attrs.backend_v6_data = data6.as_ref().map(BackendData::new);
        LeaseEvent::Put(Lease {
            key: key.parse().unwrap(),
            attrs,
            expiration: None,
        })
    }

    #[test]
    fn a_dual_stack_peer_is_reached_through_the_device_of_each_family() {
        let mut set = PeerSet::new("10.5.1.0/24".parse().unwrap());
        let mac6 = json!({"VNI":1,"VtepMAC":"02:00:00:00:06:02"});
        set.apply(&dual_peer(
            "10.5.2.0-24&fd00:5:0:2::-64",
            "192.168.1.2",
            "fd00:1::2",
            Some(mac6),
        ));
        set.apply(&dual_peer(
            "10.5.3.0-24&fd00:5:0:3::-64",
            "192.168.1.3",
            "fd00:1::3",
            None,
        ));
        let vteps = Vteps {
            v4: Some(9),
            v6: Some(10),
        };
        let state = desired(set.iter(), &cfg(false), 2, vteps, &[]);
        let routes: Vec<String> = state.routes.values().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            [
                "route 10.5.2.0/24 via 10.5.2.0 dev #9 onlink",
                "route fd00:5:0:2::/64 via fd00:5:0:2:: dev #10 onlink",
            ]
        );
        let m6: Mac = "02:00:00:00:06:02".parse().unwrap();
        assert_eq!(state.fdb.get(&m6), Some(&"fd00:1::2".parse().unwrap()));
        assert_eq!(
            state.neighbours.get(&"fd00:5:0:2::".parse().unwrap()),
            Some(&m6)
        );
        let why = &state.skipped[&"10.5.3.0/24".parse().unwrap()];
        assert!(why.contains("BackendV6Data"), "{why}");
        // DirectRouting: a peer whose PublicIPv6 is on-link gets a plain IPv6 route instead.
        let onlink = ["fd00:1::/64".parse().unwrap()];
        let direct = desired(set.iter(), &cfg(true), 2, vteps, &onlink);
        let r6 = direct.routes[&"fd00:5:0:2::/64".parse().unwrap()];
        assert_eq!(
            (r6.gateway, r6.oif, r6.onlink),
            ("fd00:1::2".parse().unwrap(), 2, false)
        );
        assert!(!direct.fdb.contains_key(&m6));
        // Without the IPv6 device (IPv6 not enabled) only the IPv4 halves are programmed.
        let v4_only = desired(set.iter(), &cfg(false), 2, v4_vtep(), &[]);
        assert_eq!(v4_only.routes.len(), 2);
    }
}
