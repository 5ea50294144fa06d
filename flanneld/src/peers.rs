//! The peers the data plane programs, in one place: the admitted leases ([`PeerSet`], which
//! checks each against the [`LeasePolicy`]), the *lingering* peers a re-listing no longer showed
//! (programmed for [`PEER_GRACE`] more), and the peers changed by watch events since the last
//! reconcile (for the incremental one). Pure: time comes in as an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::IpNet;
use subnet::{Lease, LeaseEvent, LeasePolicy, PeerSet, Rejection, SubnetKey};
use tokio::time::Instant;

/// How long a peer missing from a re-listing stays programmed: after an etcd restore (or a
/// re-list after compaction) its host is most likely re-creating its lease, and cutting its
/// pods off meanwhile would be the outage.
pub(crate) const PEER_GRACE: Duration = Duration::from_secs(60);

/// The peers, the lingering peers and the changes since the last reconcile.
pub(crate) struct Peers {
    admitted: PeerSet,
    lingering: BTreeMap<IpNet, (Lease, Instant)>,
    /// Each changed peer with its programmed lease before the first of those changes (`None`: a
    /// peer new to the data plane).
    changed: BTreeMap<IpNet, Option<Lease>>,
}

/// What a complete listing changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    /// How many admitted peers it added, changed or removed (each logged at debug level).
    pub changes: usize,
    /// How many peers it no longer showed, now lingering.
    pub lingering: usize,
}

impl Peers {
    /// No peers yet; leases are checked against `admitted`'s policy.
    pub(crate) fn new(admitted: PeerSet) -> Peers {
        Peers {
            admitted,
            lingering: BTreeMap::new(),
            changed: BTreeMap::new(),
        }
    }

    /// Takes a complete listing at `now`: it replaces the admitted peers, and the peers it no
    /// longer shows linger until `now` + [`PEER_GRACE`].
    pub(crate) fn take_listing(&mut self, leases: Vec<Lease>, now: Instant) -> Listed {
        if self.admitted.is_empty() {
            // Nothing to remove: the leases are taken one by one, so no second copy of all of
            // them (replace_all's events) is ever held.
            let mut changes = 0;
            for lease in leases {
                let e = LeaseEvent::Put(lease);
                if self.admitted.apply(&e) {
                    tracing::debug!("{}", describe(&e));
                    changes += 1;
                }
            }
            return Listed {
                changes,
                lingering: 0,
            };
        }
        let listed: BTreeSet<IpNet> = leases.iter().map(Lease::id).collect();
        let missing: Vec<Lease> = (self.admitted.iter())
            .filter(|l| !listed.contains(&l.id()))
            .cloned()
            .collect();
        let events = self.admitted.replace_all(leases);
        for e in &events {
            tracing::debug!("{}", describe(e));
        }
        let lingering = missing.len();
        if lingering > 0 {
            tracing::warn!(
                "{lingering} peers are missing from the lease listing; keeping their routes for \
                 {}s while they re-create their leases",
                PEER_GRACE.as_secs()
            );
        }
        for lease in missing {
            self.lingering.insert(lease.id(), (lease, now + PEER_GRACE));
        }
        Listed {
            changes: events.len(),
            lingering,
        }
    }

    /// Takes watch events, noting each changed peer for the incremental reconcile; any news of
    /// a lingering peer ends its grace period. Returns how many changed a peer (each logged).
    pub(crate) fn take_events(&mut self, events: Vec<LeaseEvent>) -> usize {
        let mut applied = 0;
        for e in events {
            let subnet = match &e {
                LeaseEvent::Put(l) => l.id(),
                LeaseEvent::Removed(k) => k.id(),
            };
            let old = self.programmed(&subnet).cloned();
            let lingered = self.lingering.remove(&subnet).is_some();
            if self.admitted.apply(&e) || lingered {
                tracing::info!("{}", describe(&e));
                applied += 1;
                self.changed.entry(subnet).or_insert(old);
            }
            for admitted in self.admitted.take_admitted() {
                self.changed.entry(admitted).or_insert(None);
            }
        }
        applied
    }

    /// Drops the lingering peers whose grace period is over at `now`; returns their subnets.
    pub(crate) fn expire_lingering(&mut self, now: Instant) -> Vec<IpNet> {
        let expired: Vec<IpNet> = (self.lingering.iter())
            .filter(|(_, (_, until))| *until <= now)
            .map(|(subnet, _)| *subnet)
            .collect();
        for subnet in &expired {
            tracing::warn!("peer {subnet} did not re-create its lease in time; removing it");
            self.lingering.remove(subnet);
        }
        expired
    }

    /// The lease programmed for `subnet`: a peer's, or a lingering one's.
    pub(crate) fn programmed(&self, subnet: &IpNet) -> Option<&Lease> {
        (self.admitted.get(subnet)).or_else(|| self.lingering.get(subnet).map(|(lease, _)| lease))
    }

    /// Every lease to program: the admitted peers and the lingering ones.
    pub(crate) fn all_programmed(&self) -> impl Iterator<Item = &Lease> {
        let lingering = self.lingering.values().map(|(lease, _)| lease);
        let admitted = &self.admitted;
        admitted
            .iter()
            .chain(lingering.filter(|l| admitted.get(&l.id()).is_none()))
    }

    /// Whether watch events changed peers since the last reconcile.
    pub(crate) fn have_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// The changed peers with their leases before the changes, for an incremental reconcile.
    pub(crate) fn take_changes(&mut self) -> BTreeMap<IpNet, Option<Lease>> {
        std::mem::take(&mut self.changed)
    }

    /// Forgets the changes: a full reconcile covers them.
    pub(crate) fn clear_changes(&mut self) {
        self.changed.clear();
    }

    /// The admitted peers.
    pub(crate) fn admitted(&self) -> &PeerSet {
        &self.admitted
    }

    /// The policy leases are checked against, once the lease is known.
    pub(crate) fn policy(&self) -> Option<&LeasePolicy> {
        self.admitted.policy()
    }

    /// Checks every lease against `policy` from now on (rejected ones may be admitted, admitted
    /// ones rejected).
    pub(crate) fn set_policy(&mut self, policy: LeasePolicy) {
        // What it admits or rejects is programmed by the full reconcile that follows.
        self.admitted.set_policy(policy);
    }

    /// The leases newly rejected since the last call, with why.
    pub(crate) fn take_new_rejections(&mut self) -> Vec<(SubnetKey, Rejection)> {
        self.admitted.take_new_rejections()
    }
}

/// A peer event as logged: `peer <subnet> at <PublicIP> (<type>)` or `peer <subnet> removed`.
pub(crate) fn describe(e: &LeaseEvent) -> String {
    match e {
        LeaseEvent::Put(l) => {
            let public = match l.attrs.public_ipv6 {
                Some(v6) if !l.key.has_ipv4() => v6.to_string(),
                _ => l.attrs.public_ip.to_string(),
            };
            format!("peer {} at {public} ({})", l.id(), l.attrs.backend_type)
        }
        LeaseEvent::Removed(k) => format!("peer {} removed", k.id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use subnet::LeaseAttrs;

    fn lease(third: u8) -> Lease {
        let key: SubnetKey = format!("10.5.{third}.0-24").parse().unwrap();
        Lease {
            key,
            attrs: LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, third), "host-gw"),
            expiration: None,
        }
    }

    fn peers() -> Peers {
        Peers::new(PeerSet::new(
            "10.5.1.0/24".parse::<ipnet::Ipv4Net>().unwrap().into(),
        ))
    }

    fn programmed(p: &Peers) -> Vec<IpNet> {
        let mut subnets: Vec<IpNet> = p.all_programmed().map(Lease::id).collect();
        subnets.sort();
        subnets
    }

    #[test]
    fn peers_missing_from_a_relisting_linger_for_the_grace_period() {
        let (mut p, start) = (peers(), Instant::now());
        let first = p.take_listing(vec![lease(2), lease(3)], start);
        assert_eq!((first.changes, first.lingering), (2, 0));
        let relisted = p.take_listing(vec![lease(2)], start);
        assert_eq!(relisted.lingering, 1);
        assert_eq!(programmed(&p), vec![lease(2).id(), lease(3).id()]);
        assert!(p.expire_lingering(start + PEER_GRACE / 2).is_empty());
        assert_eq!(p.expire_lingering(start + PEER_GRACE), vec![lease(3).id()]);
        assert_eq!(programmed(&p), vec![lease(2).id()]);
    }

    #[test]
    fn news_of_a_lingering_peer_ends_its_grace_and_is_a_change() {
        let (mut p, start) = (peers(), Instant::now());
        p.take_listing(vec![lease(2), lease(3)], start);
        p.take_listing(vec![lease(2)], start);
        let mut back = lease(3);
        back.attrs.public_ip = Ipv4Addr::new(192, 168, 0, 33);
        assert_eq!(p.take_events(vec![LeaseEvent::Put(back.clone())]), 1);
        let changes = p.take_changes();
        assert_eq!(
            changes.get(&back.id()),
            Some(&Some(lease(3))),
            "the old lease, to replace"
        );
        assert!(
            p.expire_lingering(start + PEER_GRACE).is_empty(),
            "no longer lingering"
        );
        assert_eq!(p.programmed(&back.id()), Some(&back));
    }

    #[test]
    fn a_removed_lingering_peer_is_a_change_to_nothing() {
        let (mut p, start) = (peers(), Instant::now());
        p.take_listing(vec![lease(2), lease(3)], start);
        p.take_listing(vec![lease(2)], start);
        p.take_events(vec![LeaseEvent::Removed(lease(3).key)]);
        assert!(p.have_changes());
        assert_eq!(p.take_changes().get(&lease(3).id()), Some(&Some(lease(3))));
        assert_eq!(programmed(&p), vec![lease(2).id()]);
    }

    #[test]
    fn changes_keep_the_lease_before_the_first_change() {
        let mut p = peers();
        p.take_events(vec![LeaseEvent::Put(lease(4))]);
        let mut moved = lease(4);
        moved.attrs.public_ip = Ipv4Addr::new(192, 168, 0, 44);
        p.take_events(vec![LeaseEvent::Put(moved)]);
        assert_eq!(
            p.take_changes().get(&lease(4).id()),
            Some(&None),
            "new to the data plane"
        );
        assert!(!p.have_changes());
        p.take_events(vec![LeaseEvent::Put(lease(5))]);
        p.clear_changes();
        assert!(!p.have_changes());
    }

    #[test]
    fn an_unchanged_lease_is_no_change() {
        let mut p = peers();
        p.take_listing(vec![lease(2)], Instant::now());
        assert_eq!(p.take_events(vec![LeaseEvent::Put(lease(2))]), 0);
        assert!(!p.have_changes());
    }
}
