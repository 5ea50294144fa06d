//! What the host looks like for interface selection (`flanneld`'s `--iface` logic): its links with
//! their IPv4 addresses in order of preference, the default route's interface, and the route the
//! kernel would take to an address. Read through rtnetlink like every other kernel state.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressScope,
};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::RouteMessageBuilder;

use crate::error::NetlinkError;
use crate::netlink::Netlink;

/// One host interface with its IPv4 addresses, most preferred first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInterface {
    /// Interface name.
    pub name: String,
    /// Kernel interface index.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
    /// IPv4 addresses: global before link-local, permanent before dynamic.
    pub addrs: Vec<Ipv4Addr>,
    /// Global IPv6 addresses (no link-local ones), permanent before dynamic.
    pub addrs6: Vec<Ipv6Addr>,
    /// The index of the bridge (or other controller) it is a port of, if any.
    pub master: Option<u32>,
}

/// What the host looks like for interface selection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    /// All interfaces.
    pub interfaces: Vec<HostInterface>,
    /// The interface index of the first IPv4 default route in the main table.
    pub default_route_index: Option<u32>,
    /// The interface index of the first IPv6 default route in the main table, once read with
    /// [`Netlink::default_route6_index`] (`None` from [`Netlink::host_view`]).
    pub default_route6_index: Option<u32>,
    /// For `--iface-can-reach`: the interface index and source address the kernel would use.
    pub can_reach: Option<(u32, Option<IpAddr>)>,
}

/// A main-table route, as `flanneld doctor` looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRoute {
    /// The destination.
    pub dst: ipnet::Ipv4Net,
    /// Whether it carries our tag ([`crate::ROUTE_PROTOCOL`]).
    pub ours: bool,
}

impl Netlink {
    /// Every main-table IPv4 unicast route, with whether it is ours.
    pub async fn host_routes(&self) -> Result<Vec<HostRoute>, NetlinkError> {
        let routes = self.routes(crate::Family::V4).await?;
        Ok(routes
            .iter()
            .filter_map(|r| match r.dst {
                ipnet::IpNet::V4(dst) => Some(HostRoute {
                    dst,
                    ours: r.protocol == crate::ROUTE_PROTOCOL,
                }),
                ipnet::IpNet::V6(_) => None,
            })
            .collect())
    }

    /// Reads links, addresses, the IPv4 default route and (for `--iface-can-reach`) the route
    /// the kernel would take to `can_reach`.
    pub async fn host_view(&self, can_reach: Option<IpAddr>) -> Result<HostView, NetlinkError> {
        let mut interfaces = self.interfaces().await?;
        self.add_addresses(&mut interfaces).await?;
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let default_route_index = self.default_route_index(v4).await?;
        let can_reach = match can_reach {
            None => None,
            Some(dst) => self.route_to(dst).await?,
        };
        Ok(HostView {
            interfaces,
            default_route_index,
            default_route6_index: None,
            can_reach,
        })
    }

    /// Every link, with its name and MTU and no addresses yet.
    async fn interfaces(&self) -> Result<Vec<HostInterface>, NetlinkError> {
        let mut interfaces = Vec::new();
        let mut links = self.handle().link().get().execute();
        while let Some(msg) = links.try_next().await? {
            let mut iface = HostInterface {
                name: String::new(),
                index: msg.header.index,
                mtu: 0,
                addrs: Vec::new(),
                addrs6: Vec::new(),
                master: None,
            };
            for attr in msg.attributes {
                match attr {
                    LinkAttribute::IfName(n) => iface.name = n,
                    LinkAttribute::Mtu(m) => iface.mtu = m,
                    LinkAttribute::Controller(index) => iface.master = Some(index),
                    _ => {}
                }
            }
            interfaces.push(iface);
        }
        Ok(interfaces)
    }

    /// Adds each link's addresses: IPv4 global before link-local, IPv6 global only; permanent
    /// before dynamic.
    async fn add_addresses(&self, interfaces: &mut [HostInterface]) -> Result<(), NetlinkError> {
        let mut ranked: Vec<(u32, (u8, u8), IpAddr)> = Vec::new();
        let mut addrs = self.handle().address().get().execute();
        while let Some(msg) = addrs.try_next().await? {
            let mut permanent = msg.header.flags.contains(AddressHeaderFlags::Permanent);
            let (mut local, mut address) = (None, None);
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Address(a) => address = Some(*a),
                    AddressAttribute::Flags(f) => permanent = f.contains(AddressFlags::Permanent),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                let scope_rank = match msg.header.scope {
                    AddressScope::Universe => 0,
                    AddressScope::Link => 1,
                    _ => 2,
                };
                ranked.push((msg.header.index, (scope_rank, u8::from(!permanent)), ip));
            }
        }
        ranked.sort_by_key(|(_, rank, _)| *rank);
        for (index, (scope_rank, _), ip) in ranked {
            let Some(i) = interfaces.iter_mut().find(|i| i.index == index) else {
                continue;
            };
            match ip {
                IpAddr::V4(ip) => i.addrs.push(ip),
                IpAddr::V6(ip) if scope_rank == 0 => i.addrs6.push(ip),
                IpAddr::V6(_) => {}
            }
        }
        Ok(())
    }

    /// The output interface of the first IPv6 default route in the main table (a dump of the
    /// IPv6 routes, read only where an IPv6-only network needs it).
    pub async fn default_route6_index(&self) -> Result<Option<u32>, NetlinkError> {
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
        self.default_route_index(v6).await
    }

    /// The output interface of the first default route of `family`'s dump in the main table.
    async fn default_route_index(&self, family: RouteMessage) -> Result<Option<u32>, NetlinkError> {
        let mut routes = (self.handle().route()).get(family).execute();
        // The whole dump is read (not dropped half way on the shared connection).
        let mut first = None;
        while let Some(msg) = routes.try_next().await? {
            let main = msg.header.table == libc::RT_TABLE_MAIN
                || msg.attributes.iter().any(
                    |a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(libc::RT_TABLE_MAIN)),
                );
            if first.is_none() && main && msg.header.destination_prefix_length == 0 {
                first = oif(&msg);
            }
        }
        Ok(first)
    }

    /// The interface and source address of the route the kernel would take to `dst`.
    async fn route_to(&self, dst: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, NetlinkError> {
        let msg = match dst {
            IpAddr::V4(dst) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst, 32)
                .build(),
            IpAddr::V6(dst) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst, 128)
                .build(),
        };
        let mut stream = self.handle().route().get(msg).execute();
        Ok(stream.try_next().await?.and_then(|r| {
            let src = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::PrefSource(RouteAddress::Inet(s)) => Some(IpAddr::V4(*s)),
                RouteAttribute::PrefSource(RouteAddress::Inet6(s)) => Some(IpAddr::V6(*s)),
                _ => None,
            });
            Some((oif(&r)?, src))
        }))
    }
}

/// A route message's output interface.
fn oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}
