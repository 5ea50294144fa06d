//! The kernel objects the data plane wants, computed purely from the peer leases.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::mac::Mac;

/// An IPv4 route in the main table, installed with [`crate::ROUTE_PROTOCOL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The peer subnet.
    pub dst: Ipv4Net,
    /// The next hop: the peer's PublicIP (host-gw, direct routing) or its subnet's `.0` (vxlan).
    pub gateway: Ipv4Addr,
    /// The output interface index.
    pub oif: u32,
    /// Whether the next hop is declared on-link (vxlan routes).
    pub onlink: bool,
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
        Ok(())
    }
}

/// Everything the reconciler should make the kernel hold.
///
/// Ownership: routes carrying [`crate::ROUTE_PROTOCOL`] are ours inside `network`; permanent
/// neighbours and FDB entries (with a remote, non-zero MAC) are ours only on `vtep`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Routes by destination.
    pub routes: BTreeMap<Ipv4Net, Route>,
    /// Permanent ARP entries on `vtep`: peer subnet `.0` address to VTEP MAC.
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// Permanent FDB entries on `vtep`: VTEP MAC to the peer's PublicIP.
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
    /// The vxlan device whose neighbours and FDB entries we own; `None` for host-gw.
    pub vtep: Option<u32>,
    /// Peers left out on purpose, with the reason (logged once by the reconciler).
    pub skipped: BTreeMap<Ipv4Net, String>,
    /// The cluster network. Tagged routes outside it belong to another flanneld-rs instance
    /// (another etcd prefix on the same host) and are left alone; `None` manages all tagged
    /// routes.
    pub network: Option<Ipv4Net>,
}

impl DesiredState {
    /// Adds the route `<peer subnet> via <peer PublicIP> dev <oif>` used by host-gw and by vxlan
    /// DirectRouting for on-link peers.
    pub fn add_direct_route(&mut self, subnet: Ipv4Net, public_ip: Ipv4Addr, oif: u32) {
        self.routes.insert(
            subnet,
            Route {
                dst: subnet,
                gateway: public_ip,
                oif,
                onlink: false,
            },
        );
    }
}
