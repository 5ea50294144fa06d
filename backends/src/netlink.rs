//! The thin rtnetlink adapter: every kernel read and write of the data plane goes through
//! [`Netlink`]. It converts between netlink messages and the plain types of this crate and does
//! no decision making.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

use crate::desired::{Family, Route};
use crate::error::{NetlinkError, ENODEV};
use crate::mac::Mac;
use crate::nexthop::NexthopSocket;
use crate::ROUTE_PROTOCOL;

/// A main-table unicast route (IPv4 or IPv6) as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
    pub priority: u32,
    pub tos: u8,
    /// The nexthop object the route points to (`nhid`); the kernel reports its gateway and
    /// device as the route's too.
    pub nh_id: Option<u32>,
}

/// The metric the kernel gives a route added without one: 0 for IPv4, 1024 for IPv6
/// (`IP6_RT_PRIO_USER`), as `ip route add` and Go flanneld leave it.
pub(crate) fn default_priority(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

impl KernelRoute {
    /// How the kernel reports `route` once we installed it (tagged ours, default metric, tos 0).
    pub fn ours(route: &Route) -> KernelRoute {
        KernelRoute {
            dst: route.dst,
            gateway: Some(route.gateway),
            oif: Some(route.oif),
            onlink: route.onlink,
            protocol: ROUTE_PROTOCOL,
            priority: default_priority(&route.dst),
            tos: 0,
            nh_id: route.nexthop,
        }
    }

    /// Whether the route has the key ours have (default metric, tos 0): only such a route
    /// collides with one of ours to the same destination.
    pub fn has_our_key(&self) -> bool {
        self.priority == default_priority(&self.dst) && self.tos == 0
    }

    /// Whether the route carries our protocol tag.
    pub fn is_ours(&self) -> bool {
        self.protocol == ROUTE_PROTOCOL
    }

    /// Whether the route is exactly `route`: destination and next hop, device and onlink, or
    /// destination and nexthop object (whose own next hop is checked as an object of its own;
    /// with `net.ipv4.nexthop_compat_mode=0` the kernel reports no gateway for such a route).
    pub fn matches(&self, route: &Route) -> bool {
        self.dst == route.dst
            && self.nh_id == route.nexthop
            && (route.nexthop.is_some() || self.same_next_hop(route))
    }

    /// Whether an untagged route leads where `route` does (destination, next hop, device,
    /// onlink), as Go flanneld's do: it is adopted, in either route style.
    pub fn adoptable(&self, route: &Route) -> bool {
        self.dst == route.dst && self.same_next_hop(route)
    }

    fn same_next_hop(&self, route: &Route) -> bool {
        self.gateway == Some(route.gateway)
            && self.oif == Some(route.oif)
            && self.onlink == route.onlink
    }
}

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub up: bool,
    pub vxlan: Option<VxlanAttrs>,
}

/// The vxlan attributes of a link that decide whether it can be reused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct VxlanAttrs {
    pub vni: Option<u32>,
    pub link: Option<u32>,
    pub local: Option<IpAddr>,
    pub group: Option<IpAddr>,
    pub port: Option<u16>,
    pub gbp: bool,
    pub l2miss: bool,
}

/// What a new vxlan device looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: IpAddr,
    pub dev: u32,
    /// UDP port; 0 leaves the kernel default (8472).
    pub port: u16,
    pub gbp: bool,
    pub learning: bool,
    pub mtu: u32,
}

/// A handle on the kernel's routing netlink socket (cheap to clone).
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
    nexthops: NexthopSocket,
}

impl Netlink {
    /// Opens a netlink connection in the calling thread's network namespace and spawns its
    /// driver task on the current tokio runtime (so call it from inside the runtime).
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let nexthops = NexthopSocket::connect()?;
        Ok(Netlink { handle, nexthops })
    }

    /// The connection for nexthop objects.
    pub(crate) fn nexthop_socket(&self) -> &NexthopSocket {
        &self.nexthops
    }

    /// The rtnetlink handle, for the other kernel readers of this crate.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// A connection for one dump, closed when the returned guard drops: netlink-proto keeps
    /// the queue a dump of thousands of objects grew to for the life of its connection.
    fn dump_connection() -> Result<(Handle, DumpConnection), NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok((handle, DumpConnection(tokio::spawn(conn))))
    }

    /// All main-table unicast routes of `family`.
    pub(crate) async fn routes(&self, family: Family) -> Result<Vec<KernelRoute>, NetlinkError> {
        Self::dump_routes(family, kernel_route).await
    }

    /// The main table's blackhole routes of `family`: destination and protocol.
    pub(crate) async fn blackholes(
        &self,
        family: Family,
    ) -> Result<Vec<(IpNet, u8)>, NetlinkError> {
        Self::dump_routes(family, |m| {
            let blackhole = (m.header.kind == RouteType::BlackHole).then(|| main_table_route(m));
            blackhole.flatten().map(|r| (r.dst, r.protocol))
        })
        .await
    }

    /// Dumps the routes of `family` on a connection of its own, converting each as it arrives
    /// (thousands of full messages are never held at once) and keeping what `convert` keeps.
    async fn dump_routes<T>(
        family: Family,
        convert: impl Fn(&RouteMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = address_family(family);
        let (handle, _conn) = Self::dump_connection()?;
        let routes = handle
            .route()
            .get(req)
            .execute()
            .try_filter_map(|m| std::future::ready(Ok(convert(&m))))
            .try_collect()
            .await?;
        Ok(routes)
    }

    /// Adds `blackhole <dst>` tagged ours (fails if a route with its key exists).
    pub(crate) async fn add_blackhole(&self, dst: IpNet) -> Result<(), NetlinkError> {
        let msg = blackhole_message(dst, RouteScope::Universe);
        Ok(self.handle.route().add(msg).execute().await?)
    }

    /// Deletes our `blackhole <dst>`.
    pub(crate) async fn del_blackhole(&self, dst: IpNet) -> Result<(), NetlinkError> {
        let msg = blackhole_message(dst, RouteScope::NoWhere);
        Ok(self.handle.route().del(msg).execute().await?)
    }

    /// Adds (`replace == false`: create, fail if it exists) or replaces a route, tagged ours.
    pub(crate) async fn set_route(&self, route: &Route, replace: bool) -> Result<(), NetlinkError> {
        let mut msg = route_message(route.dst, ROUTE_PROTOCOL);
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        if let Some(id) = route.nexthop {
            // The kernel takes a nexthop id or a next hop, never both.
            msg.attributes.push(RouteAttribute::NhId(id));
        } else {
            if route.onlink {
                msg.header.flags |= RouteFlags::Onlink;
            }
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(route.gateway)));
            msg.attributes.push(RouteAttribute::Oif(route.oif));
        }
        let req = self.handle.route().add(msg);
        let req = if replace { req.replace() } else { req };
        Ok(req.execute().await?)
    }

    /// Deletes a route we own (matched on destination, next hop, device and our tag).
    pub(crate) async fn del_route(&self, route: &KernelRoute) -> Result<(), NetlinkError> {
        let mut msg = route_message(route.dst, route.protocol);
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        msg.header.tos = route.tos;
        if let Some(id) = route.nh_id {
            // A route through a nexthop object matches a delete only by that id.
            msg.attributes.push(RouteAttribute::NhId(id));
        } else {
            if let Some(gw) = route.gateway {
                msg.attributes
                    .push(RouteAttribute::Gateway(route_address(gw)));
            }
            if let Some(oif) = route.oif {
                msg.attributes.push(RouteAttribute::Oif(oif));
            }
        }
        if route.priority != 0 {
            msg.attributes
                .push(RouteAttribute::Priority(route.priority));
        }
        Ok(self.handle.route().del(msg).execute().await?)
    }

    /// The permanent neighbours of `family` on `link`.
    pub(crate) async fn neighbours(
        &self,
        link: u32,
        family: Family,
    ) -> Result<Vec<(IpAddr, Mac)>, NetlinkError> {
        self.permanent(link, address_family(family)).await
    }

    /// The permanent entries of `family`'s neighbour table on `link` with a destination address,
    /// as (destination, MAC) pairs, converted as they arrive.
    async fn permanent(
        &self,
        link: u32,
        family: AddressFamily,
    ) -> Result<Vec<(IpAddr, Mac)>, NetlinkError> {
        let (handle, _conn) = Self::dump_connection()?;
        let found = handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_filter_map(|m| {
                let ours = m.header.ifindex == link && is_permanent(&m);
                std::future::ready(Ok(ours
                    .then(|| Some((neighbour_ip(&m)?, neighbour_mac(&m)?)))
                    .flatten()))
            })
            .try_collect()
            .await?;
        Ok(found)
    }

    /// Sets (creates or replaces) the permanent neighbour `ip lladdr mac` on `link`.
    pub(crate) async fn set_neighbour(
        &self,
        link: u32,
        ip: IpAddr,
        mac: Mac,
    ) -> Result<(), NetlinkError> {
        Ok(self
            .handle
            .neighbours()
            .add(link, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await?)
    }

    /// Deletes the neighbour `ip` on `link`.
    pub(crate) async fn del_neighbour(&self, link: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = address_family(Family::of(&ip));
        msg.header.ifindex = link;
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        Ok(self.handle.neighbours().del(msg).execute().await?)
    }

    /// The permanent FDB entries with a remote on `link`, as (MAC, remote) pairs.
    pub(crate) async fn fdb(&self, link: u32) -> Result<Vec<(Mac, IpAddr)>, NetlinkError> {
        let found = self.permanent(link, AddressFamily::Bridge).await?;
        Ok(found
            .into_iter()
            .map(|(remote, mac)| (mac, remote))
            .collect())
    }

    /// Sets (creates or replaces) the FDB entry `mac dst <remote> self permanent` on `link`.
    pub(crate) async fn set_fdb(
        &self,
        link: u32,
        mac: Mac,
        remote: IpAddr,
    ) -> Result<(), NetlinkError> {
        Ok(self
            .handle
            .neighbours()
            .add_bridge(link, &mac.0)
            .destination(remote)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await?)
    }

    /// Deletes the FDB entry `mac dst <remote> self` on `link`.
    pub(crate) async fn del_fdb(
        &self,
        link: u32,
        mac: Mac,
        remote: IpAddr,
    ) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = link;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(remote)));
        Ok(self.handle.neighbours().del(msg).execute().await?)
    }

    /// The link called `name`, if it exists.
    pub(crate) async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let found: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await;
        match found {
            Ok(msgs) => Ok(msgs.first().map(link_from_message)),
            Err(e) => {
                let e = NetlinkError::from(e);
                if e.errno == Some(ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a vxlan device as `spec` says, with MAC `mac`, left down.
    pub(crate) async fn create_vxlan(
        &self,
        spec: &VxlanSpec,
        mac: Mac,
    ) -> Result<(), NetlinkError> {
        let builder = LinkVxlan::new(&spec.name, spec.vni).dev(spec.dev);
        let mut builder = match spec.local {
            IpAddr::V4(local) => builder.local(local),
            IpAddr::V6(local) => builder.local6(local),
        }
        .learning(spec.learning)
        .mtu(spec.mtu)
        .address(mac.0.to_vec());
        if spec.port > 0 {
            builder = builder.port(spec.port);
        }
        if spec.gbp {
            builder = builder.gbp();
        }
        Ok(self.handle.link().add(builder.build()).execute().await?)
    }

    /// Deletes link `index`.
    pub(crate) async fn del_link(&self, index: u32) -> Result<(), NetlinkError> {
        Ok(self.handle.link().del(index).execute().await?)
    }

    /// Changes the MTU of link `index`.
    pub(crate) async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        Ok(self.handle.link().set(msg).execute().await?)
    }

    /// Changes the MAC of link `index`.
    pub(crate) async fn set_mac(&self, index: u32, mac: Mac) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.0.to_vec())
            .build();
        Ok(self.handle.link().set(msg).execute().await?)
    }

    /// Sets link `index` up.
    pub(crate) async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        Ok(self.handle.link().set(msg).execute().await?)
    }

    /// The addresses (IPv4 and IPv6) on link `index`.
    pub(crate) async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(any_address_of)
            .collect())
    }

    /// The networks this host is directly connected to: those of its IPv4 and IPv6 addresses
    /// of global or link scope (loopback's host-scope addresses are not a network a peer could
    /// be on).
    pub async fn connected_networks(&self) -> Result<Vec<IpNet>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self.handle.address().get().execute().try_collect().await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.scope != AddressScope::Host)
            .filter_map(any_address_of)
            .map(|a| a.trunc())
            .collect())
    }

    /// Adds address `addr` to link `index` (an IPv6 one without duplicate address detection,
    /// so it is usable at once rather than tentative).
    pub(crate) async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        Ok(req.execute().await?)
    }

    /// Removes address `addr` from link `index`.
    pub(crate) async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = address_family(Family::of(&addr.addr()));
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        if addr.addr().is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr.addr()));
        }
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        Ok(self.handle.address().del(msg).execute().await?)
    }
}

/// The driver task of a dump's own connection; stopped on drop.
struct DumpConnection(tokio::task::JoinHandle<()>);

impl Drop for DumpConnection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The netlink address family of a [`Family`].
fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(ip) => RouteAddress::Inet(ip),
        IpAddr::V6(ip) => RouteAddress::Inet6(ip),
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
        IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
    }
}

/// A route message for `dst` in the main table with `protocol`.
fn route_message(dst: IpNet, protocol: u8) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(Family::of_net(&dst));
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(protocol);
    msg.attributes
        .push(RouteAttribute::Destination(route_address(dst.network())));
    msg
}

/// Converts a dumped route; `None` unless it is a main-table IPv4 or IPv6 unicast route.
pub(crate) fn kernel_route(msg: &RouteMessage) -> Option<KernelRoute> {
    main_table_route(msg).filter(|_| msg.header.kind == RouteType::Unicast)
}

/// Our `blackhole <dst>` route with `scope` (universe to add, nowhere to delete any scope).
fn blackhole_message(dst: IpNet, scope: RouteScope) -> RouteMessage {
    let mut msg = route_message(dst, ROUTE_PROTOCOL);
    msg.header.scope = scope;
    msg.header.kind = RouteType::BlackHole;
    msg
}

/// Converts a dumped main-table IPv4 or IPv6 route of any type; `None` for other tables.
pub(crate) fn main_table_route(msg: &RouteMessage) -> Option<KernelRoute> {
    let h = &msg.header;
    let mut table = u32::from(h.table);
    let mut dst = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut gateway = None;
    let mut oif = None;
    let mut priority = 0;
    let mut nh_id = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = IpAddr::V4(*a),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = IpAddr::V6(*a),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => priority = *p,
            RouteAttribute::NhId(id) => nh_id = Some(*id),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(KernelRoute {
        dst: IpNet::new(dst, h.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: h.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(h.protocol),
        priority,
        tos: h.tos,
        nh_id,
    })
}

/// NDA_DST: parsed for AF_INET and AF_INET6, raw bytes (4 or 16) for AF_BRIDGE.
fn neighbour_ip(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => match raw.len() {
            4 => <[u8; 4]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

/// Whether the NUD state (a bit mask, e.g. `PERMANENT|NOARP` from `bridge fdb ... permanent`)
/// includes NUD_PERMANENT.
fn is_permanent(msg: &NeighbourMessage) -> bool {
    const NUD_PERMANENT: u16 = 0x80;
    u16::from(msg.header.state) & NUD_PERMANENT != 0
}

fn neighbour_mac(msg: &NeighbourMessage) -> Option<Mac> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(raw) => Mac::from_bytes(raw),
        _ => None,
    })
}

/// The address of an address message (IFA_LOCAL, else IFA_ADDRESS) with its prefix length.
fn any_address_of(msg: &AddressMessage) -> Option<IpNet> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
}

/// Converts a link message (from a dump or a notification).
pub(crate) fn link_from_message(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        vxlan: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(raw) => link.mac = Mac::from_bytes(raw),
            LinkAttribute::LinkInfo(infos) => link.vxlan = vxlan_attrs(infos),
            _ => {}
        }
    }
    link
}

/// The name of a link message, if it carries one.
pub(crate) fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn vxlan_attrs(infos: &[LinkInfo]) -> Option<VxlanAttrs> {
    if !infos.contains(&LinkInfo::Kind(InfoKind::Vxlan)) {
        return None;
    }
    let mut attrs = VxlanAttrs::default();
    for info in infos {
        if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
            for d in data {
                match d {
                    InfoVxlan::Id(v) => attrs.vni = Some(*v),
                    InfoVxlan::Link(v) => attrs.link = Some(*v),
                    InfoVxlan::Local(v) => attrs.local = Some(IpAddr::V4(*v)),
                    InfoVxlan::Local6(v) => attrs.local = Some(IpAddr::V6(*v)),
                    InfoVxlan::Group(v) => attrs.group = Some(IpAddr::V4(*v)),
                    InfoVxlan::Group6(v) => attrs.group = Some(IpAddr::V6(*v)),
                    InfoVxlan::Port(v) => attrs.port = Some(*v),
                    InfoVxlan::Gbp => attrs.gbp = true,
                    InfoVxlan::L2Miss(v) => attrs.l2miss = *v,
                    _ => {}
                }
            }
        }
    }
    Some(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(table: u8, kind: RouteType, protocol: u8) -> RouteMessage {
        let mut msg = route_message("10.5.2.0/24".parse().unwrap(), protocol);
        msg.header.table = table;
        msg.header.kind = kind;
        msg.header.flags = RouteFlags::Onlink;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 5, 2, 0,
            ))));
        msg.attributes.push(RouteAttribute::Oif(9));
        msg
    }

    #[test]
    fn only_main_table_unicast_routes_are_read() {
        let k = kernel_route(&route(
            RouteHeader::RT_TABLE_MAIN,
            RouteType::Unicast,
            ROUTE_PROTOCOL,
        ))
        .unwrap();
        assert!(k.is_ours() && k.onlink);
        let mut wanted = Route {
            dst: "10.5.2.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 5, 2, 0).into(),
            oif: 9,
            onlink: true,
            nexthop: None,
        };
        assert!(k.matches(&wanted));
        wanted.nexthop = Some(7);
        assert!(
            !k.matches(&wanted),
            "a classic route is not one through a nexthop object"
        );
        assert!(k.adoptable(&wanted));
        assert!(
            !kernel_route(&route(RouteHeader::RT_TABLE_MAIN, RouteType::Unicast, 3))
                .unwrap()
                .is_ours()
        );
        assert_eq!(
            kernel_route(&route(255, RouteType::Unicast, ROUTE_PROTOCOL)),
            None
        );
        assert_eq!(
            kernel_route(&route(
                RouteHeader::RT_TABLE_MAIN,
                RouteType::BlackHole,
                ROUTE_PROTOCOL
            )),
            None
        );
    }
}
