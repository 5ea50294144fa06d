//! What a peer lease must satisfy before any kernel object is made for it. Every lease comes from
//! another machine through etcd and may be wrong or hostile: a subnet outside the Network, one
//! covering this host's LAN or the default route, a PublicIP of loopback or multicast. Such a lease
//! is rejected here, in one place, before it reaches the backends. Pure; no I/O.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::lease::Lease;

/// Why a peer lease is not programmed. Each message names the lease's value and what would be
/// valid; the caller adds the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The subnet is not inside the cluster Network.
    #[error("its subnet {subnet} is outside the Network {network}")]
    OutsideNetwork {
        /// The lease's subnet.
        subnet: Ipv4Net,
        /// The Network of the config.
        network: Ipv4Net,
    },
    /// The subnet's length is not the config's SubnetLen.
    #[error("its subnet {subnet} is a /{}, but SubnetLen is {subnet_len}", subnet.prefix_len())]
    WrongLength {
        /// The lease's subnet.
        subnet: Ipv4Net,
        /// SubnetLen of the config.
        subnet_len: u8,
    },
    /// The subnet address has host bits set.
    #[error("its subnet {subnet} is not aligned to its length (did you mean {}?)", subnet.trunc())]
    Unaligned {
        /// The lease's subnet.
        subnet: Ipv4Net,
    },
    /// The subnet overlaps this host's own subnet without being it.
    #[error("its subnet {subnet} overlaps this host's subnet {own}")]
    OverlapsOwnSubnet {
        /// The lease's subnet.
        subnet: Ipv4Net,
        /// Our own lease's subnet.
        own: Ipv4Net,
    },
    /// The subnet overlaps a network this host is directly connected to.
    #[error("its subnet {subnet} overlaps {local}, a network this host is connected to")]
    OverlapsLocalNetwork {
        /// The lease's subnet.
        subnet: Ipv4Net,
        /// The connected network.
        local: Ipv4Net,
    },
    /// The PublicIP is not an address a peer host can have.
    #[error("its PublicIP {ip} is {what}, not a unicast host address")]
    BadPublicIp {
        /// The lease's PublicIP.
        ip: Ipv4Addr,
        /// What kind of address it is instead.
        what: &'static str,
    },
    /// The PublicIP lies inside a pod subnet (the lease's own or ours): a pod address.
    #[error("its PublicIP {ip} is inside the pod subnet {subnet}, not a host address")]
    PublicIpInPodSubnet {
        /// The lease's PublicIP.
        ip: Ipv4Addr,
        /// The pod subnet holding it.
        subnet: Ipv4Net,
    },
    /// The PublicIP is this host's own.
    #[error("its PublicIP {ip} is this host's own PublicIP")]
    OwnPublicIp {
        /// The lease's PublicIP.
        ip: Ipv4Addr,
    },
}

/// The facts a peer lease is checked against: the config, our own lease, and the networks this
/// host is connected to (its LANs, from the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    /// The cluster Network.
    pub network: Ipv4Net,
    /// SubnetLen of the config.
    pub subnet_len: u8,
    /// Our own lease's subnet (a lease for exactly this subnet is ours, not a peer's).
    pub own_subnet: Ipv4Net,
    /// Our own PublicIP.
    pub own_public_ip: Ipv4Addr,
    /// Networks this host is connected to (see [`LeasePolicy::with_local_networks`]).
    pub local_networks: Vec<Ipv4Net>,
}

impl LeasePolicy {
    /// A policy with no connected networks known yet.
    pub fn new(
        network: Ipv4Net,
        subnet_len: u8,
        own_subnet: Ipv4Net,
        own_public_ip: Ipv4Addr,
    ) -> Self {
        LeasePolicy {
            network,
            subnet_len,
            own_subnet,
            own_public_ip,
            local_networks: Vec::new(),
        }
    }

    /// The same policy with the host's connected networks: those of its IPv4 addresses, except
    /// host routes (/32), the networks inside our own subnet (the pod bridge's address) and the
    /// networks that contain the whole cluster Network: the operator gave that range to pods (a
    /// flat 10.0.0.0/8 LAN around Network 10.244.0.0/16, or docker0's default 172.17.0.1/16 before
    /// docker gets `--bip`), and peer routes inside it are meant to be more specific.
    pub fn with_local_networks(mut self, networks: impl IntoIterator<Item = Ipv4Net>) -> Self {
        let (own, cluster) = (self.own_subnet, self.network);
        let mut local: Vec<Ipv4Net> = networks
            .into_iter()
            .map(|n| n.trunc())
            .filter(|n| n.prefix_len() < 32 && !own.contains(n) && !n.contains(&cluster))
            .collect();
        local.sort();
        local.dedup();
        self.local_networks = local;
        self
    }

    /// Checks a peer lease; `Ok` when it may be programmed.
    pub fn check(&self, lease: &Lease) -> Result<(), Rejection> {
        self.check_subnet(lease.subnet())?;
        self.check_public_ip(lease.attrs.public_ip, lease.subnet())
    }

    /// Whether `subnet` is a subnet this config could have handed out: inside the Network, of
    /// SubnetLen, aligned. Leases failing this never take part in allocation.
    pub fn check_shape(&self, subnet: Ipv4Net) -> Result<(), Rejection> {
        if subnet.trunc() != subnet {
            return Err(Rejection::Unaligned { subnet });
        }
        if !self.network.contains(&subnet) {
            return Err(Rejection::OutsideNetwork {
                subnet,
                network: self.network,
            });
        }
        if subnet.prefix_len() != self.subnet_len {
            return Err(Rejection::WrongLength {
                subnet,
                subnet_len: self.subnet_len,
            });
        }
        Ok(())
    }

    fn check_subnet(&self, subnet: Ipv4Net) -> Result<(), Rejection> {
        self.check_shape(subnet)?;
        if overlaps(subnet, self.own_subnet) {
            return Err(Rejection::OverlapsOwnSubnet {
                subnet,
                own: self.own_subnet,
            });
        }
        match self.local_networks.iter().find(|l| overlaps(subnet, **l)) {
            Some(local) => Err(Rejection::OverlapsLocalNetwork {
                subnet,
                local: *local,
            }),
            None => Ok(()),
        }
    }

    fn check_public_ip(&self, ip: Ipv4Addr, subnet: Ipv4Net) -> Result<(), Rejection> {
        if let Some(what) = not_unicast(ip) {
            return Err(Rejection::BadPublicIp { ip, what });
        }
        // A host may sit inside a large Network (10.0.0.0/8), but never inside a pod subnet.
        if let Some(pods) = [subnet, self.own_subnet]
            .into_iter()
            .find(|s| s.contains(&ip))
        {
            return Err(Rejection::PublicIpInPodSubnet { ip, subnet: pods });
        }
        if ip == self.own_public_ip {
            return Err(Rejection::OwnPublicIp { ip });
        }
        Ok(())
    }
}

/// What kind of address `ip` is when it cannot be a peer host's address.
fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.octets()[0] == 0 {
        Some("in 0.0.0.0/8 (this network)")
    } else if ip.octets()[0] >= 240 {
        Some("in the reserved range 240.0.0.0/4")
    } else {
        None
    }
}

/// Whether two networks share any address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
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
        assert_eq!(policy().local_networks, want);
    }

    #[test]
    fn networks_around_the_whole_cluster_network_do_not_reject_peers() {
        let flat = policy().with_local_networks([
            "10.0.0.5/8".parse().unwrap(),
            "10.244.0.1/16".parse().unwrap(),
        ]);
        assert!(flat.local_networks.is_empty(), "{:?}", flat.local_networks);
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
        p.subnet_len = 25;
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
}
