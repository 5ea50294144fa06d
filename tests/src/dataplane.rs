//! Helpers for data-plane tests that drive the `backends` crate against the real kernel in a
//! namespace: peers and leases from short strings, an external interface, a netlink runtime.

use std::future::Future;
use std::net::Ipv4Addr;

use crate::netns::Netns;
use backends::{ClusterNetworks, ExternalInterface, Netlink};
use serde_json::Value;
use subnet::{BackendConfig, Lease, LeaseAttrs, LeaseEvent, PeerSet, SubnetKey};

/// Runs `f` with a netlink connection inside `ns`, on a current-thread tokio runtime.
pub fn in_ns<F, Fut, R>(ns: &Netns, f: F) -> R
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = R>,
    R: Send,
{
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let nl = Netlink::connect().expect("netlink connection");
            f(nl).await
        })
    })
}

/// A host namespace with `eth0` (one end of a veth pair whose other end `eth0p` stays in the
/// same namespace) holding `cidr`.
pub fn host_with_eth0(role: &str, cidr: &str) -> Netns {
    let ns = Netns::new(role);
    ns.sh(&format!(
        "ip link add eth0 type veth peer name eth0p && ip link set eth0p up && \
         ip link set eth0 up && ip addr add {cidr} dev eth0"
    ));
    ns
}

/// The external interface `eth0` as the daemon would describe it (index and MTU are re-read by
/// `Backend::init`).
pub fn eth0(addr: &str) -> ExternalInterface {
    ExternalInterface {
        name: "eth0".into(),
        index: 0,
        addr: Some(addr.parse().expect("address")),
        addr6: None,
        mtu: 1500,
    }
}

/// An IPv4-only cluster network.
pub fn v4_network(cidr: &str) -> ClusterNetworks {
    ClusterNetworks {
        v4: Some(cidr.parse().expect("network")),
        v6: None,
    }
}

/// A backend config as the network config decoder produces it.
pub fn backend_config(raw: Value) -> BackendConfig {
    BackendConfig {
        backend_type: raw["Type"].as_str().unwrap_or_default().to_lowercase(),
        raw,
    }
}

/// A peer lease event.
pub fn peer(subnet: &str, public_ip: &str, kind: &str, data: Option<Value>) -> LeaseEvent {
    let mut attrs = LeaseAttrs::new(public_ip.parse().expect("ip"), kind);
    attrs.backend_data = data.as_ref().map(subnet::BackendData::new);
    LeaseEvent::Put(Lease {
        key: SubnetKey::v4(subnet.parse().expect("subnet")),
        attrs,
        expiration: None,
    })
}

/// The removal event for `subnet`.
pub fn gone(subnet: &str) -> LeaseEvent {
    LeaseEvent::Removed(SubnetKey::v4(subnet.parse().expect("subnet")))
}

/// Our own lease.
pub fn own_lease(subnet: &str, public_ip: Ipv4Addr) -> Lease {
    Lease {
        key: SubnetKey::v4(subnet.parse().expect("subnet")),
        attrs: LeaseAttrs::new(public_ip, "vxlan"),
        expiration: None,
    }
}

/// A peer set for own subnet `own` with `events` applied.
pub fn peers(own: &str, events: &[LeaseEvent]) -> PeerSet {
    let mut set = PeerSet::new(own.parse().expect("subnet"));
    for e in events {
        set.apply(e);
    }
    set
}

/// The `ip route` line for `dst` (empty if none).
pub fn route_of(ns: &Netns, dst: &str) -> String {
    ns.sh(&format!("ip route show {dst}")).trim().to_string()
}
