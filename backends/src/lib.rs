//! The flanneld data plane: the host-gw and vxlan backends turn the peer leases into a
//! [`DesiredState`] of kernel objects, and the [`Reconciler`] makes the kernel match it through a
//! thin rtnetlink adapter ([`Netlink`]). [`Notifications`] tell the daemon when the kernel
//! changed under us.
//!
//! How the daemon drives it (all on one tokio current-thread runtime):
//! 1. [`Backend::new`] with the `Backend` config, the external interface and the public IP
//!    (fatal on error: unknown type, bad vxlan key, host-gw behind NAT).
//! 2. [`Backend::init`] (vxlan: creates or reuses `flannel.<VNI>`) returns the [`LeaseAttrs`] to
//!    publish; then acquire the lease with them (fatal on error).
//! 3. [`Backend::configure`] with the own lease (vxlan: address `<subnet>.0/32`, link up, MAC
//!    verified; fatal at startup). [`Backend::mtu`] is FLANNEL_MTU for subnet.env.
//! 4. On every lease event, every 10 s and on [`Notifications`]:
//!    [`Reconciler::reconcile`]`(&backend.desired(&peers))`. When [`Backend::reaction`] says
//!    [`Reaction::Setup`] and [`Backend::drift`] finds a difference, run `init` + `configure`
//!    again first (errors: log and retry later; republish the lease if the returned attrs differ
//!    from the published ones).

mod blackhole;
mod desired;
mod drift;
mod error;
mod host;
mod hostgw;
mod kind;
mod mac;
mod mixed;
mod netlink;
mod nexthop;
mod notify;
mod reconcile;
mod sockfilter;
mod vxlan;

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use subnet::{BackendConfig, Lease, LeaseAttrs, PeerSet};

pub use blackhole::ensure_blackholes;
pub use desired::{DesiredState, Family, Nexthop, Route, RouteStyle, Vteps};
pub use drift::{DeviceChange, Drift, Mismatch};
pub use error::{Error, NetlinkError};
pub use host::{HostInterface, HostRoute, HostView};
pub use mac::{BadMac, Mac};
pub use netlink::Netlink;
pub use notify::{Notification, Notifications, Reaction};
pub use reconcile::{Change, ObjectError, ObjectKind, PlannedChange, Preview, Reconciler, Report};

use hostgw::HostGw;
use vxlan::Vxlan;

/// The route protocol (`rtm_protocol`) of every route flanneld-rs installs: `ip route` shows
/// `proto 70`. Unused by iproute2's `rt_protos` and the kernel's `RTPROT_*` values. Routes with
/// this tag in the main table are owned by the reconciler and deleted when no lease wants them.
pub const ROUTE_PROTOCOL: u8 = 70;

/// The interface flanneld sends peer traffic through, as chosen by the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalInterface {
    /// Interface name, e.g. `eth0`; used to find it again after it was recreated.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// The interface's IPv4 address (`None` when it has none, on an IPv6-only network).
    pub addr: Option<Ipv4Addr>,
    /// The interface's IPv6 address (its first global one), when it has one.
    pub addr6: Option<Ipv6Addr>,
    /// The interface's MTU.
    pub mtu: u32,
}

impl ExternalInterface {
    /// Re-reads index and MTU by name (the interface may have been recreated).
    pub(crate) async fn refresh(&mut self, nl: &Netlink) -> Result<(), Error> {
        let link = self
            .lookup(nl)
            .await?
            .ok_or_else(|| Error::NoInterface(self.name.clone()))?;
        self.index = link.index;
        self.mtu = link.mtu;
        Ok(())
    }

    /// How the interface differs from when it was last read (gone, recreated, other MTU).
    pub(crate) async fn drift(&self, nl: &Netlink) -> Result<Option<Drift>, Error> {
        let name = self.name.clone();
        Ok(match self.lookup(nl).await? {
            None => Some(Drift::InterfaceGone { name }),
            Some(link) if link.index != self.index => Some(Drift::InterfaceRecreated { name }),
            Some(link) if link.mtu != self.mtu => Some(Drift::InterfaceMtu {
                name,
                found: link.mtu,
                was: self.mtu,
            }),
            Some(_) => None,
        })
    }

    /// The subnets of `families` reachable through this interface without a gateway (its LANs):
    /// a peer whose public address is in one can be routed to directly.
    pub(crate) async fn onlink(
        &self,
        nl: &Netlink,
        families: &[desired::Family],
    ) -> Result<Vec<IpNet>, Error> {
        let mut onlink = Vec::new();
        for family in families {
            let routes = (nl.routes(*family).await)
                .map_err(Error::netlink("list the routes of the external interface"))?;
            onlink.extend(
                (routes.iter())
                    .filter(|r| r.gateway.is_none() && r.oif == Some(self.index))
                    .map(|r| r.dst),
            );
        }
        Ok(onlink)
    }

    async fn lookup(&self, nl: &Netlink) -> Result<Option<netlink::Link>, Error> {
        nl.link_by_name(&self.name)
            .await
            .map_err(Error::netlink(format!("look up interface {}", self.name)))
    }
}

/// Deletes every vxlan device named `flannel.<VNI>`, with its neighbours and FDB entries
/// (`flanneld cleanup`); returns their names. Other links are never touched.
pub async fn remove_devices(nl: &Netlink) -> Result<Vec<String>, Error> {
    vxlan::remove_devices(nl).await
}

/// A data-plane backend: host-gw or vxlan.
#[derive(Debug)]
pub struct Backend {
    kind: Kind,
    /// The cluster networks, known after [`Backend::configure`].
    networks: Option<ClusterNetworks>,
    /// How peer routes are installed.
    route_style: RouteStyle,
}

/// The cluster networks of the config: IPv4, and IPv6 on a dual-stack network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterNetworks {
    /// `Network`; `None` on an IPv6-only network (`EnableIPv4: false`).
    pub v4: Option<Ipv4Net>,
    /// `IPv6Network`, when `EnableIPv6` is set.
    pub v6: Option<Ipv6Net>,
}

impl ClusterNetworks {
    /// Both networks, for the reconciler's ownership scope.
    pub fn all(&self) -> Vec<IpNet> {
        let v4 = self.v4.map(IpNet::from);
        let v6 = self.v6.map(IpNet::from);
        v4.into_iter().chain(v6).collect()
    }
}

#[derive(Debug)]
enum Kind {
    HostGw(HostGw),
    Vxlan(Vxlan),
}

/// Checks the `Backend` section of a network config without touching the host: a known type and,
/// for vxlan, valid keys. The agent waits for a config passing this instead of exiting.
pub fn check_config(config: &BackendConfig) -> Result<(), Error> {
    match config.backend_type.as_str() {
        hostgw::TYPE => Ok(()),
        vxlan::TYPE => vxlan::check_config(&config.raw),
        other => Err(Error::UnknownType(other.to_string())),
    }
}

impl Backend {
    /// Builds the backend named by `config.backend_type` (`host-gw` or `vxlan`). Fails on an
    /// unknown type, a bad vxlan key, or (host-gw) a public address that is not the
    /// interface's. `public_ip` is given unless the network is IPv6-only, `public_ipv6` when it
    /// has IPv6.
    pub fn new(
        config: &BackendConfig,
        ext: ExternalInterface,
        public_ip: Option<Ipv4Addr>,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<Backend, Error> {
        let kind = match config.backend_type.as_str() {
            hostgw::TYPE => Kind::HostGw(HostGw::new(ext, public_ip, public_ipv6)?),
            vxlan::TYPE => Kind::Vxlan(Vxlan::new(&config.raw, ext, public_ip, public_ipv6)?),
            other => return Err(Error::UnknownType(other.to_string())),
        };
        Ok(Backend {
            kind,
            networks: None,
            route_style: RouteStyle::Classic,
        })
    }

    /// Installs peer routes in `style` (classic unless told).
    pub fn with_route_style(mut self, style: RouteStyle) -> Backend {
        self.route_style = style;
        self
    }

    /// A backend of `config`'s type for the same interface, public addresses and route style:
    /// what a live switch of the network config's `Backend` section sets up beside this one.
    pub fn successor(&self, config: &BackendConfig) -> Result<Backend, Error> {
        let (ext, public_ip, public_ipv6) = match &self.kind {
            Kind::HostGw(b) => b.endpoint(),
            Kind::Vxlan(b) => b.endpoint(),
        };
        Ok(Backend::new(config, ext, public_ip, public_ipv6)?.with_route_style(self.route_style))
    }

    /// The backend type, as leases and the config name it (`host-gw`, `vxlan`).
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::HostGw(_) => hostgw::TYPE,
            Kind::Vxlan(_) => vxlan::TYPE,
        }
    }

    /// Removes what this backend set up that `next` does not use, once `next` carries the
    /// traffic (the break of a make-before-break switch): vxlan devices of another name, with
    /// their neighbours, FDB entries and routes. host-gw owns nothing but routes, which the
    /// reconciler already handed over. Returns what went.
    pub async fn retire(&self, nl: &Netlink, next: &Backend) -> Result<Vec<String>, Error> {
        let Kind::Vxlan(old) = &self.kind else {
            return Ok(Vec::new());
        };
        let keep = match &next.kind {
            Kind::Vxlan(new) => new.device_names(),
            Kind::HostGw(_) => Vec::new(),
        };
        old.remove_devices_except(nl, &keep).await
    }

    /// Prepares the kernel before the lease is acquired and returns the lease attributes to
    /// publish. host-gw: re-reads the external interface. vxlan: also creates `flannel.<VNI>`
    /// or reuses a compatible existing one (keeping its MAC), and learns the on-link subnets
    /// for DirectRouting. Safe to call again after the device or interface went away.
    pub async fn init(&mut self, nl: &Netlink) -> Result<LeaseAttrs, Error> {
        match &mut self.kind {
            Kind::HostGw(b) => b.init(nl).await,
            Kind::Vxlan(b) => b.init(nl).await,
        }
    }

    /// Finishes the setup once the own lease is known. vxlan: gives the device
    /// `<subnet network>.0/32` (removing other addresses inside `network`), sets it up and
    /// verifies its MAC. host-gw: nothing.
    pub async fn configure(
        &mut self,
        nl: &Netlink,
        own: &Lease,
        networks: ClusterNetworks,
    ) -> Result<(), Error> {
        self.networks = Some(networks);
        match &mut self.kind {
            Kind::HostGw(_) => Ok(()),
            Kind::Vxlan(b) => b.configure(nl, own, networks).await,
        }
    }

    /// Takes the host's existing setup as this backend's without changing anything (for
    /// `flanneld plan`): the external interface and, for vxlan, the device if it exists, with
    /// the VtepMAC `own` publishes. [`Backend::desired_for`] and [`Backend::drift`] then
    /// describe the host as it is; a missing device shows as [`Drift::DeviceNotSetUp`].
    pub async fn attach(
        &mut self,
        nl: &Netlink,
        own: &Lease,
        networks: ClusterNetworks,
    ) -> Result<(), Error> {
        self.networks = Some(networks);
        match &mut self.kind {
            Kind::HostGw(b) => b.init(nl).await.map(|_| ()),
            Kind::Vxlan(b) => b.attach(nl, own, networks).await,
        }
    }

    /// Whether every change to this backend's kernel objects made by others is reported by
    /// [`Notifications`]: true for host-gw (a route of ours removed, or replaced by a route of
    /// another protocol, or a nexthop object of ours removed); false for vxlan, whose neighbour
    /// and FDB entries can be replaced (RTM_NEWNEIGH, which its own writes cause too) without a
    /// notification it can tell apart.
    pub fn drift_is_notified(&self) -> bool {
        matches!(self.kind, Kind::HostGw(_))
    }

    /// The MTU for FLANNEL_MTU: host-gw the interface MTU, vxlan (config `MTU` or interface
    /// MTU) − 50.
    pub fn mtu(&self) -> u32 {
        match &self.kind {
            Kind::HostGw(b) => b.mtu(),
            Kind::Vxlan(b) => b.mtu(),
        }
    }

    /// The kernel objects wanted for `peers`. Peers of another backend type or with
    /// undecodable data are left out and listed in [`DesiredState::skipped`].
    pub fn desired(&self, peers: &PeerSet) -> DesiredState {
        self.desired_for(peers.iter())
    }

    /// The kernel objects wanted for some peer leases only, e.g. the old or the new leases of
    /// the peers an etcd event changed (for [`Reconciler::reconcile_changes`]).
    pub fn desired_for<'a>(&self, peers: impl IntoIterator<Item = &'a Lease>) -> DesiredState {
        let mut state = match &self.kind {
            Kind::HostGw(b) => b.desired(peers),
            Kind::Vxlan(b) => b.desired(peers),
        };
        state.networks = self.networks.map(|n| n.all()).unwrap_or_default();
        state.with_route_style(self.route_style)
    }

    /// How the kernel differs from what the last [`Backend::init`] and [`Backend::configure`]
    /// set up: the external interface (gone, recreated, other MTU) and, for vxlan, the device
    /// (gone, recreated, down, other MAC, MTU or vxlan attributes, address) and the on-link
    /// subnets for DirectRouting. Empty when nothing differs, e.g. after the notifications that
    /// setup's own writes cause: then [`Reaction::Setup`] needs no setup. A failed lookup counts
    /// as a difference.
    pub async fn drift(&self, nl: &Netlink) -> Vec<Drift> {
        let drift = match &self.kind {
            Kind::HostGw(b) => b.drift(nl).await,
            Kind::Vxlan(b) => b.drift(nl).await,
        };
        drift.unwrap_or_else(|e| vec![Drift::LookupFailed(e.to_string())])
    }

    /// What the daemon should do about a kernel notification.
    pub fn reaction(&self, n: &Notification) -> Reaction {
        match &self.kind {
            Kind::HostGw(b) => b.reaction(n),
            Kind::Vxlan(b) => b.reaction(n),
        }
    }
}
