//! What a peer lease must satisfy before any kernel object is made for it. Every lease comes from
//! another machine through etcd and may be wrong or hostile: a subnet outside the Network, one
//! covering this host's LAN or the default route, a PublicIP of loopback or multicast. Such a lease
//! is rejected here, in one place, before it reaches the backends. Pure; no I/O. The same checks
//! apply to both halves of a dual-stack lease.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::family::Subnet;
use crate::lease::{Lease, SubnetKey};

/// Why a peer lease is not programmed. Each message names the lease's value and what would be
/// valid; the caller adds the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The subnet is not inside the cluster Network.
    #[error("its subnet {subnet} is outside the Network {network}")]
    OutsideNetwork {
        /// The lease's subnet.
        subnet: IpNet,
        /// The Network of the config.
        network: IpNet,
    },
    /// The subnet's length is not the config's SubnetLen.
    #[error("its subnet {subnet} is a /{}, but SubnetLen is {subnet_len}", subnet.prefix_len())]
    WrongLength {
        /// The lease's subnet.
        subnet: IpNet,
        /// SubnetLen of the config.
        subnet_len: u8,
    },
    /// The subnet address has host bits set.
    #[error("its subnet {subnet} is not aligned to its length (did you mean {}?)", subnet.trunc())]
    Unaligned {
        /// The lease's subnet.
        subnet: IpNet,
    },
    /// The subnet overlaps this host's own subnet without being it.
    #[error("its subnet {subnet} overlaps this host's subnet {own}")]
    OverlapsOwnSubnet {
        /// The lease's subnet.
        subnet: IpNet,
        /// Our own lease's subnet.
        own: IpNet,
    },
    /// Another host's lease, seen first, holds the same subnet (two hosts that chose at the same
    /// time; the later one gives way and its lease goes).
    #[error("its subnet {subnet} is also in lease {holder} of another host, seen first")]
    SubnetShared {
        /// The subnet both leases hold.
        subnet: IpNet,
        /// The lease that holds it and is programmed.
        holder: SubnetKey,
    },
    /// The subnet overlaps a network this host is directly connected to.
    #[error("its subnet {subnet} overlaps {local}, a network this host is connected to")]
    OverlapsLocalNetwork {
        /// The lease's subnet.
        subnet: IpNet,
        /// The connected network.
        local: IpNet,
    },
    /// The PublicIP is not an address a peer host can have.
    #[error("its {field} {ip} is {what}, not a unicast host address")]
    BadPublicIp {
        /// `PublicIP` or `PublicIPv6`.
        field: &'static str,
        /// The lease's address.
        ip: IpAddr,
        /// What kind of address it is instead.
        what: &'static str,
    },
    /// The PublicIP lies inside a pod subnet (the lease's own or ours): a pod address.
    #[error("its {field} {ip} is inside the pod subnet {subnet}, not a host address")]
    PublicIpInPodSubnet {
        /// `PublicIP` or `PublicIPv6`.
        field: &'static str,
        /// The lease's address.
        ip: IpAddr,
        /// The pod subnet holding it.
        subnet: IpNet,
    },
    /// The PublicIP is this host's own.
    #[error("its {field} {ip} is this host's own {field}")]
    OwnPublicIp {
        /// `PublicIP` or `PublicIPv6`.
        field: &'static str,
        /// The lease's address.
        ip: IpAddr,
    },
    /// The network has IPv6 but the lease's IPv6 half lacks its public address.
    #[error("it has the IPv6 subnet {subnet} but no PublicIPv6 to reach it through")]
    NoPublicIpv6 {
        /// The lease's IPv6 subnet.
        subnet: Ipv6Net,
    },
    /// The network is IPv6-only but the lease has no IPv6 subnet.
    #[error("it has no IPv6 subnet, and the network is IPv6-only")]
    NoIpv6Subnet,
}

/// The facts one half (IPv4 or IPv6) of a peer lease is checked against: the config's range, our
/// own subnet and address of that family, and the networks of that family this host is
/// connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPolicy<N: Subnet> {
    /// The cluster Network (`Network` or `IPv6Network`).
    pub network: N,
    /// SubnetLen (or IPv6SubnetLen) of the config.
    pub subnet_len: u8,
    /// Our own lease's subnet of this family.
    pub own_subnet: N,
    /// Our own public address of this family.
    pub own_public_ip: N::Addr,
    /// Networks of this family this host is connected to (see
    /// [`LeasePolicy::with_local_networks`]).
    pub local_networks: Vec<N>,
}

impl<N: Subnet> FamilyPolicy<N> {
    /// A policy with no connected networks known yet.
    pub fn new(network: N, subnet_len: u8, own_subnet: N, own_public_ip: N::Addr) -> Self {
        FamilyPolicy {
            network,
            subnet_len,
            own_subnet,
            own_public_ip,
            local_networks: Vec::new(),
        }
    }

    /// Keeps the connected networks that protect this host: all but host routes, the networks
    /// inside our own subnet (the pod bridge's address) and the networks that contain the whole
    /// cluster Network: the operator gave that range to pods (a flat 10.0.0.0/8 LAN around
    /// Network 10.244.0.0/16, or docker0's default 172.17.0.1/16 before docker gets `--bip`), and
    /// peer routes inside it are meant to be more specific.
    fn set_local_networks(&mut self, networks: impl IntoIterator<Item = N>) {
        let (own, cluster) = (self.own_subnet, self.network);
        let mut local: Vec<N> = networks
            .into_iter()
            .map(|n| n.truncated())
            .filter(|n| n.prefix() < N::BITS && !own.covers(n) && !n.covers(&cluster))
            .collect();
        local.sort();
        local.dedup();
        self.local_networks = local;
    }

    /// Whether `subnet` is a subnet this config could have handed out: inside the Network, of
    /// SubnetLen, aligned. Leases failing this never take part in allocation.
    pub fn check_shape(&self, subnet: N) -> Result<(), Rejection> {
        if subnet.truncated() != subnet {
            return Err(Rejection::Unaligned {
                subnet: subnet.into(),
            });
        }
        if !self.network.covers(&subnet) {
            let network = self.network.into();
            return Err(Rejection::OutsideNetwork {
                subnet: subnet.into(),
                network,
            });
        }
        if subnet.prefix() != self.subnet_len {
            let subnet_len = self.subnet_len;
            return Err(Rejection::WrongLength {
                subnet: subnet.into(),
                subnet_len,
            });
        }
        Ok(())
    }

    /// Checks one half of a peer lease: its subnet and the address it is reached through.
    pub fn check(
        &self,
        subnet: N,
        public_ip: N::Addr,
        field: &'static str,
    ) -> Result<(), Rejection> {
        self.check_subnet(subnet)?;
        self.check_public_ip(subnet, public_ip, field)
    }

    fn check_subnet(&self, subnet: N) -> Result<(), Rejection> {
        self.check_shape(subnet)?;
        if subnet.overlaps(&self.own_subnet) {
            let own = self.own_subnet.into();
            return Err(Rejection::OverlapsOwnSubnet {
                subnet: subnet.into(),
                own,
            });
        }
        match self.local_networks.iter().find(|l| subnet.overlaps(l)) {
            Some(local) => Err(Rejection::OverlapsLocalNetwork {
                subnet: subnet.into(),
                local: (*local).into(),
            }),
            None => Ok(()),
        }
    }

    fn check_public_ip(
        &self,
        subnet: N,
        ip: N::Addr,
        field: &'static str,
    ) -> Result<(), Rejection> {
        if let Some(what) = N::not_unicast(ip) {
            return Err(Rejection::BadPublicIp {
                field,
                ip: ip.into(),
                what,
            });
        }
        // A host may sit inside a large Network (10.0.0.0/8), but never inside a pod subnet.
        if let Some(pods) = [subnet, self.own_subnet].into_iter().find(|s| s.holds(ip)) {
            let subnet = pods.into();
            return Err(Rejection::PublicIpInPodSubnet {
                field,
                ip: ip.into(),
                subnet,
            });
        }
        if ip == self.own_public_ip {
            return Err(Rejection::OwnPublicIp {
                field,
                ip: ip.into(),
            });
        }
        Ok(())
    }
}

/// The facts a peer lease is checked against: the IPv4 policy and, on a dual-stack network, the
/// IPv6 one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    /// The IPv4 half; `None` on an IPv6-only network (a lease's IPv4 half is then ignored).
    pub v4: Option<FamilyPolicy<Ipv4Net>>,
    /// The IPv6 half; `None` when the network has no IPv6 (a lease's IPv6 half is then ignored).
    pub v6: Option<FamilyPolicy<Ipv6Net>>,
}

impl LeasePolicy {
    /// An IPv4 policy with no connected networks known yet.
    pub fn new(
        network: Ipv4Net,
        subnet_len: u8,
        own_subnet: Ipv4Net,
        own_public_ip: Ipv4Addr,
    ) -> Self {
        LeasePolicy {
            v4: Some(FamilyPolicy::new(
                network,
                subnet_len,
                own_subnet,
                own_public_ip,
            )),
            v6: None,
        }
    }

    /// A policy for an IPv6-only network.
    pub fn ipv6_only(v6: FamilyPolicy<Ipv6Net>) -> Self {
        LeasePolicy {
            v4: None,
            v6: Some(v6),
        }
    }

    /// The subnet that names our own lease ([`crate::Lease::id`]).
    pub fn own_id(&self) -> IpNet {
        match (&self.v4, &self.v6) {
            (Some(v4), _) => v4.own_subnet.into(),
            (None, Some(v6)) => v6.own_subnet.into(),
            (None, None) => crate::lease::NO_IPV4.into(),
        }
    }

    /// The same policy with an IPv6 half.
    pub fn with_ipv6(mut self, v6: FamilyPolicy<Ipv6Net>) -> Self {
        self.v6 = Some(v6);
        self
    }

    /// The same policy for our lease moved to `key` (its subnets of both families).
    pub fn moved_to(&self, key: SubnetKey) -> LeasePolicy {
        let mut policy = self.clone();
        if let Some(v4) = policy.v4.as_mut() {
            v4.own_subnet = key.ipv4;
        }
        if let (Some(v6), Some(subnet)) = (policy.v6.as_mut(), key.ipv6) {
            v6.own_subnet = subnet;
        }
        policy
    }

    /// The same policy with the host's connected networks of both families (its addresses'
    /// networks), filtered per family as [`FamilyPolicy`] describes.
    pub fn with_local_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = networks
            .into_iter()
            .partition(|n| matches!(n, IpNet::V4(_)));
        if let Some(policy) = self.v4.as_mut() {
            policy.set_local_networks(v4.into_iter().filter_map(|n| match n {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            }));
        }
        if let Some(policy) = self.v6.as_mut() {
            policy.set_local_networks(v6.into_iter().filter_map(|n| match n {
                IpNet::V6(n) => Some(n),
                IpNet::V4(_) => None,
            }));
        }
        self
    }

    /// All connected networks kept, both families, for the log.
    pub fn local_networks(&self) -> Vec<IpNet> {
        let v4 = self
            .v4
            .iter()
            .flat_map(|p| p.local_networks.iter().map(|n| IpNet::from(*n)));
        let v6 = self
            .v6
            .iter()
            .flat_map(|p| p.local_networks.iter().map(|n| IpNet::from(*n)));
        v4.chain(v6).collect()
    }

    /// Checks a peer lease; `Ok` when it may be programmed. On a dual-stack network a lease
    /// without an IPv6 half (an IPv4-only host) passes and is reached over IPv4 only; an IPv6
    /// half that fails rejects the whole lease. On an IPv6-only network the IPv6 half is the
    /// lease.
    pub fn check(&self, lease: &Lease) -> Result<(), Rejection> {
        if let Some(v4) = &self.v4 {
            v4.check(lease.subnet(), lease.attrs.public_ip, "PublicIP")?;
        }
        match (&self.v6, lease.key.ipv6) {
            (Some(policy), Some(subnet)) => {
                let ip = (lease.attrs.public_ipv6).ok_or(Rejection::NoPublicIpv6 { subnet })?;
                policy.check(subnet, ip, "PublicIPv6")
            }
            (Some(_), None) if self.v4.is_none() => Err(Rejection::NoIpv6Subnet),
            _ => Ok(()),
        }
    }
}

/// Whether two networks share any address.
pub fn overlaps<N: Subnet>(a: N, b: N) -> bool {
    a.overlaps(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{LeaseAttrs, SubnetKey};

    fn policy() -> LeasePolicy {
        LeasePolicy::new(
            "10.244.0.0/16".parse().unwrap(),
            24,
            "10.244.5.0/24".parse().unwrap(),
            "192.168.1.10".parse().unwrap(),
        )
        .with_local_networks([
            "192.168.1.10/24".parse().unwrap(),
            "10.244.7.0/24".parse().unwrap(),
            "10.244.5.1/24".parse().unwrap(),
            "10.244.9.0/32".parse().unwrap(),
        ])
    }

    fn lease(key: &str, ip: &str) -> Lease {
        Lease {
            key: key.parse::<SubnetKey>().unwrap(),
            attrs: LeaseAttrs::new(ip.parse().unwrap(), "host-gw"),
            expiration: None,
        }
    }

    fn check(key: &str, ip: &str) -> Result<(), Rejection> {
        policy().check(&lease(key, ip))
    }

    #[test]
    fn ordinary_peer_leases_pass() {
        assert_eq!(check("10.244.6.0-24", "192.168.1.11"), Ok(()));
        assert_eq!(check("10.244.255.0-24", "203.0.113.9"), Ok(()));
        // Hosts may sit inside a large Network, outside every pod subnet.
        assert_eq!(check("10.244.6.0-24", "10.244.200.9"), Ok(()));
        // The vxlan device's /32 is not a LAN.
        assert_eq!(check("10.244.9.0-24", "192.168.1.12"), Ok(()));
    }

    #[test]
    fn connected_networks_keep_lans_and_drop_host_routes_and_our_pod_bridge() {
        let want: Vec<Ipv4Net> = vec![
            "10.244.7.0/24".parse().unwrap(),
            "192.168.1.0/24".parse().unwrap(),
        ];
        assert_eq!(policy().v4.unwrap().local_networks, want);
    }

    #[test]
    fn networks_around_the_whole_cluster_network_do_not_reject_peers() {
        let flat = policy().with_local_networks([
            "10.0.0.5/8".parse().unwrap(),
            "10.244.0.1/16".parse().unwrap(),
        ]);
        assert!(
            flat.local_networks().is_empty(),
            "{:?}",
            flat.local_networks()
        );
        assert_eq!(flat.check(&lease("10.244.6.0-24", "10.1.2.3")), Ok(()));
        // A LAN inside the Network is still protected.
        let inside = policy().with_local_networks(["10.244.7.9/24".parse().unwrap()]);
        assert!(inside
            .check(&lease("10.244.7.0-24", "192.168.1.11"))
            .is_err());
    }

    #[test]
    fn hostile_subnets_are_rejected_with_the_reason() {
        let cases = [
            ("192.168.1.0-24", "outside the Network 10.244.0.0/16"),
            ("0.0.0.0-0", "outside the Network"),
            ("10.244.0.0-16", "is a /16, but SubnetLen is 24"),
            ("10.244.5.0-25", "is a /25, but SubnetLen is 24"),
            (
                "10.244.6.7-24",
                "not aligned to its length (did you mean 10.244.6.0/24?)",
            ),
            (
                "10.244.7.0-24",
                "overlaps 10.244.7.0/24, a network this host is connected to",
            ),
        ];
        for (key, why) in cases {
            let err = check(key, "192.168.1.11").unwrap_err();
            assert!(err.to_string().contains(why), "{key}: {err}");
        }
    }

    #[test]
    fn a_lease_overlapping_our_subnet_is_rejected() {
        let mut p = policy();
        p.v4.as_mut().unwrap().subnet_len = 25;
        let err = p
            .check(&lease("10.244.5.128-25", "192.168.1.11"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "its subnet 10.244.5.128/25 overlaps this host's subnet 10.244.5.0/24"
        );
    }

    #[test]
    fn hostile_public_ips_are_rejected() {
        let cases = [
            ("127.0.0.1", "a loopback address"),
            ("224.0.0.1", "a multicast address"),
            ("0.0.0.0", "the unspecified address"),
            ("255.255.255.255", "the broadcast address"),
            ("169.254.1.1", "a link-local address"),
            ("0.1.2.3", "0.0.0.0/8"),
            ("240.0.0.1", "240.0.0.0/4"),
            ("10.244.6.2", "inside the pod subnet 10.244.6.0/24"),
            ("10.244.5.3", "inside the pod subnet 10.244.5.0/24"),
            ("192.168.1.10", "this host's own PublicIP"),
        ];
        for (ip, why) in cases {
            let err = check("10.244.6.0-24", ip).unwrap_err();
            assert!(err.to_string().contains(why), "{ip}: {err}");
        }
    }

    fn dual_policy() -> LeasePolicy {
        let v6 = FamilyPolicy::new(
            "fd00:10::/48".parse().unwrap(),
            64,
            "fd00:10:0:5::/64".parse().unwrap(),
            "fd00:1::10".parse().unwrap(),
        );
        policy().with_ipv6(v6).with_local_networks([
            "fd00:1::10/64".parse().unwrap(),
            "192.168.1.10/24".parse().unwrap(),
        ])
    }

    fn dual(key: &str, v6: Option<&str>) -> Lease {
        let mut lease = lease(key, "192.168.1.11");
        lease.attrs.public_ipv6 = v6.map(|ip| ip.parse().unwrap());
        lease
    }

    #[test]
    fn the_ipv6_half_of_a_dual_stack_lease_is_checked_like_the_ipv4_half() {
        let p = dual_policy();
        assert_eq!(
            p.v6.as_ref().unwrap().local_networks,
            vec!["fd00:1::/64".parse::<Ipv6Net>().unwrap()]
        );
        assert_eq!(
            p.check(&dual("10.244.6.0-24&fd00:10:0:6::-64", Some("fd00:1::11"))),
            Ok(())
        );
        // An IPv4-only peer (flanneld v0.11) is still reached over IPv4.
        assert_eq!(p.check(&dual("10.244.6.0-24", None)), Ok(()));
        let cases = [
            (
                "10.244.6.0-24&fd00:99::-64",
                Some("fd00:1::11"),
                "outside the Network fd00:10::/48",
            ),
            (
                "10.244.6.0-24&fd00:10:0:5::-64",
                Some("fd00:1::11"),
                "overlaps this host's subnet",
            ),
            (
                "10.244.6.0-24&fd00:10:0:600::-56",
                Some("fd00:1::11"),
                "SubnetLen is 64",
            ),
            (
                "10.244.6.0-24&fd00:10:0:6::-64",
                Some("ff02::1"),
                "PublicIPv6 ff02::1 is a multicast",
            ),
            (
                "10.244.6.0-24&fd00:10:0:6::-64",
                Some("fd00:1::10"),
                "this host's own PublicIPv6",
            ),
            (
                "10.244.6.0-24&fd00:10:0:6::-64",
                Some("fd00:10:0:6::1"),
                "inside the pod subnet",
            ),
            ("10.244.6.0-24&fd00:10:0:6::-64", None, "no PublicIPv6"),
        ];
        for (key, ip, why) in cases {
            let err = p.check(&dual(key, ip)).unwrap_err();
            assert!(err.to_string().contains(why), "{key} {ip:?}: {err}");
        }
        // Without IPv6 in the config, the IPv6 half is ignored.
        assert_eq!(
            policy().check(&dual("10.244.6.0-24&fd00:99::-64", None)),
            Ok(())
        );
        // An IPv6-only network checks the IPv6 half alone, and a lease needs one.
        let v6_only = LeasePolicy::ipv6_only(p.v6.clone().unwrap());
        assert_eq!(v6_only.own_id().to_string(), "fd00:10:0:5::/64");
        let mut only6 = dual("0.0.0.0-0&fd00:10:0:6::-64", Some("fd00:1::11"));
        only6.attrs.public_ip = std::net::Ipv4Addr::UNSPECIFIED;
        assert_eq!(v6_only.check(&only6), Ok(()));
        assert_eq!(
            v6_only.check(&dual("10.244.6.0-24", None)),
            Err(Rejection::NoIpv6Subnet)
        );
        let moved = p.moved_to("10.244.8.0-24&fd00:10:0:8::-64".parse().unwrap());
        assert_eq!(moved.v6.unwrap().own_subnet.to_string(), "fd00:10:0:8::/64");
    }
}
