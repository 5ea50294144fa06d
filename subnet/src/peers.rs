//! The set of peer leases the data plane must connect to.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use crate::lease::{Lease, SubnetKey};

/// A change to the lease set, as seen by a watcher.
// Most events are `Added`, so boxing the lease would cost an allocation per event to save a few
// bytes on the rare `Removed`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseEvent {
    /// A lease was created or its value changed.
    Added(Lease),
    /// A lease was deleted or expired.
    Removed(SubnetKey),
}

/// Peer leases by IPv4 subnet; the agent's own subnet is never in the set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerSet {
    own: Option<Ipv4Net>,
    peers: BTreeMap<Ipv4Net, Lease>,
}

impl PeerSet {
    /// An empty set that will ignore leases for `own` (our own subnet).
    pub fn new(own: Ipv4Net) -> Self {
        PeerSet {
            own: Some(own),
            peers: BTreeMap::new(),
        }
    }

    /// Applies one event; returns whether the set changed.
    pub fn apply(&mut self, event: &LeaseEvent) -> bool {
        match event {
            LeaseEvent::Added(lease) => {
                if Some(lease.subnet()) == self.own {
                    return false;
                }
                match self.peers.get(&lease.subnet()) {
                    Some(old) if old.attrs == lease.attrs && old.key == lease.key => {
                        self.peers.insert(lease.subnet(), lease.clone());
                        false
                    }
                    _ => {
                        self.peers.insert(lease.subnet(), lease.clone());
                        true
                    }
                }
            }
            LeaseEvent::Removed(key) => self.peers.remove(&key.ipv4).is_some(),
        }
    }

    /// Replaces the whole set with a fresh listing and returns the events that turn the old set
    /// into the new one (used after a re-list, e.g. on watch compaction).
    pub fn replace_all(&mut self, leases: Vec<Lease>) -> Vec<LeaseEvent> {
        let mut fresh = PeerSet {
            own: self.own,
            peers: BTreeMap::new(),
        };
        for lease in leases {
            fresh.apply(&LeaseEvent::Added(lease));
        }
        let mut events: Vec<LeaseEvent> = self
            .peers
            .values()
            .filter(|old| !fresh.peers.contains_key(&old.subnet()))
            .map(|old| LeaseEvent::Removed(old.key))
            .collect();
        events.extend(
            fresh
                .peers
                .values()
                .filter(|new| {
                    self.peers.get(&new.subnet()).map(|old| &old.attrs) != Some(&new.attrs)
                })
                .map(|new| LeaseEvent::Added(new.clone())),
        );
        *self = fresh;
        events
    }

    /// The peer leases, ordered by subnet.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.peers.values()
    }

    /// The lease for `subnet`, if a peer holds it.
    pub fn get(&self, subnet: &Ipv4Net) -> Option<&Lease> {
        self.peers.get(subnet)
    }

    /// How many peers there are.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use std::net::Ipv4Addr;

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs::new(Ipv4Addr::from(ip), "host-gw"),
            expiration: None,
        }
    }

    #[test]
    fn own_subnet_is_ignored_and_changes_are_reported() {
        let mut set = PeerSet::new("10.0.1.0/24".parse().unwrap());
        assert!(!set.apply(&LeaseEvent::Added(lease("10.0.1.0/24", [1, 1, 1, 1]))));
        assert!(set.apply(&LeaseEvent::Added(lease("10.0.2.0/24", [1, 1, 1, 2]))));
        assert!(!set.apply(&LeaseEvent::Added(lease("10.0.2.0/24", [1, 1, 1, 2]))));
        assert!(set.apply(&LeaseEvent::Added(lease("10.0.2.0/24", [1, 1, 1, 3]))));
        assert_eq!(set.len(), 1);
        assert!(set.apply(&LeaseEvent::Removed(lease("10.0.2.0/24", [0; 4]).key)));
        assert!(!set.apply(&LeaseEvent::Removed(lease("10.0.2.0/24", [0; 4]).key)));
        assert!(set.is_empty());
    }

    #[test]
    fn replace_all_diffs_against_the_known_set() {
        let mut set = PeerSet::new("10.0.1.0/24".parse().unwrap());
        set.apply(&LeaseEvent::Added(lease("10.0.2.0/24", [1, 1, 1, 2])));
        set.apply(&LeaseEvent::Added(lease("10.0.3.0/24", [1, 1, 1, 3])));
        let events = set.replace_all(vec![
            lease("10.0.1.0/24", [1, 1, 1, 1]),
            lease("10.0.3.0/24", [1, 1, 1, 9]),
            lease("10.0.4.0/24", [1, 1, 1, 4]),
        ]);
        assert_eq!(
            events,
            vec![
                LeaseEvent::Removed(lease("10.0.2.0/24", [0; 4]).key),
                LeaseEvent::Added(lease("10.0.3.0/24", [1, 1, 1, 9])),
                LeaseEvent::Added(lease("10.0.4.0/24", [1, 1, 1, 4])),
            ]
        );
        assert_eq!(set.len(), 2);
    }
}
