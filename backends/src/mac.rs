//! Ethernet MAC addresses as Go flanneld writes them (`c6:d2:32:6f:8f:44`).

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// A string that is not a 48-bit MAC address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a MAC address (expected six hex bytes, e.g. c6:d2:32:6f:8f:44)")]
pub struct BadMac(pub String);

impl Mac {
    /// A random locally administered unicast address (bit 0 of the first byte cleared, bit 1
    /// set), as Go flanneld HEAD picks for the VTEP.
    pub fn random_local() -> Mac {
        let mut bytes: [u8; 6] = rand::random();
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        Mac(bytes)
    }

    /// The address from raw netlink bytes; `None` unless exactly six bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Mac> {
        bytes.try_into().ok().map(Mac)
    }

    /// Whether this is the all-zero address (the vxlan "default destination" FDB key).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Whether this is a group (multicast or broadcast) address: bit 0 of the first byte.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = BadMac;

    /// Parses `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` (any case), like Go's `net.ParseMAC`
    /// for 48-bit addresses.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_locally_administered_unicast() {
        for _ in 0..100 {
            let mac = Mac::random_local();
            assert_eq!(mac.0[0] & 0x01, 0, "{mac} is multicast");
            assert_eq!(mac.0[0] & 0x02, 0x02, "{mac} is not locally administered");
        }
        assert_ne!(Mac::random_local(), Mac::random_local());
    }

    #[test]
    fn parse_and_print_round_trip() {
        let mac: Mac = "C6:D2:32:6f:8f:44".parse().unwrap();
        assert_eq!(mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!("c6-d2-32-6f-8f-44".parse::<Mac>().unwrap(), mac);
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "c6:d2:32:6f:8f:4",
            "zz:d2:32:6f:8f:44",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert_eq!(
            Mac::from_bytes(&[1, 2, 3, 4, 5, 6]),
            Some(Mac([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(Mac::from_bytes(&[1, 2, 3]), None);
    }
}
