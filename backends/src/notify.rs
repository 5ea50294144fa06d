//! Kernel change notifications (rtnetlink multicast groups), so the daemon can re-run setup and
//! reconcile when the vxlan device, the external interface, an address or one of our routes or
//! neighbours changes under us.

use std::os::fd::{AsRawFd, RawFd};

use futures::channel::mpsc::UnboundedReceiver;
use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::SocketAddr;
use rtnetlink::MulticastGroup;

use crate::error::NetlinkError;
use crate::netlink::{kernel_route, link_name, main_table_route};
use crate::nexthop::NexthopChanges;
use crate::sockfilter::keep_wanted_and_foreign;
use crate::ExternalInterface;

/// A kernel change that may concern the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A link appeared, changed (e.g. went up or down) or was removed.
    Link {
        /// Its index.
        index: u32,
        /// Its name, when the kernel sent it.
        name: Option<String>,
        /// Whether it was removed.
        removed: bool,
    },
    /// An address was added to or removed from link `index`.
    Address {
        /// The link.
        index: u32,
    },
    /// A route tagged [`crate::ROUTE_PROTOCOL`] was removed.
    RouteRemoved {
        /// Its destination.
        dst: IpNet,
    },
    /// A route of another protocol was added or replaced one (perhaps ours: `ip route
    /// replace` reports only the new route).
    ForeignRoute {
        /// Its destination.
        dst: IpNet,
    },
    /// A neighbour or FDB entry was removed from link `index`.
    NeighbourRemoved {
        /// The link.
        index: u32,
    },
    /// A nexthop object tagged ours was removed (with the routes that use it), or one of
    /// another protocol was added or replaced one (perhaps ours).
    NexthopChanged {
        /// Its id.
        id: u32,
    },
}

/// What the daemon should do about a [`Notification`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// Nothing that concerns us.
    Ignore,
    /// Run the reconciler.
    Reconcile,
    /// Run `Backend::init` and `Backend::configure` again if `Backend::drift` finds what they
    /// set up changed (our own setup's writes cause such notifications too), then the reconciler.
    Setup,
}

/// A subscription to link, address, route and neighbour changes of the calling
/// thread's network namespace. The kernel drops notifications when the socket buffer overflows,
/// so the daemon must keep its periodic reconcile.
#[derive(Debug)]
pub struct Notifications {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// `None` on a kernel without nexthop objects.
    nexthops: Option<NexthopChanges>,
}

impl Notifications {
    /// Subscribes (to IPv6 address and route changes too with `ipv6`, on a network with IPv6);
    /// spawns the socket's driver task on the current tokio runtime.
    pub fn subscribe(ipv6: bool) -> Result<Notifications, NetlinkError> {
        let mut groups = vec![
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Neigh,
        ];
        if ipv6 {
            groups.extend([MulticastGroup::Ipv6Ifaddr, MulticastGroup::Ipv6Route]);
        }
        let (mut conn, _, messages) = rtnetlink::new_multicast_connection(&groups)?;
        keep_only_wanted(conn.socket_mut().as_raw_fd())?;
        tokio::spawn(conn);
        let nexthops = NexthopChanges::subscribe()
            .inspect_err(|e| tracing::debug!("no nexthop notifications: {e}"))
            .ok();
        Ok(Notifications { messages, nexthops })
    }

    /// The next relevant notification and those already queued behind it; `None` when the
    /// socket closed. One kernel change often arrives as a burst (deleting the vxlan device
    /// removes its routes and neighbours before the link itself), and acting on its first part
    /// alone would write to a device that is gone. Cancel-safe: nothing is awaited once a
    /// notification was taken.
    pub async fn next_burst(&mut self) -> Option<Vec<Notification>> {
        let mut burst = vec![self.next().await?];
        while let Some(Some(n)) = self.next().now_or_never() {
            burst.push(n);
        }
        Some(burst)
    }

    /// The next relevant notification; `None` when the socket closed.
    pub async fn next(&mut self) -> Option<Notification> {
        let Notifications { messages, nexthops } = self;
        loop {
            let changed = async {
                match nexthops.as_mut() {
                    Some(subscription) => subscription.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = messages.next() => {
                    let (msg, _) = message?;
                    if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                        if let Some(n) = convert(inner) {
                            return Some(n);
                        }
                    }
                }
                id = changed => match id {
                    Some(id) => return Some(Notification::NexthopChanged { id }),
                    None => *nexthops = None,
                },
            }
        }
    }
}

/// The message types [`convert`] turns into notifications.
const WANTED: [u16; 6] = [
    libc::RTM_NEWLINK,
    libc::RTM_DELLINK,
    libc::RTM_NEWADDR,
    libc::RTM_DELADDR,
    libc::RTM_DELROUTE,
    libc::RTM_DELNEIGH,
];

/// Where `rtm_protocol` is in an RTM_NEWROUTE message: after the 16-byte netlink header, the
/// sixth byte of `struct rtmsg`.
const RTM_PROTOCOL_OFFSET: u32 = 16 + 5;

/// The route socket's filter ([`keep_wanted_and_foreign`]): the wanted types, and RTM_NEWROUTE
/// for routes of another protocol than ours.
fn keep_only_wanted(fd: RawFd) -> Result<(), NetlinkError> {
    keep_wanted_and_foreign(fd, &WANTED, (libc::RTM_NEWROUTE, RTM_PROTOCOL_OFFSET))
}

fn convert(msg: RouteNetlinkMessage) -> Option<Notification> {
    use RouteNetlinkMessage as M;
    match msg {
        M::NewLink(l) => Some(Notification::Link {
            index: l.header.index,
            name: link_name(&l).map(str::to_string),
            removed: false,
        }),
        M::DelLink(l) => Some(Notification::Link {
            index: l.header.index,
            name: link_name(&l).map(str::to_string),
            removed: true,
        }),
        M::NewAddress(a) | M::DelAddress(a) => Some(Notification::Address {
            index: a.header.index,
        }),
        M::DelRoute(r) => kernel_route(&r)
            .filter(|k| k.is_ours())
            .map(|k| Notification::RouteRemoved { dst: k.dst }),
        // The socket filter lets through only routes of other protocols.
        M::NewRoute(r) => main_table_route(&r)
            .filter(|k| !k.is_ours())
            .map(|k| Notification::ForeignRoute { dst: k.dst }),
        M::DelNeighbour(n) => Some(Notification::NeighbourRemoved {
            index: n.header.ifindex,
        }),
        _ => None,
    }
}

/// The reaction of a backend using `ext` and, for vxlan, the devices `vteps` (name, index).
pub(crate) fn react(
    n: &Notification,
    ext: &ExternalInterface,
    vteps: &[(&str, Option<u32>)],
) -> Reaction {
    let is_ext =
        |index: u32, name: Option<&str>| index == ext.index || name == Some(ext.name.as_str());
    let is_vtep = |index: u32, name: Option<&str>| {
        vteps
            .iter()
            .any(|(vname, vindex)| *vindex == Some(index) || name == Some(*vname))
    };
    match n {
        Notification::Link { index, name, .. } => {
            if is_ext(*index, name.as_deref()) || is_vtep(*index, name.as_deref()) {
                Reaction::Setup
            } else {
                Reaction::Ignore
            }
        }
        Notification::Address { index } => {
            if is_ext(*index, None) || is_vtep(*index, None) {
                Reaction::Setup
            } else {
                Reaction::Ignore
            }
        }
        Notification::RouteRemoved { .. }
        | Notification::ForeignRoute { .. }
        | Notification::NexthopChanged { .. } => Reaction::Reconcile,
        Notification::NeighbourRemoved { index } => {
            if is_vtep(*index, None) {
                Reaction::Reconcile
            } else {
                Reaction::Ignore
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Notification {
        Notification::Link {
            index,
            name: Some(name.into()),
            removed: true,
        }
    }

    #[test]
    fn setup_for_our_links_reconcile_for_our_objects_ignore_the_rest() {
        let ext = ExternalInterface {
            name: "eth0".into(),
            index: 2,
            addr: Some("192.168.1.1".parse().unwrap()),
            addr6: None,
            mtu: 1500,
        };
        let vtep = &[("flannel.1", Some(9)), ("flannel-v6.1", Some(10))][..];
        assert_eq!(react(&link(2, "eth0"), &ext, vtep), Reaction::Setup);
        assert_eq!(
            react(&link(5, "eth0"), &ext, vtep),
            Reaction::Setup,
            "recreated"
        );
        assert_eq!(react(&link(9, "flannel.1"), &ext, vtep), Reaction::Setup);
        assert_eq!(react(&link(7, "veth7"), &ext, vtep), Reaction::Ignore);
        assert_eq!(
            react(&link(10, "flannel-v6.1"), &ext, vtep),
            Reaction::Setup
        );
        assert_eq!(react(&link(9, "flannel.1"), &ext, &[]), Reaction::Ignore);
        assert_eq!(
            react(&Notification::Address { index: 9 }, &ext, vtep),
            Reaction::Setup
        );
        assert_eq!(
            react(&Notification::Address { index: 7 }, &ext, vtep),
            Reaction::Ignore
        );
        let dst = "10.5.2.0/24".parse().unwrap();
        assert_eq!(
            react(&Notification::RouteRemoved { dst }, &ext, &[]),
            Reaction::Reconcile
        );
        assert_eq!(
            react(&Notification::NeighbourRemoved { index: 9 }, &ext, vtep),
            Reaction::Reconcile
        );
        assert_eq!(
            react(&Notification::NeighbourRemoved { index: 2 }, &ext, vtep),
            Reaction::Ignore
        );
    }
}
