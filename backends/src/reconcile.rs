//! The level-triggered reconciler: dump the kernel objects we own, diff them against the
//! desired state, apply the minimal changes, verify (every write is acknowledged by the kernel;
//! when one fails, the kernel is dumped again).
//!
//! Between full runs the reconciler keeps the dumped objects, updated with every write the
//! kernel acknowledged, so that a change of a few peers ([`Reconciler::reconcile_changes`]) is
//! planned against that model for just the objects those peers touch, without a dump. Writes
//! are pipelined: each phase of a plan is sent with up to [`PIPELINE_DEPTH`] requests in flight.
//!
//! Ownership rules (DESIGN principle 3): routes are ours when they carry
//! [`crate::ROUTE_PROTOCOL`] and lie inside the desired state's cluster network; neighbours and FDB entries are ours when they are permanent and on
//! the vxlan device of the desired state. An untagged route that exactly matches a desired route
//! (e.g. left by Go flanneld with `proto boot`) is adopted by replacing it with our tagged copy;
//! any other untagged route is never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;

use crate::desired::{DesiredState, Family, Nexthop, Route};
use crate::error::{NetlinkError, ENETUNREACH, ENOENT, ESRCH};
use crate::mac::Mac;
use crate::netlink::{KernelRoute, Netlink};
use crate::nexthop::{KernelNexthop, NexthopSocket};

/// One kernel write the reconciler decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Create or replace a permanent neighbour on the vxlan device.
    SetNeighbour {
        link: u32,
        ip: IpAddr,
        mac: Mac,
        existed: bool,
    },
    /// Create or replace a permanent FDB entry on the vxlan device.
    SetFdb {
        link: u32,
        mac: Mac,
        remote: IpAddr,
        existed: bool,
    },
    /// Create or replace a nexthop object of ours.
    SetNexthop { nexthop: Nexthop, existed: bool },
    /// Create a route that has no counterpart in the kernel.
    AddRoute(Route),
    /// Replace a wrong route of ours, or adopt an identical untagged one.
    ReplaceRoute(Route),
    /// Delete a tagged route no lease wants.
    DelRoute(KernelRoute),
    /// Delete a nexthop object of ours no route wants.
    DelNexthop(KernelNexthop),
    /// Delete an FDB entry no lease wants.
    DelFdb { link: u32, mac: Mac, remote: IpAddr },
    /// Delete a neighbour no lease wants.
    DelNeighbour { link: u32, ip: IpAddr },
}

/// Kernel requests in flight at once while applying one phase of a plan.
const PIPELINE_DEPTH: usize = 64;

/// How a written object counts in the [`Report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// Created.
    Added,
    /// Replaced (a wrong one of ours, or an adopted identical untagged route).
    Replaced,
    /// Deleted (no lease wants it).
    Deleted,
}

/// The kind of a kernel object the reconciler writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A route in the main table.
    Route,
    /// A permanent neighbour (ARP) entry on the vxlan device.
    Neighbour,
    /// A permanent FDB entry on the vxlan device.
    Fdb,
    /// A nexthop object (`--route-style=nexthop`).
    Nexthop,
}

impl Change {
    /// The label value for metrics: `add`, `replace`, `delete`.
    pub fn label(self) -> &'static str {
        match self {
            Change::Added => "add",
            Change::Replaced => "replace",
            Change::Deleted => "delete",
        }
    }
}

impl ObjectKind {
    /// The label value for metrics: `route`, `neighbour`, `fdb`.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Route => "route",
            ObjectKind::Neighbour => "neighbour",
            ObjectKind::Fdb => "fdb",
            ObjectKind::Nexthop => "nexthop",
        }
    }
}

impl Op {
    /// The ordering phase: ops of one phase are independent and may run concurrently; phases
    /// run in this order (neighbours, FDB entries, nexthops, routes, then the deletes in
    /// reverse).
    fn phase(&self) -> u8 {
        match self {
            Op::SetNeighbour { .. } => 0,
            Op::SetFdb { .. } => 1,
            Op::SetNexthop { .. } => 2,
            Op::AddRoute(_) | Op::ReplaceRoute(_) | Op::DelRoute(_) => 3,
            Op::DelNexthop(_) => 4,
            Op::DelFdb { .. } => 5,
            Op::DelNeighbour { .. } => 6,
        }
    }

    fn kind(&self) -> ObjectKind {
        match self {
            Op::SetNeighbour { .. } | Op::DelNeighbour { .. } => ObjectKind::Neighbour,
            Op::SetFdb { .. } | Op::DelFdb { .. } => ObjectKind::Fdb,
            Op::AddRoute(_) | Op::ReplaceRoute(_) | Op::DelRoute(_) => ObjectKind::Route,
            Op::SetNexthop { .. } | Op::DelNexthop(_) => ObjectKind::Nexthop,
        }
    }

    fn change(&self) -> Change {
        match self {
            Op::AddRoute(_)
            | Op::SetNeighbour { existed: false, .. }
            | Op::SetFdb { existed: false, .. }
            | Op::SetNexthop { existed: false, .. } => Change::Added,
            Op::ReplaceRoute(_)
            | Op::SetNeighbour { .. }
            | Op::SetFdb { .. }
            | Op::SetNexthop { .. } => Change::Replaced,
            Op::DelRoute(_) | Op::DelFdb { .. } | Op::DelNeighbour { .. } | Op::DelNexthop(_) => {
                Change::Deleted
            }
        }
    }

    /// The object the op is about, as named in errors and logs.
    fn object(&self) -> String {
        match self {
            Op::SetNeighbour { link, ip, mac, .. } => {
                format!("neighbour {ip} lladdr {mac} dev #{link}")
            }
            Op::SetFdb {
                link, mac, remote, ..
            }
            | Op::DelFdb { link, mac, remote } => {
                format!("fdb {mac} dst {remote} dev #{link}")
            }
            Op::AddRoute(r) | Op::ReplaceRoute(r) => r.to_string(),
            Op::DelRoute(k) => format!("tagged route {}", k.dst),
            Op::DelNeighbour { link, ip } => format!("neighbour {ip} dev #{link}"),
            Op::SetNexthop { nexthop, .. } => nexthop.to_string(),
            Op::DelNexthop(k) => format!("tagged nexthop id {}", k.id),
        }
    }

    /// Explains a failure, naming the fix where we know it.
    fn explain(&self, e: &NetlinkError) -> String {
        match self {
            Op::AddRoute(r) | Op::ReplaceRoute(r) if e.errno == Some(ENETUNREACH) => format!(
                "peer {} (PublicIP {}) is not on-link from this host, the kernel refuses a route \
                 via it ({e}); host-gw needs all hosts on one L2 segment: use the vxlan backend, \
                 or vxlan with \"DirectRouting\": true to route directly only where possible",
                r.dst, r.gateway
            ),
            Op::SetNexthop { .. } if e.errno == Some(libc::EOPNOTSUPP) => format!(
                "this kernel has no nexthop objects ({e}): they need Linux 5.3 or later; run \
                 with --route-style=classic"
            ),
            Op::SetNexthop { nexthop, .. } if e.errno == Some(libc::ENETDOWN) => format!(
                "device #{} is down or has no carrier, and the kernel refuses nexthop objects \
                 on it ({e}); they are created when the link is up again",
                nexthop.oif
            ),
            _ => e.to_string(),
        }
    }
}

/// A kernel object that could not be made to match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    /// The object, e.g. `route 10.5.2.0/24 via 192.168.1.5 dev #2`.
    pub object: String,
    /// What went wrong and, where known, how to fix it.
    pub message: String,
}

/// One write a reconcile would make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChange {
    /// The kind of object.
    pub kind: ObjectKind,
    /// Added, replaced or deleted.
    pub change: Change,
    /// The object, e.g. `route 10.5.2.0/24 via 192.168.1.5 dev #2`.
    pub object: String,
}

/// What a reconcile would do ([`Reconciler::preview`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preview {
    /// The writes, in the order they would run.
    pub changes: Vec<PlannedChange>,
    /// Objects that cannot be made to match (e.g. a conflicting untagged route).
    pub conflicts: Vec<ObjectError>,
}

/// The outcome of one reconcile run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects created.
    pub added: usize,
    /// Objects replaced (wrong ones of ours, or adopted identical untagged routes).
    pub replaced: usize,
    /// Objects of ours deleted because no lease wants them.
    pub deleted: usize,
    /// Per-object failures (including routes blocked by a conflicting untagged route).
    pub errors: Vec<ObjectError>,
    /// Differences the verification dump still found after applying.
    pub pending: usize,
    /// Whether the kernel now matches the desired state.
    pub converged: bool,
    /// Objects written, by kind and change.
    pub changed: BTreeMap<(ObjectKind, Change), usize>,
}

impl Report {
    /// Whether the run wrote anything.
    pub fn writes(&self) -> usize {
        self.added + self.replaced + self.deleted
    }
}

/// The kernel objects the reconciler looks at, indexed by key: every main-table unicast route
/// of the families listed by destination, the permanent neighbours and the FDB remotes (non-zero
/// MACs) of the vxlan devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelState {
    pub routes: BTreeMap<IpNet, Vec<KernelRoute>>,
    pub neighbours: BTreeMap<IpAddr, Mac>,
    /// FDB remotes by MAC: nearly always one, so a vector of one (an ordered set would hold
    /// a B-tree node of eleven slots for each peer of a vxlan network).
    pub fdb: BTreeMap<Mac, Vec<IpAddr>>,
    /// Every nexthop object, ours or not, by id.
    pub nexthops: BTreeMap<u32, KernelNexthop>,
    /// Nexthop ids that routes outside a [`KernelState::scoped`] part use: never deleted there.
    pub pinned: BTreeSet<u32>,
}

impl KernelState {
    /// Indexes dumped objects.
    pub fn new(
        routes: Vec<KernelRoute>,
        neighbours: Vec<(IpAddr, Mac)>,
        fdb: Vec<(Mac, IpAddr)>,
    ) -> KernelState {
        let mut snap = KernelState {
            neighbours: neighbours.into_iter().collect(),
            ..KernelState::default()
        };
        for k in routes {
            // Nearly every destination has one route: no room reserved for more.
            snap.routes
                .entry(k.dst)
                .or_insert_with(|| Vec::with_capacity(1))
                .push(k);
        }
        for (mac, remote) in fdb.into_iter().filter(|(mac, _)| !mac.is_zero()) {
            let remotes = snap.fdb.entry(mac).or_insert_with(|| Vec::with_capacity(1));
            if !remotes.contains(&remote) {
                remotes.push(remote);
                remotes.sort();
            }
        }
        snap
    }

    /// Adds the dumped nexthop objects.
    pub fn with_nexthops(mut self, nexthops: Vec<KernelNexthop>) -> KernelState {
        self.nexthops = nexthops.into_iter().map(|k| (k.id, k)).collect();
        self
    }

    /// The part of the kernel state with the keys `desired` states use: their route destinations,
    /// neighbour addresses and FDB MACs.
    fn scoped(&self, states: &[&DesiredState]) -> KernelState {
        let mut out = KernelState::default();
        for state in states {
            for dst in state.routes.keys() {
                if let Some(ks) = self.routes.get(dst) {
                    out.routes.insert(*dst, ks.clone());
                }
            }
            for ip in state.neighbours.keys() {
                if let Some(mac) = self.neighbours.get(ip) {
                    out.neighbours.insert(*ip, *mac);
                }
            }
            for mac in state.fdb.keys() {
                if let Some(remotes) = self.fdb.get(mac) {
                    out.fdb.insert(*mac, remotes.clone());
                }
            }
            for id in state.nexthops.keys() {
                if let Some(k) = self.nexthops.get(id) {
                    out.nexthops.insert(*id, *k);
                }
            }
        }
        if !out.nexthops.is_empty() {
            out.pinned = self.nexthop_users_outside(&out);
        }
        out
    }

    /// The ids of `part`'s nexthops that routes outside `part` point to.
    fn nexthop_users_outside(&self, part: &KernelState) -> BTreeSet<u32> {
        self.routes
            .iter()
            .filter(|(dst, _)| !part.routes.contains_key(dst))
            .flat_map(|(_, same)| same.iter().filter_map(|k| k.nh_id))
            .filter(|id| part.nexthops.contains_key(id))
            .collect()
    }

    /// Follows a write the kernel acknowledged; `false` when the outcome cannot be modelled
    /// (an FDB replace on a MAC with several remotes), so the kernel state must be dumped again.
    fn record(&mut self, op: &Op) -> bool {
        match op {
            Op::AddRoute(r) | Op::ReplaceRoute(r) => {
                let same = self
                    .routes
                    .entry(r.dst)
                    .or_insert_with(|| Vec::with_capacity(1));
                same.retain(|k| !k.has_our_key());
                same.push(KernelRoute::ours(r));
            }
            Op::DelRoute(k) => {
                if let Some(same) = self.routes.get_mut(&k.dst) {
                    same.retain(|x| x != k);
                    if same.is_empty() {
                        self.routes.remove(&k.dst);
                    }
                }
            }
            Op::SetNeighbour { ip, mac, .. } => {
                self.neighbours.insert(*ip, *mac);
            }
            Op::DelNeighbour { ip, .. } => {
                self.neighbours.remove(ip);
            }
            Op::SetFdb { mac, remote, .. } => {
                let remotes = self.fdb.entry(*mac).or_default();
                if remotes.len() > 1 {
                    return false;
                }
                *remotes = vec![*remote];
            }
            Op::DelFdb { mac, remote, .. } => {
                if let Some(remotes) = self.fdb.get_mut(mac) {
                    remotes.retain(|r| r != remote);
                    if remotes.is_empty() {
                        self.fdb.remove(mac);
                    }
                }
            }
            Op::SetNexthop { nexthop, .. } => {
                self.nexthops
                    .insert(nexthop.id, KernelNexthop::ours(nexthop));
            }
            Op::DelNexthop(k) => {
                // The kernel deletes the routes pointing to a deleted nexthop object.
                self.nexthops.remove(&k.id);
                for same in self.routes.values_mut() {
                    same.retain(|r| r.nh_id != Some(k.id));
                }
                self.routes.retain(|_, same| !same.is_empty());
            }
        }
        true
    }
}

/// What to do to get from a kernel state to the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    pub conflicts: Vec<ObjectError>,
}

/// The kernel operations the reconciler needs; implemented by [`Netlink`] and by a fake in
/// tests.
pub(crate) trait Kernel {
    /// Main-table unicast routes of `family`.
    async fn routes(&self, family: Family) -> Result<Vec<KernelRoute>, NetlinkError>;
    /// Permanent neighbours of `family` on `link`.
    async fn neighbours(
        &self,
        link: u32,
        family: Family,
    ) -> Result<Vec<(IpAddr, Mac)>, NetlinkError>;
    /// Permanent FDB entries with a remote on `link`.
    async fn fdb(&self, link: u32) -> Result<Vec<(Mac, IpAddr)>, NetlinkError>;
    /// Every nexthop object.
    async fn nexthops(&self) -> Result<Vec<KernelNexthop>, NetlinkError>;
    /// Performs one write.
    async fn apply(&self, op: &Op) -> Result<(), NetlinkError>;
}

impl Kernel for Netlink {
    async fn routes(&self, family: Family) -> Result<Vec<KernelRoute>, NetlinkError> {
        Netlink::routes(self, family).await
    }

    async fn neighbours(
        &self,
        link: u32,
        family: Family,
    ) -> Result<Vec<(IpAddr, Mac)>, NetlinkError> {
        Netlink::neighbours(self, link, family).await
    }

    async fn fdb(&self, link: u32) -> Result<Vec<(Mac, IpAddr)>, NetlinkError> {
        Netlink::fdb(self, link).await
    }

    async fn nexthops(&self) -> Result<Vec<KernelNexthop>, NetlinkError> {
        NexthopSocket::dump().await
    }

    async fn apply(&self, op: &Op) -> Result<(), NetlinkError> {
        match op {
            Op::SetNeighbour { link, ip, mac, .. } => self.set_neighbour(*link, *ip, *mac).await,
            Op::SetFdb {
                link, mac, remote, ..
            } => self.set_fdb(*link, *mac, *remote).await,
            Op::AddRoute(r) => self.set_route(r, false).await,
            Op::ReplaceRoute(r) => self.set_route(r, true).await,
            Op::DelRoute(k) => self.del_route(k).await,
            Op::DelFdb { link, mac, remote } => self.del_fdb(*link, *mac, *remote).await,
            Op::DelNeighbour { link, ip } => self.del_neighbour(*link, *ip).await,
            Op::SetNexthop { nexthop, existed } => {
                self.nexthop_socket().set(nexthop, *existed).await
            }
            Op::DelNexthop(k) => self.nexthop_socket().del(k.id).await,
        }
    }
}

/// `ENOENT`/`ESRCH`: deleting something already gone counts as done.
fn already_gone(op: &Op, e: &NetlinkError) -> bool {
    matches!(op.change(), Change::Deleted) && matches!(e.errno, Some(ENOENT | ESRCH))
}

/// Computes the writes that turn `snap` into `desired`, in a safe order: neighbours, FDB
/// entries, then routes are created; routes, FDB entries, then neighbours are deleted.
pub(crate) fn plan(desired: &DesiredState, snap: &KernelState) -> Plan {
    let mut out = Plan::default();
    plan_neighbours(desired, snap, &mut out);
    let fdb_deletes = plan_fdb(desired, snap, &mut out);
    let blocked = plan_nexthops(desired, snap, &mut out);
    plan_routes(desired, snap, &blocked, &mut out);
    out.ops.extend(nexthop_deletes(desired, snap));
    out.ops.extend(fdb_deletes);
    for ip in snap.neighbours.keys() {
        let link = desired.vteps.of(Family::of(ip));
        if let Some(link) = link.filter(|_| !desired.neighbours.contains_key(ip)) {
            out.ops.push(Op::DelNeighbour { link, ip: *ip });
        }
    }
    out
}

/// Each neighbour goes on the vxlan device of its address's family.
fn plan_neighbours(desired: &DesiredState, snap: &KernelState, out: &mut Plan) {
    for (ip, mac) in &desired.neighbours {
        let Some(link) = desired.vteps.of(Family::of(ip)) else {
            continue;
        };
        match snap.neighbours.get(ip) {
            Some(have) if have == mac => {}
            have => out.ops.push(Op::SetNeighbour {
                link,
                ip: *ip,
                mac: *mac,
                existed: have.is_some(),
            }),
        }
    }
}

/// Pushes the FDB sets and returns the FDB deletes (applied after the routes). Each entry goes
/// on the vxlan device of its remote's family.
fn plan_fdb(desired: &DesiredState, snap: &KernelState, out: &mut Plan) -> Vec<Op> {
    for (mac, remote) in &desired.fdb {
        let Some(link) = desired.vteps.of(Family::of(remote)) else {
            continue;
        };
        match snap.fdb.get(mac) {
            Some(have) if have.contains(remote) => {}
            have => out.ops.push(Op::SetFdb {
                link,
                mac: *mac,
                remote: *remote,
                existed: have.is_some(),
            }),
        }
    }
    snap.fdb
        .iter()
        .flat_map(|(mac, have)| have.iter().map(move |r| (*mac, *r)))
        .filter(|(mac, remote)| desired.fdb.get(mac) != Some(remote))
        .filter_map(|(mac, remote)| {
            let link = desired.vteps.of(Family::of(&remote))?;
            Some(Op::DelFdb { link, mac, remote })
        })
        .collect()
}

/// Why a peer's route cannot be installed over a route we do not own, and what to do. A route
/// without a gateway (the host's own connected network) or a default route may carry the host's
/// own traffic: the advice is then never to delete it.
fn conflict_message(route: &Route, other: &KernelRoute) -> String {
    let what = format!(
        "a route to {} that flanneld-rs does not own is in the way (proto {}, via {}, dev #{}); \
         it is left alone",
        route.dst,
        other.protocol,
        other.gateway.map_or("-".into(), |g| g.to_string()),
        other.oif.unwrap_or(0),
    );
    if other.gateway.is_none() || other.dst.prefix_len() == 0 {
        format!(
            "{what}: it may carry this host's own traffic, so do not delete it; check the lease \
             for {} under <prefix>/subnets/ (its subnet overlaps this host's network)",
            route.dst
        )
    } else {
        format!(
            "{what}: if it is stale, delete it (`ip route del {}`) to let the peer's route be \
             installed",
            route.dst
        )
    }
}

/// Pushes the nexthop objects to create or replace; returns the ids held by an object that is
/// not ours (the routes that would point to it are conflicts).
fn plan_nexthops(desired: &DesiredState, snap: &KernelState, out: &mut Plan) -> BTreeSet<u32> {
    let mut blocked = BTreeSet::new();
    for nexthop in desired.nexthops.values() {
        match snap.nexthops.get(&nexthop.id) {
            Some(have) if have.matches(nexthop) => {}
            Some(have) if !have.is_ours() => {
                blocked.insert(nexthop.id);
            }
            have => out.ops.push(Op::SetNexthop {
                nexthop: *nexthop,
                existed: have.is_some(),
            }),
        }
    }
    blocked
}

/// Our nexthop objects that no desired route wants and no route left in place points to
/// (a route of another protocol, or of another flanneld-rs instance's network).
fn nexthop_deletes(desired: &DesiredState, snap: &KernelState) -> Vec<Op> {
    let kept_routes = snap
        .routes
        .values()
        .flatten()
        .filter(|k| !k.is_ours() || !desired.owns_route(&k.dst, k.oif));
    let used: BTreeSet<u32> = kept_routes.filter_map(|k| k.nh_id).collect();
    snap.nexthops
        .values()
        .filter(|k| k.is_ours() && !desired.nexthops.contains_key(&k.id))
        .filter(|k| !used.contains(&k.id) && !snap.pinned.contains(&k.id))
        .map(|k| Op::DelNexthop(*k))
        .collect()
}

/// Why a route cannot point to nexthop `id`: another program's object holds the id.
fn nexthop_conflict(route: &Route, id: u32, other: Option<&KernelNexthop>) -> ObjectError {
    let (protocol, via) = other.map_or((0, None), |k| (k.protocol, k.gateway));
    ObjectError {
        object: route.to_string(),
        message: format!(
            "nexthop id {id} is held by an object flanneld-rs does not own (proto {protocol}, \
             via {}); it is left alone: delete it (`ip nexthop del id {id}`) if it is stale, or \
             run with --route-style=classic",
            via.map_or("-".into(), |g| g.to_string())
        ),
    }
}

fn plan_routes(
    desired: &DesiredState,
    snap: &KernelState,
    blocked: &BTreeSet<u32>,
    out: &mut Plan,
) {
    // Only routes with the key of ours (default metric, tos 0) can collide with ours.
    let same_key = |dst: IpNet| {
        snap.routes
            .get(&dst)
            .into_iter()
            .flatten()
            .filter(|k| k.has_our_key())
    };
    for route in desired.routes.values() {
        if let Some(id) = route.nexthop.filter(|id| blocked.contains(id)) {
            out.conflicts
                .push(nexthop_conflict(route, id, snap.nexthops.get(&id)));
            continue;
        }
        let ours = same_key(route.dst).filter(|k| k.is_ours());
        let foreign = same_key(route.dst).filter(|k| !k.is_ours());
        if ours.clone().any(|k| k.matches(route)) {
            continue;
        }
        if ours.count() > 0 || foreign.clone().any(|k| k.adoptable(route)) {
            out.ops.push(Op::ReplaceRoute(*route));
        } else if let Some(other) = foreign.clone().next() {
            out.conflicts.push(ObjectError {
                object: route.to_string(),
                message: conflict_message(route, other),
            });
        } else {
            out.ops.push(Op::AddRoute(*route));
        }
    }
    // Tagged routes through our own vxlan device are ours wherever they lead (e.g. one left by
    // an older version for a lease outside the Network).
    let in_scope = |k: &&KernelRoute| desired.owns_route(&k.dst, k.oif);
    for k in snap
        .routes
        .values()
        .flatten()
        .filter(|k| k.is_ours())
        .filter(in_scope)
    {
        let wanted = desired.routes.get(&k.dst).is_some_and(|r| k.matches(r));
        let replaceable = desired.routes.contains_key(&k.dst) && k.has_our_key();
        if !wanted && !replaceable {
            out.ops.push(Op::DelRoute(*k));
        }
    }
}

/// Dumps the owned objects.
async fn dump_state<K: Kernel>(
    kernel: &K,
    desired: &DesiredState,
) -> Result<KernelState, NetlinkError> {
    let mut routes = Vec::new();
    for family in desired.families() {
        routes.extend(kernel.routes(family).await?);
    }
    let (mut neighbours, mut fdb) = (Vec::new(), Vec::new());
    for (family, link) in desired.vteps.iter() {
        neighbours.extend(kernel.neighbours(link, family).await?);
        fdb.extend(kernel.fdb(link).await?);
    }
    // Listed in both route styles, so that switching back to classic removes our objects. A
    // kernel without nexthop objects (before Linux 5.3) refuses the dump: none, unless wanted.
    let nexthops = match kernel.nexthops().await {
        Ok(found) => found,
        Err(_) if desired.nexthops.is_empty() => Vec::new(),
        Err(e) => {
            return Err(NetlinkError {
                message: format!(
                    "nexthop objects cannot be listed ({e}); --route-style=nexthop needs Linux \
                     5.3 or later, else run with --route-style=classic"
                ),
                ..e
            })
        }
    };
    Ok(KernelState::new(routes, neighbours, fdb).with_nexthops(nexthops))
}

/// Applies `ops` phase by phase, pipelined within a phase; returns each op's outcome, in order.
async fn apply_all<K: Kernel>(kernel: &K, ops: &[Op]) -> Vec<Result<(), NetlinkError>> {
    let mut results = Vec::with_capacity(ops.len());
    for phase in ops.chunk_by(|a, b| a.phase() == b.phase()) {
        let outcomes: Vec<_> = futures::stream::iter(phase)
            .map(|op| kernel.apply(op))
            .buffered(PIPELINE_DEPTH)
            .collect()
            .await;
        results.extend(outcomes);
    }
    results
}

/// Applies a plan and counts the outcome into `report`; `snap` follows every write the kernel
/// acknowledged. Returns `false` if a write failed or `snap` could not follow.
async fn execute<K: Kernel>(
    kernel: &K,
    plan: Plan,
    report: &mut Report,
    snap: &mut KernelState,
) -> bool {
    report.errors.extend(plan.conflicts);
    let mut exact = true;
    for (op, outcome) in plan.ops.iter().zip(apply_all(kernel, &plan.ops).await) {
        match outcome {
            Ok(()) => {
                match op.change() {
                    Change::Added => report.added += 1,
                    Change::Replaced => report.replaced += 1,
                    Change::Deleted => report.deleted += 1,
                }
                *report.changed.entry((op.kind(), op.change())).or_default() += 1;
            }
            Err(e) if already_gone(op, &e) => {}
            Err(e) => {
                exact = false;
                report.errors.push(ObjectError {
                    object: op.object(),
                    message: op.explain(&e),
                });
                continue;
            }
        }
        exact &= snap.record(op);
    }
    exact
}

/// One full run: dump, plan, apply, verify (against the acknowledged writes, or a second dump
/// when one failed). Returns the report and the kernel state the run ended with (`None` if a dump
/// failed).
pub(crate) async fn run<K: Kernel>(
    kernel: &K,
    desired: &DesiredState,
) -> (Report, Option<KernelState>) {
    let mut report = Report::default();
    let dump_failed = |e: NetlinkError| ObjectError {
        object: "kernel dump".into(),
        message: format!("cannot list routes/neighbours/FDB: {e}"),
    };
    let snap = match dump_state(kernel, desired).await {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(dump_failed(e));
            return (report, None);
        }
    };
    let mut snap = snap;
    let plan = plan(desired, &snap);
    if plan.ops.is_empty() {
        report.errors.extend(plan.conflicts);
        report.converged = report.errors.is_empty();
        return (report, Some(snap));
    }
    // The kernel state follows every write the kernel acknowledged; only when a write failed (or
    // the kernel state cannot follow) is the kernel dumped again to see where it stands.
    if execute(kernel, plan, &mut report, &mut snap).await {
        report.pending = self::plan(desired, &snap).ops.len();
        report.converged = report.errors.is_empty() && report.pending == 0;
        return (report, Some(snap));
    }
    let after = match dump_state(kernel, desired).await {
        Ok(after) => {
            report.pending = self::plan(desired, &after).ops.len();
            Some(after)
        }
        Err(e) => {
            report.errors.push(dump_failed(e));
            None
        }
    };
    report.converged = report.errors.is_empty() && report.pending == 0;
    (report, after)
}

/// An incremental run for changed peers: `before` and `after` are the desired objects of just
/// those peers (old and new leases). Plans against `snap` restricted to the keys of both, so
/// only those objects are written (objects only `before` wants are deleted if ours), without a
/// dump. Returns the report and whether `snap` still models the kernel exactly.
pub(crate) async fn run_changes<K: Kernel>(
    kernel: &K,
    snap: &mut KernelState,
    before: &DesiredState,
    after: &DesiredState,
) -> (Report, bool) {
    let mut report = Report::default();
    let plan = plan(after, &snap.scoped(&[before, after]));
    let exact = execute(kernel, plan, &mut report, snap).await;
    report.converged = report.errors.is_empty();
    (report, exact)
}

/// Makes the kernel match a [`DesiredState`]; keeps what it logged so that a persistent problem
/// is reported once, not on every resync.
#[derive(Debug)]
pub struct Reconciler {
    kernel: Netlink,
    problems: Problems,
    /// The kernel as of the last full run, updated with every acknowledged write since; `None`
    /// until a full run succeeded, and again after anything the model cannot follow.
    model: Option<KernelState>,
}

/// The problems logged by the last run, keyed by object.
#[derive(Debug, Default)]
struct Problems {
    logged: BTreeMap<String, String>,
}

impl Reconciler {
    /// A reconciler writing through `kernel`.
    pub fn new(kernel: Netlink) -> Reconciler {
        Reconciler {
            kernel,
            problems: Problems::default(),
            model: None,
        }
    }

    /// Makes the kernel match `desired` and reports what it did. Never fails as a whole: every
    /// problem is in [`Report::errors`] and makes [`Report::converged`] false. A problem is
    /// logged as a warning the first time it is seen (and again if it changes); its end is
    /// logged too. Skipped peers are logged once the same way.
    pub async fn reconcile(&mut self, desired: &DesiredState) -> Report {
        let (report, snap) = run(&self.kernel, desired).await;
        self.model = snap;
        let (problems, recovered) = self.problems.news(desired, &report);
        for line in problems {
            tracing::warn!("{line}");
        }
        for line in recovered {
            tracing::info!("{line}");
        }
        report
    }

    /// Whether nexthop object `id` is one the reconciler knows it put in the kernel and has
    /// not deleted since (true too while it has no model): its removal is then drift, not the
    /// echo of its own delete.
    pub fn holds_nexthop(&self, id: u32) -> bool {
        self.model
            .as_ref()
            .is_none_or(|model| model.nexthops.contains_key(&id))
    }

    /// What [`Reconciler::reconcile`] would write for `desired`, without writing anything:
    /// the kernel is dumped and planned against, and each planned write is returned typed.
    pub async fn preview(&self, desired: &DesiredState) -> Result<Preview, NetlinkError> {
        let snap = dump_state(&self.kernel, desired).await?;
        let plan = plan(desired, &snap);
        let changes = plan
            .ops
            .iter()
            .map(|op| PlannedChange {
                kind: op.kind(),
                change: op.change(),
                object: op.object(),
            })
            .collect();
        Ok(Preview {
            changes,
            conflicts: plan.conflicts,
        })
    }

    /// Applies a change of some peers without dumping the kernel: `before` holds the desired
    /// objects of those peers' old leases, `after` those of their new ones (a removed peer is
    /// only in `before`). Objects of other peers are not looked at. New problems are logged
    /// like in [`Reconciler::reconcile`].
    ///
    /// `None` when there is no model of the kernel to plan against (no successful full run
    /// yet, or one since a write failed): run [`Reconciler::reconcile`] instead. A report that
    /// is not converged also calls for a full run, which re-reads the kernel.
    pub async fn reconcile_changes(
        &mut self,
        before: &DesiredState,
        after: &DesiredState,
    ) -> Option<Report> {
        let model = self.model.as_mut()?;
        let (report, exact) = run_changes(&self.kernel, model, before, after).await;
        if !exact {
            self.model = None;
        }
        for line in self.problems.more(after, &report) {
            tracing::warn!("{line}");
        }
        Some(report)
    }
}

impl Problems {
    /// The problems of a partial run that were not logged yet; they are remembered, and what
    /// became of them is told by the next full run.
    fn more(&mut self, desired: &DesiredState, report: &Report) -> Vec<String> {
        let found = report
            .errors
            .iter()
            .map(|e| (e.object.clone(), e.message.clone()))
            .chain(
                desired
                    .skipped
                    .iter()
                    .map(|(subnet, why)| (format!("peer {subnet}"), why.clone())),
            );
        let mut lines = Vec::new();
        for (object, message) in found {
            if self.logged.get(&object) != Some(&message) {
                lines.push(format!("{object}: {message}"));
                self.logged.insert(object, message);
            }
        }
        lines
    }

    /// The problems to log now (new or changed since the last run) and the objects whose
    /// problem went away.
    fn news(&mut self, desired: &DesiredState, report: &Report) -> (Vec<String>, Vec<String>) {
        let mut now: BTreeMap<String, String> = report
            .errors
            .iter()
            .map(|e| (e.object.clone(), e.message.clone()))
            .collect();
        now.extend(
            desired
                .skipped
                .iter()
                .map(|(subnet, why)| (format!("peer {subnet}"), why.clone())),
        );
        let problems = now
            .iter()
            .filter(|(object, message)| self.logged.get(*object) != Some(message))
            .map(|(object, message)| format!("{object}: {message}"))
            .collect();
        let recovered = self
            .logged
            .keys()
            .filter(|object| !now.contains_key(*object) && !object.starts_with("peer "))
            .map(|object| format!("{object}: ok now"))
            .collect();
        self.logged = now;
        (problems, recovered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    use crate::ROUTE_PROTOCOL;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn vtep9() -> crate::desired::Vteps {
        crate::desired::Vteps {
            v4: Some(9),
            v6: None,
        }
    }

    /// A desired state with the IPv4 vtep at index 9 and nothing else yet.
    fn on_vtep9() -> DesiredState {
        DesiredState {
            vteps: vtep9(),
            ..DesiredState::default()
        }
    }

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    fn hostgw(dst: &str, gw: &str) -> Route {
        Route {
            dst: net(dst),
            gateway: ip(gw),
            oif: 2,
            onlink: false,
            nexthop: None,
        }
    }

    fn kroute(r: &Route, protocol: u8) -> KernelRoute {
        KernelRoute {
            dst: r.dst,
            gateway: Some(r.gateway),
            oif: Some(r.oif),
            onlink: r.onlink,
            protocol,
            priority: 0,
            tos: 0,
            nh_id: r.nexthop,
        }
    }

    fn desired(routes: &[Route]) -> DesiredState {
        DesiredState {
            routes: routes.iter().map(|r| (r.dst, *r)).collect(),
            ..DesiredState::default()
        }
    }

    #[test]
    fn missing_routes_are_added_and_matching_ones_left_alone() {
        let a = hostgw("10.5.2.0/24", "192.168.1.2");
        let b = hostgw("10.5.3.0/24", "192.168.1.3");
        let snap = KernelState::new(vec![kroute(&a, ROUTE_PROTOCOL)], vec![], vec![]);
        let p = plan(&desired(&[a, b]), &snap);
        assert_eq!(p.ops, vec![Op::AddRoute(b)]);
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn wrong_routes_of_ours_are_replaced_and_stale_ones_deleted() {
        let want = hostgw("10.5.2.0/24", "192.168.1.2");
        let wrong = kroute(&hostgw("10.5.2.0/24", "192.168.1.9"), ROUTE_PROTOCOL);
        let stale = kroute(&hostgw("10.5.7.0/24", "192.168.1.7"), ROUTE_PROTOCOL);
        let foreign = kroute(&hostgw("10.9.0.0/16", "192.168.1.1"), 3);
        let snap = KernelState::new(vec![wrong, stale, foreign], vec![], vec![]);
        let p = plan(&desired(&[want]), &snap);
        assert_eq!(p.ops, vec![Op::ReplaceRoute(want), Op::DelRoute(stale)]);
    }

    #[test]
    fn identical_untagged_routes_are_adopted_and_different_ones_are_conflicts() {
        let a = hostgw("10.5.2.0/24", "192.168.1.2");
        let b = hostgw("10.5.3.0/24", "192.168.1.3");
        let snap = KernelState::new(
            vec![
                kroute(&a, 3),
                kroute(&hostgw("10.5.3.0/24", "192.168.1.99"), 3),
            ],
            vec![],
            vec![],
        );
        let p = plan(&desired(&[a, b]), &snap);
        assert_eq!(p.ops, vec![Op::ReplaceRoute(a)]);
        assert_eq!(p.conflicts.len(), 1);
        assert!(p.conflicts[0].message.contains("ip route del 10.5.3.0/24"));
    }

    #[test]
    fn tagged_routes_of_another_network_are_left_alone() {
        let stale = kroute(&hostgw("10.5.7.0/24", "192.168.1.7"), ROUTE_PROTOCOL);
        let other_network = kroute(&hostgw("10.6.7.0/24", "192.168.1.7"), ROUTE_PROTOCOL);
        let snap = KernelState::new(vec![stale, other_network], vec![], vec![]);
        let mut want = desired(&[]);
        want.networks = vec![net("10.5.0.0/16")];
        assert_eq!(plan(&want, &snap).ops, vec![Op::DelRoute(stale)]);
    }

    #[test]
    fn a_connected_or_default_route_in_the_way_is_never_advised_for_deletion() {
        let lan = hostgw("192.168.1.0/24", "192.168.1.2");
        let default = hostgw("0.0.0.0/0", "192.168.1.3");
        let connected = KernelRoute {
            gateway: None,
            ..kroute(&lan, 2)
        };
        let gateway_default = kroute(&hostgw("0.0.0.0/0", "192.168.1.1"), 3);
        let snap = KernelState::new(vec![connected, gateway_default], vec![], vec![]);
        let p = plan(&desired(&[lan, default]), &snap);
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert_eq!(p.conflicts.len(), 2);
        for c in &p.conflicts {
            assert!(!c.message.contains("ip route del"), "{}", c.message);
            assert!(c.message.contains("do not delete it"), "{}", c.message);
        }
    }

    #[test]
    fn tagged_routes_through_our_vxlan_device_are_ours_outside_the_network_too() {
        let mut leftover = kroute(&hostgw("192.168.7.0/24", "192.168.7.0"), ROUTE_PROTOCOL);
        leftover.oif = Some(9);
        let other_network = kroute(&hostgw("10.6.7.0/24", "192.168.1.7"), ROUTE_PROTOCOL);
        let snap = KernelState::new(vec![leftover, other_network], vec![], vec![]);
        let want = DesiredState {
            vteps: vtep9(),
            networks: vec![net("10.5.0.0/16")],
            ..DesiredState::default()
        };
        assert_eq!(plan(&want, &snap).ops, vec![Op::DelRoute(leftover)]);
    }

    #[test]
    fn ipv6_routes_carry_the_kernels_default_metric_and_are_planned_like_ipv4() {
        let v6 = hostgw("fd00:20:0:5::/64", "fd00:100::12");
        let v4 = hostgw("10.5.2.0/24", "192.168.1.2");
        let installed = KernelRoute::ours(&v6);
        assert_eq!(installed.priority, 1024, "what the kernel reports for IPv6");
        let mut want = desired(&[v4, v6]);
        want.networks = vec![net("10.5.0.0/16"), net("fd00:20::/48")];
        assert_eq!(want.families(), vec![Family::V4, Family::V6]);
        let stale = kroute(&hostgw("fd00:20:0:9::/64", "fd00:100::19"), ROUTE_PROTOCOL);
        let snap = KernelState::new(vec![installed, stale], vec![], vec![]);
        assert_eq!(
            plan(&want, &snap).ops,
            vec![Op::AddRoute(v4), Op::DelRoute(stale)]
        );
    }

    #[test]
    fn routes_with_another_metric_do_not_collide() {
        let a = hostgw("10.5.2.0/24", "192.168.1.2");
        let mut other = kroute(&hostgw("10.5.2.0/24", "192.168.1.77"), 3);
        other.priority = 100;
        let snap = KernelState::new(vec![other], vec![], vec![]);
        assert_eq!(plan(&desired(&[a]), &snap).ops, vec![Op::AddRoute(a)]);
    }

    fn vxlan_peer(state: &mut DesiredState, subnet: &str, vtep: &str, public: &str) {
        let subnet = net(subnet);
        state.neighbours.insert(subnet.network(), mac(vtep));
        state.fdb.insert(mac(vtep), ip(public));
        state.routes.insert(
            subnet,
            Route {
                dst: subnet,
                gateway: subnet.network(),
                oif: 9,
                onlink: true,
                nexthop: None,
            },
        );
    }

    #[test]
    fn vxlan_peer_is_programmed_neighbour_fdb_route_and_removed_in_reverse() {
        let mut want = on_vtep9();
        vxlan_peer(&mut want, "10.5.2.0/24", "02:00:00:00:00:02", "192.168.1.2");
        let p = plan(&want, &KernelState::default());
        let route = want.routes[&net("10.5.2.0/24")];
        assert_eq!(
            p.ops,
            vec![
                Op::SetNeighbour {
                    link: 9,
                    ip: ip("10.5.2.0"),
                    mac: mac("02:00:00:00:00:02"),
                    existed: false
                },
                Op::SetFdb {
                    link: 9,
                    mac: mac("02:00:00:00:00:02"),
                    remote: ip("192.168.1.2"),
                    existed: false
                },
                Op::AddRoute(route),
            ]
        );
        let snap = KernelState::new(
            vec![kroute(&route, ROUTE_PROTOCOL)],
            vec![(ip("10.5.2.0"), mac("02:00:00:00:00:02"))],
            vec![(mac("02:00:00:00:00:02"), ip("192.168.1.2"))],
        );
        assert_eq!(plan(&want, &snap), Plan::default());
        let empty = on_vtep9();
        assert_eq!(
            plan(&empty, &snap).ops,
            vec![
                Op::DelRoute(kroute(&route, ROUTE_PROTOCOL)),
                Op::DelFdb {
                    link: 9,
                    mac: mac("02:00:00:00:00:02"),
                    remote: ip("192.168.1.2")
                },
                Op::DelNeighbour {
                    link: 9,
                    ip: ip("10.5.2.0")
                },
            ]
        );
    }

    #[test]
    fn changed_vtep_mac_replaces_neighbour_and_drops_old_fdb() {
        let mut want = on_vtep9();
        vxlan_peer(&mut want, "10.5.2.0/24", "02:00:00:00:00:03", "192.168.1.2");
        let route = want.routes[&net("10.5.2.0/24")];
        let snap = KernelState::new(
            vec![kroute(&route, ROUTE_PROTOCOL)],
            vec![(ip("10.5.2.0"), mac("02:00:00:00:00:02"))],
            vec![
                (mac("02:00:00:00:00:02"), ip("192.168.1.2")),
                (mac("00:00:00:00:00:00"), ip("192.168.1.50")),
            ],
        );
        assert_eq!(
            plan(&want, &snap).ops,
            vec![
                Op::SetNeighbour {
                    link: 9,
                    ip: ip("10.5.2.0"),
                    mac: mac("02:00:00:00:00:03"),
                    existed: true
                },
                Op::SetFdb {
                    link: 9,
                    mac: mac("02:00:00:00:00:03"),
                    remote: ip("192.168.1.2"),
                    existed: false
                },
                Op::DelFdb {
                    link: 9,
                    mac: mac("02:00:00:00:00:02"),
                    remote: ip("192.168.1.2")
                },
            ]
        );
    }

    /// A kernel in memory: routes and nexthop objects, enough to drive [`run`].
    #[derive(Default)]
    struct FakeKernel {
        routes: RefCell<Vec<KernelRoute>>,
        nexthops: RefCell<BTreeMap<u32, KernelNexthop>>,
        unreachable: Vec<IpAddr>,
        writes: RefCell<usize>,
    }

    impl Kernel for FakeKernel {
        async fn routes(&self, family: Family) -> Result<Vec<KernelRoute>, NetlinkError> {
            let routes = self.routes.borrow();
            let of_family = routes.iter().filter(|r| Family::of_net(&r.dst) == family);
            Ok(of_family.copied().collect())
        }
        async fn neighbours(&self, _: u32, _: Family) -> Result<Vec<(IpAddr, Mac)>, NetlinkError> {
            Ok(Vec::new())
        }
        async fn fdb(&self, _: u32) -> Result<Vec<(Mac, IpAddr)>, NetlinkError> {
            Ok(Vec::new())
        }
        async fn nexthops(&self) -> Result<Vec<KernelNexthop>, NetlinkError> {
            Ok(self.nexthops.borrow().values().copied().collect())
        }
        async fn apply(&self, op: &Op) -> Result<(), NetlinkError> {
            *self.writes.borrow_mut() += 1;
            let mut routes = self.routes.borrow_mut();
            let mut nexthops = self.nexthops.borrow_mut();
            match op {
                Op::SetNexthop { nexthop, .. } => {
                    nexthops.insert(nexthop.id, KernelNexthop::ours(nexthop));
                }
                Op::DelNexthop(k) => {
                    nexthops.remove(&k.id);
                    routes.retain(|r| r.nh_id != Some(k.id));
                }
                Op::AddRoute(r) | Op::ReplaceRoute(r) => {
                    if self.unreachable.contains(&r.gateway) {
                        return Err(NetlinkError {
                            errno: Some(ENETUNREACH),
                            message: "Network is unreachable (os error 101)".into(),
                        });
                    }
                    routes.retain(|k| k.dst != r.dst);
                    routes.push(KernelRoute::ours(r));
                }
                Op::DelRoute(k) => routes.retain(|x| x != k),
                _ => unreachable!("routes only"),
            }
            Ok(())
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn run_converges_and_a_second_run_writes_nothing() {
        let kernel = FakeKernel::default();
        let want = desired(&[
            hostgw("10.5.2.0/24", "192.168.1.2"),
            hostgw("10.5.3.0/24", "192.168.1.3"),
        ]);
        let first = block_on(run(&kernel, &want)).0;
        assert_eq!((first.added, first.converged), (2, true), "{first:?}");
        let writes = *kernel.writes.borrow();
        let second = block_on(run(&kernel, &want)).0;
        assert_eq!(second.writes(), 0);
        assert!(second.converged);
        assert_eq!(*kernel.writes.borrow(), writes);
    }

    #[test]
    fn changes_are_planned_against_the_model_and_only_for_the_changed_peers() {
        let a = hostgw("10.5.2.0/24", "192.168.1.2");
        let b = hostgw("10.5.3.0/24", "192.168.1.3");
        let moved = hostgw("10.5.3.0/24", "192.168.1.9");
        let foreign = kroute(&hostgw("10.5.4.0/24", "192.168.1.99"), 3);
        let kernel = FakeKernel::default();
        kernel.routes.borrow_mut().push(foreign);
        let (first, model) = block_on(run(&kernel, &desired(&[a])));
        assert!(first.converged);
        let mut model = model.unwrap();
        let none = desired(&[]);

        let (added, exact) = block_on(run_changes(&kernel, &mut model, &none, &desired(&[b])));
        assert_eq!((added.added, added.converged, exact), (1, true, true));
        let (replaced, _) = block_on(run_changes(
            &kernel,
            &mut model,
            &desired(&[b]),
            &desired(&[moved]),
        ));
        assert_eq!((replaced.replaced, replaced.writes()), (1, 1));
        let (deleted, _) = block_on(run_changes(&kernel, &mut model, &desired(&[a]), &none));
        assert_eq!((deleted.deleted, deleted.writes()), (1, 1));
        let (same, _) = block_on(run_changes(&kernel, &mut model, &none, &desired(&[moved])));
        assert_eq!(same.writes(), 0);
        assert_eq!(
            model,
            KernelState::new(kernel.routes.borrow().clone(), vec![], vec![])
        );

        let blocked = hostgw("10.5.4.0/24", "192.168.1.4");
        let (conflict, _) = block_on(run_changes(
            &kernel,
            &mut model,
            &none,
            &desired(&[blocked]),
        ));
        assert!(!conflict.converged);
        assert_eq!(conflict.writes(), 0);
        assert!(kernel.routes.borrow().contains(&foreign));
    }

    fn nexthop_style(routes: &[Route]) -> DesiredState {
        desired(routes).with_route_style(crate::RouteStyle::Nexthop)
    }

    #[test]
    fn nexthop_style_creates_objects_before_routes_and_a_second_run_writes_nothing() {
        let a = hostgw("10.5.2.0/24", "192.168.1.2");
        let v6 = hostgw("fd00:5:0:2::/64", "fd00:1::2");
        let want = nexthop_style(&[a, v6]);
        let id = u32::from(std::net::Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(want.routes[&a.dst].nexthop, Some(id));
        assert_eq!(
            want.routes[&v6.dst].nexthop, None,
            "IPv6 routes stay classic"
        );
        let unspecified = nexthop_style(&[hostgw("10.5.9.0/24", "0.0.0.0")]);
        assert!(
            unspecified.nexthops.is_empty(),
            "id 0: the kernel's to choose"
        );
        let kernel = FakeKernel::default();
        let first = block_on(run(&kernel, &want)).0;
        assert!(first.converged, "{first:?}");
        assert_eq!(first.changed[&(ObjectKind::Nexthop, Change::Added)], 1);
        assert_eq!(first.changed[&(ObjectKind::Route, Change::Added)], 2);
        let p = plan(&want, &KernelState::default());
        assert!(matches!(p.ops[0], Op::SetNexthop { .. }), "{:?}", p.ops);
        let writes = *kernel.writes.borrow();
        let second = block_on(run(&kernel, &want)).0;
        assert!(second.converged && second.writes() == 0, "{second:?}");
        assert_eq!(*kernel.writes.borrow(), writes);
    }

    #[test]
    fn a_vxlan_route_points_to_an_onlink_object_on_the_vtep() {
        let mut want = on_vtep9();
        vxlan_peer(&mut want, "10.5.2.0/24", "02:00:00:00:00:02", "192.168.1.2");
        let want = want.with_route_style(crate::RouteStyle::Nexthop);
        let id = want.routes[&net("10.5.2.0/24")].nexthop.unwrap();
        let object = want.nexthops[&id];
        assert_eq!(
            (object.gateway, object.oif, object.onlink),
            (ip("10.5.2.0"), 9, true)
        );
        let ops = plan(&want, &KernelState::default()).ops;
        let phases: Vec<u8> = ops.iter().map(Op::phase).collect();
        assert_eq!(
            phases,
            [0, 1, 2, 3],
            "neighbour, FDB entry, object, route: {ops:?}"
        );
    }

    #[test]
    fn switching_route_style_replaces_the_routes_and_collects_the_objects() {
        let a = hostgw("10.5.2.0/24", "192.168.1.2");
        let kernel = FakeKernel::default();
        assert!(block_on(run(&kernel, &desired(&[a]))).0.converged);
        let to_nexthops = block_on(run(&kernel, &nexthop_style(&[a]))).0;
        assert_eq!(to_nexthops.replaced, 1, "{to_nexthops:?}");
        assert_eq!(kernel.nexthops.borrow().len(), 1);
        let back = block_on(run(&kernel, &desired(&[a]))).0;
        assert_eq!((back.replaced, back.deleted), (1, 1), "{back:?}");
        assert!(kernel.nexthops.borrow().is_empty());
        assert_eq!(
            kernel.routes.borrow().clone(),
            vec![kroute(&a, ROUTE_PROTOCOL)]
        );
    }

    #[test]
    fn a_removed_peers_object_goes_unless_another_route_still_points_to_it() {
        let a = hostgw("10.5.2.0/24", "192.168.1.2");
        let b = hostgw("10.5.3.0/24", "192.168.1.3");
        let twin = hostgw("10.5.4.0/24", "192.168.1.3");
        let kernel = FakeKernel::default();
        let (_, model) = block_on(run(&kernel, &nexthop_style(&[a, b, twin])));
        let mut model = model.unwrap();
        assert_eq!(kernel.nexthops.borrow().len(), 2, "b and twin share one");
        let none = desired(&[]);
        let (gone, exact) = block_on(run_changes(
            &kernel,
            &mut model,
            &nexthop_style(&[b]),
            &none,
        ));
        assert_eq!((gone.deleted, exact), (1, true), "only b's route: {gone:?}");
        assert_eq!(kernel.nexthops.borrow().len(), 2);
        let (last, _) = block_on(run_changes(
            &kernel,
            &mut model,
            &nexthop_style(&[twin]),
            &none,
        ));
        assert_eq!(last.deleted, 2, "twin's route and the object: {last:?}");
        assert_eq!(kernel.nexthops.borrow().len(), 1);
        assert_eq!(
            model,
            block_on(dump_state(&kernel, &nexthop_style(&[a]))).unwrap()
        );
    }

    #[test]
    fn an_object_of_another_program_with_our_id_is_a_conflict_and_left_alone() {
        let a = hostgw("10.5.2.0/24", "192.168.1.2");
        let want = nexthop_style(&[a]);
        let id = want.routes[&a.dst].nexthop.unwrap();
        let foreign = KernelNexthop {
            protocol: 4,
            ..KernelNexthop::ours(&want.nexthops[&id])
        };
        let snap = KernelState::default().with_nexthops(vec![foreign]);
        let p = plan(&want, &snap);
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert!(p.conflicts[0]
            .message
            .contains(&format!("ip nexthop del id {id}")));
        let other_network = KernelRoute {
            dst: net("10.6.0.0/24"),
            ..kroute(&want.routes[&a.dst], ROUTE_PROTOCOL)
        };
        let mut scoped = desired(&[]);
        scoped.networks = vec![net("10.5.0.0/16")];
        let theirs = KernelState::new(vec![other_network], vec![], vec![])
            .with_nexthops(vec![KernelNexthop::ours(&want.nexthops[&id])]);
        assert!(
            plan(&scoped, &theirs).ops.is_empty(),
            "in use by another network"
        );
    }

    #[test]
    fn nexthop_failures_name_the_kernel_or_the_link() {
        let set = Op::SetNexthop {
            nexthop: Nexthop::for_route(&hostgw("10.5.2.0/24", "192.168.1.2")).unwrap(),
            existed: false,
        };
        let failed = |errno| NetlinkError {
            errno: Some(errno),
            message: "refused".into(),
        };
        let old_kernel = set.explain(&failed(libc::EOPNOTSUPP));
        assert!(old_kernel.contains("--route-style=classic"), "{old_kernel}");
        let no_carrier = set.explain(&failed(libc::ENETDOWN));
        assert!(no_carrier.contains("carrier"), "{no_carrier}");
    }

    #[test]
    fn a_failed_write_leaves_no_model() {
        let kernel = FakeKernel {
            unreachable: vec![ip("10.99.0.5")],
            ..FakeKernel::default()
        };
        let mut model = KernelState::default();
        let want = desired(&[hostgw("10.5.2.0/24", "10.99.0.5")]);
        let (report, exact) = block_on(run_changes(&kernel, &mut model, &desired(&[]), &want));
        assert!(!report.converged && !exact);
    }

    #[test]
    fn unreachable_peer_names_the_fix_and_is_not_converged() {
        let kernel = FakeKernel {
            unreachable: vec![ip("10.99.0.5")],
            ..FakeKernel::default()
        };
        let want = desired(&[hostgw("10.5.2.0/24", "10.99.0.5")]);
        let report = block_on(run(&kernel, &want)).0;
        assert!(!report.converged);
        assert_eq!(report.errors.len(), 1);
        let msg = &report.errors[0].message;
        assert!(
            msg.contains("10.5.2.0/24") && msg.contains("10.99.0.5"),
            "{msg}"
        );
        assert!(
            msg.contains("vxlan") && msg.contains("DirectRouting"),
            "{msg}"
        );
    }

    #[test]
    fn a_persistent_problem_is_logged_once_and_its_end_once() {
        let mut rec = Problems::default();
        let mut want = desired(&[]);
        want.skipped.insert(
            "10.5.4.0/24".parse().unwrap(),
            "Ignoring non-host-gw subnet".into(),
        );
        let failing = Report {
            errors: vec![ObjectError {
                object: "route 10.5.2.0/24 via 10.99.0.5 dev #2".into(),
                message: "peer 10.5.2.0/24 is not on-link".into(),
            }],
            ..Report::default()
        };
        let (first, _) = rec.news(&want, &failing);
        assert_eq!(first.len(), 2, "{first:?}");
        assert_eq!(rec.news(&want, &failing), (vec![], vec![]));
        let (again, recovered) = rec.news(&want, &Report::default());
        assert!(again.is_empty());
        assert_eq!(
            recovered,
            vec!["route 10.5.2.0/24 via 10.99.0.5 dev #2: ok now"]
        );
    }
}
