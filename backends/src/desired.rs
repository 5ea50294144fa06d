//! The kernel objects the data plane wants, computed purely from the peer leases. One state holds
//! both address families: IPv4 and IPv6 routes side by side, and on a dual-stack vxlan network
//! the neighbours and FDB entries of both devices (`flannel.<VNI>` and `flannel-v6.<VNI>`), each
//! on the device of its address's family.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::mac::Mac;

/// An address family the data plane programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A route in the main table, installed with [`crate::ROUTE_PROTOCOL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The peer subnet.
    pub dst: IpNet,
    /// The next hop: the peer's public address (host-gw, direct routing) or its subnet's
    /// network address (vxlan); of the family of `dst`.
    pub gateway: IpAddr,
    /// The output interface index.
    pub oif: u32,
    /// Whether the next hop is declared on-link (vxlan routes).
    pub onlink: bool,
    /// With [`RouteStyle::Nexthop`]: the nexthop object (in [`DesiredState::nexthops`]) the
    /// route points to instead of carrying `gateway`, `oif` and `onlink` itself.
    pub nexthop: Option<u32>,
}

/// How peer routes are installed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RouteStyle {
    /// `<subnet> via <gateway> dev <oif>`, like Go flanneld.
    #[default]
    Classic,
    /// IPv4 routes point to a nexthop object per gateway (`<subnet> nhid <id>`): the kernel
    /// then inserts them in linear time (classic IPv4 routes through one device share a
    /// `fib_info` hash bucket, which makes inserting N of them O(N²)). IPv6 routes stay classic.
    Nexthop,
}

/// A nexthop object (`ip nexthop`), tagged [`crate::ROUTE_PROTOCOL`]. Its id is its IPv4
/// gateway address as a number, so it is the same on every run and readable in `ip route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nexthop {
    /// The id routes refer to (`nhid`).
    pub id: u32,
    /// The next hop.
    pub gateway: IpAddr,
    /// The output interface index.
    pub oif: u32,
    /// Whether the next hop is declared on-link.
    pub onlink: bool,
}

impl Nexthop {
    /// The nexthop object for a classic IPv4 route's next hop; `None` for IPv6, and for
    /// 0.0.0.0, whose id would be 0 (which asks the kernel to choose one).
    pub fn for_route(route: &Route) -> Option<Nexthop> {
        match route.gateway {
            IpAddr::V4(v4) if !v4.is_unspecified() => Some(Nexthop {
                id: u32::from(v4),
                gateway: route.gateway,
                oif: route.oif,
                onlink: route.onlink,
            }),
            IpAddr::V4(_) | IpAddr::V6(_) => None,
        }
    }
}

impl fmt::Display for Nexthop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nexthop id {} via {} dev #{}",
            self.id, self.gateway, self.oif
        )?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {} via {} dev #{}",
            self.dst, self.gateway, self.oif
        )?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if let Some(id) = self.nexthop {
            write!(f, " nhid {id}")?;
        }
        Ok(())
    }
}

/// The vxlan devices whose neighbours and FDB entries we own, one per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vteps {
    /// `flannel.<VNI>` (IPv4 overlay, IPv4 underlay).
    pub v4: Option<u32>,
    /// `flannel-v6.<VNI>` (IPv6 overlay, IPv6 underlay).
    pub v6: Option<u32>,
}

impl Vteps {
    /// The device of a family.
    pub fn of(&self, family: Family) -> Option<u32> {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    /// The devices, with their family.
    pub fn iter(&self) -> impl Iterator<Item = (Family, u32)> {
        let v4 = self.v4.map(|link| (Family::V4, link));
        let v6 = self.v6.map(|link| (Family::V6, link));
        v4.into_iter().chain(v6)
    }

    /// Whether `oif` is one of the devices.
    pub fn contains(&self, oif: Option<u32>) -> bool {
        oif.is_some() && (oif == self.v4 || oif == self.v6)
    }
}

/// Everything the reconciler should make the kernel hold.
///
/// Ownership: routes carrying [`crate::ROUTE_PROTOCOL`] are ours inside `networks`; permanent
/// neighbours and FDB entries (with a remote, non-zero MAC) are ours only on the `vteps`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Routes by destination.
    pub routes: BTreeMap<IpNet, Route>,
    /// Permanent neighbours: peer subnet network address to VTEP MAC, on the vtep of the
    /// address's family.
    pub neighbours: BTreeMap<IpAddr, Mac>,
    /// Permanent FDB entries: VTEP MAC to the peer's public address, on the vtep of the
    /// remote's family.
    pub fdb: BTreeMap<Mac, IpAddr>,
    /// The nexthop objects the routes point to, by id ([`RouteStyle::Nexthop`]; empty
    /// otherwise).
    pub nexthops: BTreeMap<u32, Nexthop>,
    /// The vxlan devices; none for host-gw.
    pub vteps: Vteps,
    /// Peers left out on purpose, by [`subnet::Lease::id`], with the reason (logged once by
    /// the reconciler).
    pub skipped: BTreeMap<IpNet, String>,
    /// The cluster networks (IPv4, and IPv6 on a dual-stack network). Tagged routes outside them
    /// belong to another flanneld-rs instance (another etcd prefix on the same host) and are
    /// left alone; empty manages all tagged routes.
    pub networks: Vec<IpNet>,
}

impl DesiredState {
    /// Adds the route `<peer subnet> via <peer public address> dev <oif>` used by host-gw and by
    /// vxlan DirectRouting for on-link peers.
    pub fn add_direct_route(&mut self, subnet: IpNet, public_ip: IpAddr, oif: u32) {
        self.routes.insert(
            subnet,
            Route {
                dst: subnet,
                gateway: public_ip,
                oif,
                onlink: false,
                nexthop: None,
            },
        );
    }

    /// Makes the IPv4 routes point to nexthop objects with [`RouteStyle::Nexthop`]. Routes that
    /// share a next hop share its object; a route whose gateway already names an object with
    /// another device or onlink flag (two peers' leases claiming one address) stays classic.
    pub fn with_route_style(mut self, style: RouteStyle) -> DesiredState {
        if style == RouteStyle::Classic {
            return self;
        }
        for route in self.routes.values_mut() {
            let Some(nexthop) = Nexthop::for_route(route) else {
                continue;
            };
            let taken = self.nexthops.entry(nexthop.id).or_insert(nexthop);
            if *taken == nexthop {
                route.nexthop = Some(nexthop.id);
            }
        }
        self
    }

    /// The families whose routes the reconciler must list: IPv4 always, IPv6 when the state
    /// has an IPv6 network, device or route, or no networks at all (it then owns every tagged
    /// route).
    pub fn families(&self) -> Vec<Family> {
        let v6 = self.networks.is_empty()
            || self.vteps.v6.is_some()
            || self
                .networks
                .iter()
                .any(|n| Family::of_net(n) == Family::V6)
            || self.routes.keys().any(|d| Family::of_net(d) == Family::V6);
        if v6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// Whether a tagged route to `dst` through `oif` is in this state's scope: inside one of its
    /// networks (all when there are none), or through one of its vxlan devices.
    pub fn owns_route(&self, dst: &IpNet, oif: Option<u32>) -> bool {
        self.networks.is_empty()
            || self.networks.iter().any(|n| n.contains(dst))
            || self.vteps.contains(oif)
    }
}
