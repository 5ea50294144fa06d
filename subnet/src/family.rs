//! What the two address families have in common, so that ranges, allocation and lease checks
//! are written once and used for IPv4 and IPv6 alike.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A subnet of one address family (`Ipv4Net` or `Ipv6Net`).
pub trait Subnet: Copy + Eq + Ord + Hash + Debug + Display + Into<IpNet> + Send + Sync {
    /// The address type of the family.
    type Addr: Copy + Eq + Ord + Hash + Debug + Display + Into<IpAddr> + Send + Sync;
    /// Address width in bits.
    const BITS: u8;
    /// `IPv4` or `IPv6`, for messages.
    const FAMILY: &'static str;

    /// The subnet `addr/len`, if `len` fits the family.
    fn with_len(addr: Self::Addr, len: u8) -> Option<Self>;
    /// The address as an integer.
    fn bits_of(addr: Self::Addr) -> u128;
    /// The address of an integer (truncated to the family's width).
    fn addr_of(bits: u128) -> Self::Addr;
    /// The address as written (host bits possibly set).
    fn address(&self) -> Self::Addr;
    /// The prefix length.
    fn prefix(&self) -> u8;
    /// The network address (host bits cleared).
    fn network_addr(&self) -> Self::Addr;
    /// The same subnet with host bits cleared.
    fn truncated(&self) -> Self;
    /// Whether `other` lies entirely inside this subnet.
    fn covers(&self, other: &Self) -> bool;
    /// Whether `addr` lies inside this subnet.
    fn holds(&self, addr: Self::Addr) -> bool;
    /// What kind of address `addr` is when it cannot be a host's unicast address.
    fn not_unicast(addr: Self::Addr) -> Option<&'static str>;

    /// Whether two subnets share any address.
    fn overlaps(&self, other: &Self) -> bool {
        self.holds(other.network_addr()) || other.holds(self.network_addr())
    }

    /// The subnet's first host address with the subnet's length (`10.1.74.1/24`,
    /// `fd00:1:2::1/64`): what subnet.env's `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET` hold.
    fn first_host(&self) -> Self {
        let first = Self::addr_of(Self::bits_of(self.network_addr()).wrapping_add(1));
        Self::with_len(first, self.prefix()).unwrap_or(*self)
    }
}

impl Subnet for Ipv4Net {
    type Addr = Ipv4Addr;
    const BITS: u8 = 32;
    const FAMILY: &'static str = "IPv4";

    fn with_len(addr: Ipv4Addr, len: u8) -> Option<Self> {
        Ipv4Net::new(addr, len).ok()
    }
    fn bits_of(addr: Ipv4Addr) -> u128 {
        u128::from(u32::from(addr))
    }
    fn addr_of(bits: u128) -> Ipv4Addr {
        Ipv4Addr::from(bits as u32)
    }
    fn address(&self) -> Ipv4Addr {
        self.addr()
    }
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn network_addr(&self) -> Ipv4Addr {
        self.network()
    }
    fn truncated(&self) -> Self {
        self.trunc()
    }
    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
    fn holds(&self, addr: Ipv4Addr) -> bool {
        self.contains(&addr)
    }
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
}

impl Subnet for Ipv6Net {
    type Addr = Ipv6Addr;
    const BITS: u8 = 128;
    const FAMILY: &'static str = "IPv6";

    fn with_len(addr: Ipv6Addr, len: u8) -> Option<Self> {
        Ipv6Net::new(addr, len).ok()
    }
    fn bits_of(addr: Ipv6Addr) -> u128 {
        u128::from(addr)
    }
    fn addr_of(bits: u128) -> Ipv6Addr {
        Ipv6Addr::from(bits)
    }
    fn address(&self) -> Ipv6Addr {
        self.addr()
    }
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn network_addr(&self) -> Ipv6Addr {
        self.network()
    }
    fn truncated(&self) -> Self {
        self.trunc()
    }
    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
    fn holds(&self, addr: Ipv6Addr) -> bool {
        self.contains(&addr)
    }
    fn not_unicast(ip: Ipv6Addr) -> Option<&'static str> {
        let first = ip.segments()[0];
        if ip.is_unspecified() {
            Some("the unspecified address")
        } else if ip.is_loopback() {
            Some("the loopback address")
        } else if ip.is_multicast() {
            Some("a multicast address")
        } else if first & 0xffc0 == 0xfe80 {
            Some("a link-local address")
        } else if ip.to_ipv4_mapped().is_some() {
            Some("an IPv4-mapped address")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_of_both_families() {
        let v4: Ipv4Net = "10.5.34.0/24".parse().unwrap();
        assert_eq!(v4.first_host().to_string(), "10.5.34.1/24");
        let v6: Ipv6Net = "fc00:0:0:1::/64".parse().unwrap();
        assert_eq!(v6.first_host().to_string(), "fc00:0:0:1::1/64");
    }

    #[test]
    fn ipv6_addresses_that_are_no_host() {
        for bad in ["::", "::1", "ff02::1", "fe80::1", "::ffff:10.0.0.1"] {
            let ip: Ipv6Addr = bad.parse().unwrap();
            assert!(Ipv6Net::not_unicast(ip).is_some(), "{bad}");
        }
        assert_eq!(Ipv6Net::not_unicast("fd00::5".parse().unwrap()), None);
    }

    #[test]
    fn overlap_is_symmetric_and_family_local() {
        let a: Ipv6Net = "fd00::/48".parse().unwrap();
        let b: Ipv6Net = "fd00:0:0:5::/64".parse().unwrap();
        let c: Ipv6Net = "fd01::/64".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
