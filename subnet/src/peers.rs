//! The set of peer leases the data plane must connect to.

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv6Net};

use crate::lease::{Lease, SubnetKey};
use crate::validate::{LeasePolicy, Rejection};

/// A change to the lease set, as seen by a watcher.
// Most events are `Put`, so boxing the lease would cost an allocation per event to save a few
// bytes on the rare `Removed`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseEvent {
    /// A lease was written: created, or changed (an etcd put).
    Put(Lease),
    /// A lease was deleted or expired.
    Removed(SubnetKey),
}

/// Peer leases by subnet ([`Lease::id`]); the agent's own subnet is never in the set. With a
/// [`LeasePolicy`], leases that fail it are kept aside as rejected (never programmed), and the
/// lease seen for our own subnet is remembered, so that a new policy (our lease moved, the host's
/// networks changed) re-evaluates every lease without a new listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerSet {
    own: Option<IpNet>,
    policy: Option<LeasePolicy>,
    peers: BTreeMap<IpNet, Lease>,
    /// The peer holding each IPv6 half of a dual-stack lease, by its [`Lease::id`].
    ipv6_holders: BTreeMap<Ipv6Net, IpNet>,
    /// The lease last seen for our own subnet (ours, or another host's that took it).
    own_lease: Option<Lease>,
    rejected: BTreeMap<SubnetKey, (Lease, Rejection)>,
    /// Peers admitted because the lease sharing their subnet went, not yet handed out by
    /// [`PeerSet::take_admitted`].
    admitted: Vec<IpNet>,
    /// Rejections not yet handed out by [`PeerSet::take_new_rejections`].
    unreported: Vec<(SubnetKey, Rejection)>,
}

impl PeerSet {
    /// An empty set that will ignore leases for `own` (our own subnet) and check nothing else.
    pub fn new(own: IpNet) -> Self {
        PeerSet {
            own: Some(own),
            ..PeerSet::default()
        }
    }

    /// An empty set that takes only leases passing `policy` (whose own subnet is ignored).
    pub fn with_policy(policy: LeasePolicy) -> Self {
        PeerSet {
            own: Some(policy.own_id()),
            policy: Some(policy),
            ..PeerSet::default()
        }
    }

    /// The policy leases are checked against, if any.
    pub fn policy(&self) -> Option<&LeasePolicy> {
        self.policy.as_ref()
    }

    /// Applies one event; returns whether the set of programmable peers changed.
    pub fn apply(&mut self, event: &LeaseEvent) -> bool {
        match event {
            LeaseEvent::Put(lease) => self.add(lease),
            LeaseEvent::Removed(key) => {
                self.rejected.remove(key);
                if Some(key.id()) == self.own {
                    self.own_lease = None;
                }
                self.remove_own_key(*key)
            }
        }
    }

    fn add(&mut self, lease: &Lease) -> bool {
        if Some(lease.id()) == self.own {
            self.own_lease = Some(lease.clone());
            return false;
        }
        let why = (self.policy.as_ref().and_then(|p| p.check(lease).err()))
            .or_else(|| self.shared_with_another_host(lease));
        if let Some(why) = why {
            let known = self.rejected.get(&lease.key).map(|(_, r)| r);
            if known != Some(&why) {
                self.unreported.push((lease.key, why.clone()));
            }
            self.rejected.insert(lease.key, (lease.clone(), why));
            return self.remove_own_key(lease.key);
        }
        self.rejected.remove(&lease.key);
        match self.insert_peer(lease.clone()) {
            Some(old) => old.attrs != lease.attrs || old.key != lease.key,
            None => true,
        }
    }

    /// A subnet of `lease` that another host's peer lease, seen first, holds: two hosts that
    /// chose at the same time (the later one gives way). The same host's lease under a new key
    /// (it gained or changed its IPv6 half) replaces its old one instead.
    fn shared_with_another_host(&self, lease: &Lease) -> Option<Rejection> {
        let same_host = |p: &Lease| {
            (p.attrs.public_ip, p.attrs.public_ipv6)
                == (lease.attrs.public_ip, lease.attrs.public_ipv6)
        };
        let by_id = self.peers.get(&lease.id());
        let by_ipv6 = (lease.key.ipv6)
            .and_then(|v6| self.ipv6_holders.get(&v6))
            .and_then(|id| self.peers.get(id));
        let holder = [by_id, by_ipv6]
            .into_iter()
            .flatten()
            .find(|p| p.key != lease.key && !same_host(p))?;
        let subnet = match by_id {
            Some(p) if p.key == holder.key => lease.id(),
            _ => lease.key.ipv6?.into(),
        };
        Some(Rejection::SubnetShared {
            subnet,
            holder: holder.key,
        })
    }

    /// Removes the peer of `key`, if that very key is the peer (another host's lease may hold
    /// the subnet), and admits the leases that waited for it; returns whether it was a peer.
    fn remove_own_key(&mut self, key: SubnetKey) -> bool {
        if self.peers.get(&key.id()).is_none_or(|p| p.key != key) {
            return false;
        }
        self.remove_peer(key.id());
        self.admit_sharers_of(key);
        true
    }

    /// Admits the leases rejected for sharing a subnet with `gone`, now that it went.
    fn admit_sharers_of(&mut self, gone: SubnetKey) {
        let waiting: Vec<Lease> = (self.rejected.values())
            .filter(
                |(_, why)| matches!(why, Rejection::SubnetShared { holder, .. } if *holder == gone),
            )
            .map(|(lease, _)| lease.clone())
            .collect();
        for lease in waiting {
            if self.add(&lease) {
                self.admitted.push(lease.id());
            }
        }
    }

    fn insert_peer(&mut self, lease: Lease) -> Option<Lease> {
        let id = lease.id();
        if let Some(v6) = lease.key.ipv6.filter(|_| lease.key.has_ipv4()) {
            self.ipv6_holders.insert(v6, id);
        }
        let old = self.peers.insert(id, lease)?;
        self.forget_ipv6(&old, id);
        Some(old)
    }

    fn remove_peer(&mut self, id: IpNet) -> Option<Lease> {
        let old = self.peers.remove(&id)?;
        self.forget_ipv6(&old, id);
        Some(old)
    }

    /// Drops the IPv6 index entry of `old` (replaced or removed at `id`) unless the peer now at
    /// `id` holds the same IPv6 half.
    fn forget_ipv6(&mut self, old: &Lease, id: IpNet) {
        let Some(v6) = old.key.ipv6 else { return };
        let kept = self.peers.get(&id).and_then(|p| p.key.ipv6) == Some(v6);
        if !kept && self.ipv6_holders.get(&v6) == Some(&id) {
            self.ipv6_holders.remove(&v6);
        }
    }

    /// Replaces the whole set with a fresh listing and returns the events that turn the old set
    /// of programmable peers into the new one (used after a re-list, e.g. on watch compaction).
    pub fn replace_all(&mut self, leases: Vec<Lease>) -> Vec<LeaseEvent> {
        let known_rejections = std::mem::take(&mut self.rejected);
        let pending = std::mem::take(&mut self.unreported);
        let mut fresh = PeerSet {
            own: self.own,
            policy: self.policy.clone(),
            ..PeerSet::default()
        };
        for lease in leases {
            fresh.add(&lease);
        }
        // A rejection already known with the same reason is not new.
        fresh
            .unreported
            .retain(|(key, why)| known_rejections.get(key).map(|(_, r)| r) != Some(why));
        fresh.unreported.splice(0..0, pending);
        let mut events: Vec<LeaseEvent> = self
            .peers
            .values()
            .filter(|old| !fresh.peers.contains_key(&old.id()))
            .map(|old| LeaseEvent::Removed(old.key))
            .collect();
        events.extend(
            fresh
                .peers
                .values()
                .filter(|new| self.peers.get(&new.id()).map(|old| &old.attrs) != Some(&new.attrs))
                .map(|new| LeaseEvent::Put(new.clone())),
        );
        *self = fresh;
        events
    }

    /// Checks every lease known (peers, rejected ones and the one for our own subnet) against a
    /// new policy; returns the events that changed the programmable peers.
    pub fn set_policy(&mut self, policy: LeasePolicy) -> Vec<LeaseEvent> {
        if self.policy.as_ref() == Some(&policy) {
            return Vec::new();
        }
        let mut leases: Vec<Lease> = self.peers.values().cloned().collect();
        leases.extend(self.rejected.values().map(|(l, _)| l.clone()));
        leases.extend(self.own_lease.take());
        self.own = Some(policy.own_id());
        self.policy = Some(policy);
        self.replace_all(leases)
    }

    /// Rejections that are new (a lease rejected for the first time, or for another reason)
    /// since the last call, to be logged once each.
    pub fn take_new_rejections(&mut self) -> Vec<(SubnetKey, Rejection)> {
        std::mem::take(&mut self.unreported)
    }

    /// The subnets ([`Lease::id`]) of peers admitted by [`PeerSet::apply`] besides the event's
    /// own: leases that waited for the removed one, which shared a subnet with them.
    pub fn take_admitted(&mut self) -> Vec<IpNet> {
        std::mem::take(&mut self.admitted)
    }

    /// The leases rejected by the policy, with the reason.
    pub fn rejected(&self) -> impl Iterator<Item = (&SubnetKey, &Rejection)> {
        self.rejected.iter().map(|(k, (_, r))| (k, r))
    }

    /// The peer leases, ordered by subnet.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.peers.values()
    }

    /// The lease for `subnet`, if a peer holds it.
    pub fn get(&self, subnet: &IpNet) -> Option<&Lease> {
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

    /// A dual-stack lease of `key` (`10.0.2.0-24&fd00::2:0:0:0-64`) for host `ip`.
    fn dual(key: &str, ip: [u8; 4]) -> Lease {
        Lease {
            key: key.parse().unwrap(),
            ..lease("10.0.9.0/24", ip)
        }
    }

    #[test]
    fn a_lease_sharing_a_half_with_another_hosts_waits_until_that_one_goes() {
        let mut set = PeerSet::new("10.0.1.0/24".parse().unwrap());
        let first = dual("10.0.2.0-24&fd00:0:0:2::-64", [1, 1, 1, 2]);
        let same_v4 = dual("10.0.2.0-24&fd00:0:0:3::-64", [1, 1, 1, 3]);
        let same_v6 = dual("10.0.4.0-24&fd00:0:0:2::-64", [1, 1, 1, 4]);
        assert!(set.apply(&LeaseEvent::Put(first.clone())));
        assert!(!set.apply(&LeaseEvent::Put(same_v4.clone())));
        assert!(!set.apply(&LeaseEvent::Put(same_v6.clone())));
        assert_eq!(set.iter().collect::<Vec<_>>(), [&first]);
        let rejected: Vec<String> = set.rejected().map(|(_, why)| why.to_string()).collect();
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(
            rejected[0].contains("also in lease 10.0.2.0-24&fd00:0:0:2::-64"),
            "{rejected:?}"
        );

        // The later writer gives way: its removal leaves the first one programmed.
        assert!(!set.apply(&LeaseEvent::Removed(same_v4.key)));
        assert_eq!(set.iter().collect::<Vec<_>>(), [&first]);
        assert!(set.take_admitted().is_empty());

        // Had the first one turned hostile or gone instead, the one sharing its IPv6 half would
        // take its place.
        let mut hostile = first.clone();
        hostile.attrs.public_ip = Ipv4Addr::LOCALHOST;
        let mut turned = set.clone();
        let policy = LeasePolicy::new(
            "10.0.0.0/16".parse().unwrap(),
            24,
            "10.0.1.0/24".parse().unwrap(),
            Ipv4Addr::new(1, 1, 1, 1),
        );
        turned.policy = Some(policy);
        assert!(turned.apply(&LeaseEvent::Put(hostile)));
        assert_eq!(turned.iter().collect::<Vec<_>>(), [&same_v6]);
        assert_eq!(turned.take_admitted(), [same_v6.id()]);
        assert!(set.apply(&LeaseEvent::Removed(first.key)));
        assert_eq!(set.iter().collect::<Vec<_>>(), [&same_v6]);
        assert_eq!(set.take_admitted(), [same_v6.id()]);
        assert_eq!(set.rejected().count(), 0);
    }

    #[test]
    fn the_same_hosts_lease_under_a_new_key_replaces_its_old_one() {
        let mut set = PeerSet::new("10.0.1.0/24".parse().unwrap());
        let old = lease("10.0.2.0/24", [1, 1, 1, 2]);
        let new = dual("10.0.2.0-24&fd00:0:0:2::-64", [1, 1, 1, 2]);
        assert!(set.apply(&LeaseEvent::Put(old.clone())));
        assert!(set.apply(&LeaseEvent::Put(new.clone())));
        // The old key's removal (or expiry) does not take the new lease with it.
        assert!(!set.apply(&LeaseEvent::Removed(old.key)));
        assert_eq!(set.iter().collect::<Vec<_>>(), [&new]);
        assert_eq!(set.rejected().count(), 0);
    }

    #[test]
    fn own_subnet_is_ignored_and_changes_are_reported() {
        let mut set = PeerSet::new("10.0.1.0/24".parse().unwrap());
        assert!(!set.apply(&LeaseEvent::Put(lease("10.0.1.0/24", [1, 1, 1, 1]))));
        assert!(set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [1, 1, 1, 2]))));
        assert!(!set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [1, 1, 1, 2]))));
        assert!(set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [1, 1, 1, 3]))));
        assert_eq!(set.len(), 1);
        assert!(set.apply(&LeaseEvent::Removed(lease("10.0.2.0/24", [0; 4]).key)));
        assert!(!set.apply(&LeaseEvent::Removed(lease("10.0.2.0/24", [0; 4]).key)));
        assert!(set.is_empty());
    }

    fn policed(own: &str) -> PeerSet {
        PeerSet::with_policy(LeasePolicy::new(
            "10.0.0.0/16".parse().unwrap(),
            24,
            own.parse().unwrap(),
            Ipv4Addr::new(1, 1, 1, 1),
        ))
    }

    #[test]
    fn a_rejected_lease_is_never_a_peer_and_is_reported_once() {
        let mut set = policed("10.0.1.0/24");
        let bogus = lease("10.0.0.0/16", [1, 1, 1, 2]);
        assert!(!set.apply(&LeaseEvent::Put(bogus.clone())));
        assert!(!set.apply(&LeaseEvent::Put(bogus.clone())));
        let reported = set.take_new_rejections();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(reported[0].1.to_string().contains("SubnetLen is 24"));
        assert!(set.is_empty());
        assert_eq!(set.rejected().count(), 1);
        // A re-listing that still holds it reports nothing new.
        set.replace_all(vec![bogus.clone()]);
        assert!(set.take_new_rejections().is_empty());
        assert!(!set.apply(&LeaseEvent::Removed(bogus.key)));
        assert_eq!(set.rejected().count(), 0);
    }

    #[test]
    fn a_peer_whose_lease_turns_hostile_is_removed() {
        let mut set = policed("10.0.1.0/24");
        assert!(set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [1, 1, 1, 2]))));
        assert!(set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [127, 0, 0, 1]))));
        assert!(set.is_empty());
        let reported = set.take_new_rejections();
        assert!(
            reported[0].1.to_string().contains("loopback"),
            "{reported:?}"
        );
        // Fixed again: a peer once more, and no longer rejected.
        assert!(set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [1, 1, 1, 2]))));
        assert_eq!(set.rejected().count(), 0);
    }

    #[test]
    fn when_our_lease_moves_the_host_that_took_our_old_subnet_becomes_a_peer() {
        let mut set = policed("10.0.1.0/24");
        // Another host took our old subnet while it was still ours.
        assert!(!set.apply(&LeaseEvent::Put(lease("10.0.1.0/24", [1, 1, 1, 9]))));
        set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [1, 1, 1, 2])));
        let policy = set
            .policy()
            .unwrap()
            .moved_to("10.0.7.0-24".parse().unwrap());
        let events = set.set_policy(policy);
        assert_eq!(
            events,
            vec![LeaseEvent::Put(lease("10.0.1.0/24", [1, 1, 1, 9]))]
        );
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn a_new_local_network_rejects_the_leases_it_covers_and_frees_them_when_gone() {
        let mut set = policed("10.0.1.0/24");
        set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [1, 1, 1, 2])));
        let base = set.policy().unwrap().clone();
        let lan = base
            .clone()
            .with_local_networks(["10.0.2.0/23".parse().unwrap()]);
        assert_eq!(set.set_policy(lan).len(), 1);
        assert!(set.is_empty());
        assert_eq!(set.take_new_rejections().len(), 1);
        assert_eq!(set.set_policy(base).len(), 1);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn replace_all_diffs_against_the_known_set() {
        let mut set = PeerSet::new("10.0.1.0/24".parse().unwrap());
        set.apply(&LeaseEvent::Put(lease("10.0.2.0/24", [1, 1, 1, 2])));
        set.apply(&LeaseEvent::Put(lease("10.0.3.0/24", [1, 1, 1, 3])));
        let events = set.replace_all(vec![
            lease("10.0.1.0/24", [1, 1, 1, 1]),
            lease("10.0.3.0/24", [1, 1, 1, 9]),
            lease("10.0.4.0/24", [1, 1, 1, 4]),
        ]);
        assert_eq!(
            events,
            vec![
                LeaseEvent::Removed(lease("10.0.2.0/24", [0; 4]).key),
                LeaseEvent::Put(lease("10.0.3.0/24", [1, 1, 1, 9])),
                LeaseEvent::Put(lease("10.0.4.0/24", [1, 1, 1, 4])),
            ]
        );
        assert_eq!(set.len(), 2);
    }
}
