//! This host's lease: acquiring it, renewing it before it expires, and keeping it.
//!
//! Acquisition follows Go flanneld (reuse by PublicIP, then subnet.env, then random), but a lost
//! creation race picks another subnet instead of exiting, and every write is compare-guarded so
//! another host's lease is never overwritten. Once acquired, [`LeaseManager::run`] renews the
//! lease `renew_margin` before it expires (retrying every `retry_interval` on failure) and
//! watches the key: if it disappears the same subnet is re-claimed at once (Go flanneld exits
//! instead); if another host took it meanwhile a new subnet is acquired and published; if another
//! host overwrites it, that is logged as an error and the lease is published as invalid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch as state;
use tokio::time::Instant;

use crate::alloc::{self, Choice, OutOfSubnets, Reason};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::peers::LeaseEvent;
use crate::registry::{PutGuard, Registry, RegistryError, StoredLease, WatchScope, WatchUpdate};

/// How many times a lost creation race is retried with another subnet.
const MAX_ATTEMPTS: usize = 10;

/// How often the manager makes sure etcd still answers and its own key is there, beside watching
/// it. With a watch stream open (etcd v3) that costs no request: the stream is the contact, and the
/// own-key watch reads the key again whenever it reconnects (an etcd restored from a backup is a
/// restarted etcd). Without one (the v2 keyspace, whose long polls can wait at a position a
/// restored etcd has not reached) the key is read, and each successful read is contact.
pub const OWN_KEY_CHECK_PERIOD: Duration = Duration::from_secs(10);

/// How many times renewing retries when the key changes between its read and its guarded write.
const MAX_REFRESH_RACES: usize = 5;

/// Lease lifetime and renewal schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The TTL of the etcd lease behind our key (Go flanneld: 24 h).
    pub ttl: Duration,
    /// Renew this long before expiry (`--subnet-lease-renew-margin`, default 60 min).
    pub renew_margin: Duration,
    /// Wait this long before retrying a failed renewal or re-claim (Go flanneld: 1 min).
    pub retry_interval: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            ttl: Duration::from_secs(24 * 3600),
            renew_margin: Duration::from_secs(60 * 60),
            retry_interval: Duration::from_secs(60),
        }
    }
}

impl LeaseTiming {
    /// The defaults with the renewal margin `--subnet-lease-renew-margin` asks for.
    pub fn with_renew_margin(renew_margin: Duration) -> Self {
        LeaseTiming {
            renew_margin,
            ..LeaseTiming::default()
        }
    }
}

/// Why no lease could be acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The store failed; retry later.
    #[error("failed to acquire lease: {0}")]
    Registry(#[from] RegistryError),
    /// Every subnet in the range is taken.
    #[error("failed to acquire lease: {0}")]
    OutOfSubnets(#[from] OutOfSubnets),
    /// Other hosts kept taking the chosen subnet first.
    #[error(
        "failed to acquire lease: another host took the chosen subnet first, {0} times in a row"
    )]
    Contention(usize),
}

impl AcquireError {
    /// Whether trying again later may succeed without an operator changing something.
    pub fn is_retryable(&self) -> bool {
        match self {
            AcquireError::Registry(e) => e.is_retryable(),
            AcquireError::Contention(_) => true,
            AcquireError::OutOfSubnets(_) => false,
        }
    }
}

/// Whether `lease` is currently valid: it has a known expiration in the future.
pub fn is_valid(lease: &Lease, now: SystemTime) -> bool {
    lease.expiration.is_some_and(|expiration| expiration > now)
}

/// What happened to this host's lease, counted for the operator's metrics.
#[derive(Debug, Default)]
pub struct LeaseCounters {
    /// Renewals written.
    pub renewals: AtomicU64,
    /// Re-claims of our subnet after the lease vanished (deleted, expired or overwritten).
    pub reclaims: AtomicU64,
    /// Creation races lost to another host (another subnet was chosen).
    pub races_lost: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Acquires a lease for this host: see the module documentation for the order of preference.
/// `previous` is the subnet recorded in subnet.env by the previous run, if any.
pub async fn acquire<R: Registry>(
    registry: &R,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
    ttl: Duration,
) -> Result<Lease, AcquireError> {
    let counters = LeaseCounters::default();
    acquire_counted(registry, config, attrs, previous, ttl, &counters).await
}

/// [`acquire`], counting lost creation races into `counters`.
async fn acquire_counted<R: Registry>(
    registry: &R,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
    ttl: Duration,
    counters: &LeaseCounters,
) -> Result<Lease, AcquireError> {
    for _ in 0..MAX_ATTEMPTS {
        let leases = registry.list_leases().await?;
        let plan = alloc::choose_subnet(config, attrs, previous, &leases, &mut rand::rng())?;
        for note in &plan.rejected {
            tracing::info!("{note}");
        }
        for stale in &plan.stale {
            registry
                .delete_lease(stale.lease.key, stale.mod_revision)
                .await?;
        }
        let (key, guard, lifetime, why) = claim(&plan.choice, ttl);
        let Some(expiration) = registry.put_lease(key, attrs, guard, lifetime).await? else {
            count(&counters.races_lost);
            tracing::info!(
                "subnet {key} changed in etcd while we claimed it (another host was faster); \
                 choosing again"
            );
            continue;
        };
        if guard == PutGuard::Absent {
            if let Some(earlier) = give_way(registry, key).await? {
                count(&counters.races_lost);
                tracing::warn!(
                    "subnet {key} overlaps {} of {}, written just before ours by a host that chose at the same time: gave ours up, choosing again",
                    earlier.key,
                    earlier.attrs.public_ip
                );
                continue;
            }
        }
        tracing::info!(decision = "subnet", subnet = %key, public_ip = %attrs.public_ip, reason = %why, "{why}; PublicIP {}", attrs.public_ip);
        return Ok(Lease {
            key,
            attrs: attrs.clone(),
            expiration: Some(expiration),
        });
    }
    Err(AcquireError::Contention(MAX_ATTEMPTS))
}

/// After creating the dual-stack lease `key`: gives it up (deletes it) when a lease written
/// before it shares one of its halves ([`alloc::earlier_clash`]), and returns that lease. A
/// single-stack key needs no check: etcd created it only if no host holds that very key.
async fn give_way<R: Registry>(
    registry: &R,
    key: SubnetKey,
) -> Result<Option<Lease>, RegistryError> {
    if !key.has_ipv4() || key.ipv6.is_none() {
        return Ok(None);
    }
    let leases = registry.list_leases().await?;
    let Some((ours, earlier)) = alloc::earlier_clash(key, &leases) else {
        return Ok(None);
    };
    registry.delete_lease(key, ours.mod_revision).await?;
    Ok(Some(earlier.lease.clone()))
}

/// How to write the chosen lease: its key, the guard, the TTL and why, for the log.
fn claim(choice: &Choice, ttl: Duration) -> (SubnetKey, PutGuard, Option<Duration>, String) {
    match choice {
        Choice::Reuse(stored) => (
            stored.lease.key,
            PutGuard::Unchanged {
                mod_revision: stored.mod_revision,
            },
            lifetime(stored, ttl),
            format!(
                "reusing lease {}: it holds our PublicIP{}",
                stored.lease.key,
                if stored.reservation {
                    " (a reservation: kept without a TTL)"
                } else {
                    ""
                }
            ),
        ),
        Choice::Create {
            key: subnet,
            reason,
        } => (
            *subnet,
            PutGuard::Absent,
            Some(ttl),
            match reason {
                Reason::PreviousSubnet => {
                    format!("re-claiming subnet {subnet} of the previous run (subnet.env)")
                }
                Reason::Allocated => format!(
                    "allocated new subnet {subnet} (random among the free subnets from SubnetMin)"
                ),
            },
        ),
    }
}

/// The TTL to write a stored lease of ours with: none for a reservation, so it stays one.
fn lifetime(stored: &StoredLease, ttl: Duration) -> Option<Duration> {
    (!stored.reservation).then_some(ttl)
}

/// The result of making our key hold our value with a fresh TTL.
enum Refresh {
    /// Done; the lease now expires then.
    Refreshed(SystemTime),
    /// Another host holds the key.
    HeldBy(LeaseAttrs),
    /// Re-created, the key shared a half with this lease, written while ours was gone: ours was
    /// given up ([`give_way`]).
    Overlapped(Lease),
    /// The key kept changing between our read and our guarded write; try again later.
    Contended,
}

/// What the own-lease watch says about our key.
enum Seen {
    /// The key holds exactly our attributes.
    Ours,
    /// The key holds the attributes we replaced: the echo of our own earlier write, not yet
    /// followed by that of the new attributes.
    Replaced,
    /// The key is gone (deleted or expired).
    Missing,
    /// Someone else wrote the key: another host, or another agent with our PublicIP.
    Other(LeaseAttrs),
}

/// What the manager does next, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Renew the lease at the renewal time.
    Renew,
    /// Publish changed attributes (see [`LeaseHandle::set_attrs`]).
    Update,
    /// Our key vanished: claim it again.
    Reclaim,
    /// Another host overwrote our key: check again later.
    Conflict,
}

/// Changes the attributes the [`LeaseManager`] publishes, e.g. when the vxlan device got a new
/// VtepMAC, so that peers update their entries for us.
#[derive(Clone, Debug)]
pub struct LeaseHandle {
    wanted: state::Sender<LeaseAttrs>,
}

impl LeaseHandle {
    /// Publishes `attrs` from now on: written at once with the guarded write renewals use (or by
    /// the pending re-claim while the lease is not valid), and kept for later renewals and
    /// re-claims. Attributes equal to those asked for before change nothing.
    pub fn set_attrs(&self, attrs: LeaseAttrs) {
        self.wanted.send_if_modified(|wanted| {
            let changed = *wanted != attrs;
            *wanted = attrs;
            changed
        });
    }
}

/// Holds this host's lease: publishes it, renews it, and re-claims it if it vanishes.
pub struct LeaseManager<R: Registry> {
    registry: R,
    /// The attributes we publish.
    attrs: LeaseAttrs,
    /// The attributes published before the last [`LeaseHandle::set_attrs`], until the watch shows
    /// the new ones: until then the watch may still report our own earlier write.
    replaced: Option<LeaseAttrs>,
    timing: LeaseTiming,
    current: state::Sender<Lease>,
    /// When etcd last answered one of our requests.
    contact: state::Sender<Instant>,
    /// New attributes asked for through [`LeaseManager::handle`].
    wanted: state::Receiver<LeaseAttrs>,
    handle: LeaseHandle,
    counters: Arc<LeaseCounters>,
}

impl<R: Registry> LeaseManager<R> {
    /// Acquires a lease (see [`acquire`]) and returns the manager holding it.
    pub async fn start(
        registry: R,
        config: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<SubnetKey>,
        timing: LeaseTiming,
    ) -> Result<Self, AcquireError> {
        let counters = Arc::new(LeaseCounters::default());
        let lease =
            acquire_counted(&registry, config, &attrs, previous, timing.ttl, &counters).await?;
        let (wanted_tx, wanted) = state::channel(attrs.clone());
        Ok(LeaseManager {
            registry,
            attrs,
            replaced: None,
            timing,
            current: state::channel(lease).0,
            contact: state::channel(Instant::now()).0,
            wanted,
            handle: LeaseHandle { wanted: wanted_tx },
            counters,
        })
    }

    /// What happened to the lease so far (renewals, re-claims, lost races).
    pub fn counters(&self) -> Arc<LeaseCounters> {
        Arc::clone(&self.counters)
    }

    /// A handle to change the published attributes while [`LeaseManager::run`] runs.
    pub fn handle(&self) -> LeaseHandle {
        self.handle.clone()
    }

    /// The current lease. Its `expiration` is `None` while it is not valid (vanished and not yet
    /// re-claimed, or overwritten by another host); see [`is_valid`].
    pub fn lease(&self) -> Lease {
        self.current.borrow().clone()
    }

    /// Follows the current lease: changes when it is renewed, becomes invalid, or moves to
    /// another subnet (the daemon must then reconfigure its data plane).
    pub fn subscribe(&self) -> state::Receiver<Lease> {
        self.current.subscribe()
    }

    /// When etcd last answered the manager (acquire, renewals, own-key checks): readiness turns
    /// false after a grace period without contact.
    pub fn contact(&self) -> state::Receiver<Instant> {
        self.contact.subscribe()
    }

    /// Keeps the lease forever; stop it by dropping the future (or aborting its task).
    pub async fn run(mut self) {
        let mut key = self.lease().key;
        let mut own = self.registry.watch_leases(WatchScope::OneLease(key));
        let mut next = Next::Renew;
        let mut at = self.renewal_time();
        let first_check = Instant::now() + OWN_KEY_CHECK_PERIOD;
        let mut check = tokio::time::interval_at(first_check, OWN_KEY_CHECK_PERIOD);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {
                    (next, at) = self.act(next).await;
                }
                _ = check.tick() => {
                    if self.registry.watch_is_open() {
                        // etcd answers on an open stream: contact without a request. Our key
                        // is watched, and read again whenever that watch reconnects.
                        self.touch();
                    } else if let Some(changed) = self.check_own_key(key, next).await {
                        (next, at) = changed;
                    }
                }
                update = own.recv() => {
                    let Some(update) = update else {
                        // The watch task ends only with its receiver; should it die, restart
                        // it after a pause, never in a busy loop.
                        tracing::error!("the watch of lease {key} stopped; restarting it");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        own = self.registry.watch_leases(WatchScope::OneLease(key));
                        continue;
                    };
                    if let Some(changed) = self.observe(update, next) {
                        (next, at) = changed;
                    }
                }
                // Never closed: `self.handle` keeps a sender.
                Ok(()) = self.wanted.changed() => {
                    let attrs = self.wanted.borrow_and_update().clone();
                    if let Some(changed) = self.replace_attrs(attrs, next) {
                        (next, at) = changed;
                    }
                }
            }
            if self.lease().key != key {
                key = self.lease().key;
                own = self.registry.watch_leases(WatchScope::OneLease(key));
            }
        }
    }

    /// Reads our key (see [`OWN_KEY_CHECK_PERIOD`]) and reacts as to a watch listing; returns
    /// the next action and when, if it changes. A failed read changes nothing (the watch and the
    /// renewal report etcd problems).
    async fn check_own_key(&mut self, key: SubnetKey, next: Next) -> Option<(Next, Instant)> {
        match self.registry.get_lease(key).await {
            Ok(found) => {
                self.touch();
                let leases = found.into_iter().map(|stored| stored.lease).collect();
                self.observe(WatchUpdate::Snapshot(leases), next)
            }
            Err(e) => {
                tracing::debug!("cannot read our lease {key}: {e}");
                None
            }
        }
    }

    /// Notes that etcd just answered.
    fn touch(&self) {
        self.contact.send_replace(Instant::now());
    }

    /// When to renew the lease just written: `renew_margin` before it expires, but no sooner
    /// than `retry_interval` from now, so a margin as long as the TTL cannot make renewals spin.
    fn renewal_time(&self) -> Instant {
        let until = self.lease().expiration.and_then(|expiration| {
            expiration
                .checked_sub(self.timing.renew_margin)?
                .duration_since(SystemTime::now())
                .ok()
        });
        // A reservation never expires: it is still checked (and rewritten) once per TTL.
        Instant::now()
            + until
                .unwrap_or(Duration::ZERO)
                .min(self.timing.ttl)
                .max(self.timing.retry_interval)
    }

    /// Takes new attributes to publish; returns the next action and when, if it changes.
    fn replace_attrs(&mut self, attrs: LeaseAttrs, next: Next) -> Option<(Next, Instant)> {
        if attrs == self.attrs {
            return None;
        }
        tracing::info!(
            "lease attributes changed from {} to {}; publishing them",
            self.attrs.to_json(),
            attrs.to_json()
        );
        self.replaced = Some(std::mem::replace(&mut self.attrs, attrs));
        match next {
            Next::Renew | Next::Update => Some((Next::Update, Instant::now())),
            // The pending re-claim or conflict check writes the new attributes.
            Next::Reclaim | Next::Conflict => None,
        }
    }

    /// Reacts to the own-lease watch; returns the next action and when, if it changes.
    fn observe(&mut self, update: WatchUpdate, next: Next) -> Option<(Next, Instant)> {
        let key = self.lease().key;
        let seen = match update {
            WatchUpdate::Snapshot(leases) => match leases.into_iter().find(|l| l.key == key) {
                Some(lease) => self.classify(lease.attrs),
                None => Seen::Missing,
            },
            WatchUpdate::Events(events) => {
                // A deletion followed by another host's write is our lease taken while it was
                // gone (not an overwrite of it): re-claim, which finds it held and moves us.
                let vanished = events.iter().any(|e| matches!(e, LeaseEvent::Removed(_)));
                match (events.into_iter().last()?, vanished) {
                    (LeaseEvent::Put(lease), vanished) => match self.classify(lease.attrs) {
                        Seen::Other(_) if vanished => Seen::Missing,
                        seen => seen,
                    },
                    (LeaseEvent::Removed(_), _) => Seen::Missing,
                }
            }
        };
        match seen {
            Seen::Ours => {
                self.replaced = None;
                None
            }
            Seen::Replaced => None,
            Seen::Missing if next == Next::Reclaim => None,
            Seen::Missing => {
                tracing::warn!(
                    "lease {key} disappeared from etcd (deleted or expired); re-claiming it"
                );
                self.invalidate();
                Some((Next::Reclaim, Instant::now()))
            }
            // The pending re-claim finds the key held by another host and moves us.
            Seen::Other(_) if next == Next::Reclaim => None,
            Seen::Other(attrs) => {
                self.report_conflict(key, &attrs);
                // Not at once: two agents fighting over one key must not spin.
                Some((Next::Conflict, Instant::now() + self.timing.retry_interval))
            }
        }
    }

    fn classify(&self, attrs: LeaseAttrs) -> Seen {
        let stored = |ours: &LeaseAttrs| attrs == self.registry.stored_attrs(ours);
        if stored(&self.attrs) {
            Seen::Ours
        } else if self.replaced.as_ref().is_some_and(stored) {
            Seen::Replaced
        } else {
            Seen::Other(attrs)
        }
    }

    /// Renews, updates or re-claims the lease; returns what to do next and when.
    async fn act(&self, next: Next) -> (Next, Instant) {
        let key = self.lease().key;
        let retry = Instant::now() + self.timing.retry_interval;
        let refreshed = self.refresh(key).await;
        if refreshed.is_ok() {
            self.touch();
        }
        match refreshed {
            Ok(Refresh::Contended) => {
                tracing::warn!(
                    "lease {key} kept changing while we wrote it ({MAX_REFRESH_RACES} times); \
                     retrying in {:?}",
                    self.timing.retry_interval
                );
                (next, retry)
            }
            Ok(Refresh::Refreshed(expiration)) => self.refreshed(next, key, expiration),
            Ok(Refresh::HeldBy(attrs)) if next == Next::Reclaim => {
                tracing::error!(
                    "our subnet {key} was taken by {} while our lease was gone; acquiring a \
                     new subnet",
                    attrs.public_ip
                );
                self.move_to_new_subnet(key, retry).await
            }
            Ok(Refresh::HeldBy(attrs)) => {
                self.report_conflict(key, &attrs);
                (Next::Conflict, retry)
            }
            Ok(Refresh::Overlapped(earlier)) => {
                tracing::error!(
                    "our subnet {key} overlaps {} of {}, written while our lease was gone; \
                     acquiring a new subnet",
                    earlier.key,
                    earlier.attrs.public_ip
                );
                self.move_to_new_subnet(key, retry).await
            }
            Err(e) => {
                let what = match next {
                    Next::Renew => "renew",
                    Next::Update => "update",
                    Next::Reclaim | Next::Conflict => "re-claim",
                };
                tracing::warn!(
                    "cannot {what} lease {key}: {e}; retrying in {:?}",
                    self.timing.retry_interval
                );
                (next, retry)
            }
        }
    }

    /// Counts and logs a successful renewal, update or re-claim of `key` and publishes the
    /// lease with its new `expiration`.
    fn refreshed(&self, done: Next, key: SubnetKey, expiration: SystemTime) -> (Next, Instant) {
        match done {
            Next::Renew => {
                count(&self.counters.renewals);
                tracing::info!("renewed lease {key}")
            }
            Next::Update => tracing::info!("published lease {key} with the new attributes"),
            Next::Reclaim | Next::Conflict => {
                count(&self.counters.reclaims);
                tracing::warn!("re-claimed lease {key}: same subnet as before")
            }
        }
        self.publish(Lease {
            key,
            attrs: self.attrs.clone(),
            expiration: Some(expiration),
        });
        (Next::Renew, self.renewal_time())
    }

    /// Acquires a new subnet after another host took `old` while our lease was gone; on failure
    /// tries again at `retry`.
    async fn move_to_new_subnet(&self, old: SubnetKey, retry: Instant) -> (Next, Instant) {
        match self.reacquire().await {
            Ok(lease) => {
                tracing::error!(
                    "SUBNET CHANGED from {old} to {}: local pods keep addresses from the old \
                     subnet until the node's containers are restarted",
                    lease.key
                );
                self.publish(lease);
                (Next::Renew, self.renewal_time())
            }
            Err(e) => {
                tracing::warn!("{e}; retrying in {:?}", self.timing.retry_interval);
                (Next::Reclaim, retry)
            }
        }
    }

    /// Makes `key` hold our attributes with a fresh TTL, unless another host holds it.
    async fn refresh(&self, key: SubnetKey) -> Result<Refresh, RegistryError> {
        let ttl = self.timing.ttl;
        for _ in 0..MAX_REFRESH_RACES {
            let written = match self.registry.get_lease(key).await? {
                None => {
                    let created = (self.registry)
                        .put_lease(key, &self.attrs, PutGuard::Absent, Some(ttl))
                        .await?;
                    if created.is_some() {
                        if let Some(earlier) = give_way(&self.registry, key).await? {
                            return Ok(Refresh::Overlapped(earlier));
                        }
                    }
                    created
                }
                Some(stored) if stored.lease.attrs.public_ip == self.attrs.public_ip => {
                    let guard = PutGuard::Unchanged {
                        mod_revision: stored.mod_revision,
                    };
                    let lifetime = lifetime(&stored, ttl);
                    self.registry
                        .put_lease(key, &self.attrs, guard, lifetime)
                        .await?
                }
                Some(other) => return Ok(Refresh::HeldBy(other.lease.attrs)),
            };
            if let Some(expiration) = written {
                return Ok(Refresh::Refreshed(expiration));
            }
            // The key changed between reading and writing: look again.
        }
        Ok(Refresh::Contended)
    }

    /// Acquires a lease anew with the current config (our subnet was taken).
    async fn reacquire(&self) -> Result<Lease, AcquireError> {
        let config = self.registry.network_config().await?;
        let ttl = self.timing.ttl;
        acquire_counted(
            &self.registry,
            &config,
            &self.attrs,
            None,
            ttl,
            &self.counters,
        )
        .await
    }

    fn report_conflict(&self, key: SubnetKey, attrs: &LeaseAttrs) {
        if attrs.public_ip == self.attrs.public_ip {
            tracing::error!(
                "lease {key} was rewritten with other attributes ({}) by another agent with our \
                 PublicIP {}: are two agents running for one host, or is --public-ip duplicated? \
                 Taking it back in {:?}",
                attrs.to_json(),
                attrs.public_ip,
                self.timing.retry_interval
            );
        } else {
            tracing::error!(
                "lease {key} was overwritten by another host (PublicIP {}, backend {}): two \
                 hosts now claim the same subnet; not overwriting it back. Find the host with \
                 PublicIP {} and fix its subnet.env or config",
                attrs.public_ip,
                attrs.backend_type,
                attrs.public_ip
            );
        }
        self.invalidate();
    }

    /// Publishes the current lease as not valid.
    fn invalidate(&self) {
        self.current.send_modify(|lease| lease.expiration = None);
    }

    fn publish(&self, lease: Lease) {
        self.current.send_replace(lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    /// An in-memory registry whose watches the test drives by hand.
    #[derive(Clone)]
    struct Fake {
        state: Arc<Mutex<FakeState>>,
    }

    struct FakeState {
        config: NetworkConfig,
        leases: BTreeMap<SubnetKey, (LeaseAttrs, i64)>,
        revision: i64,
        watches: Vec<(WatchScope, mpsc::Sender<WatchUpdate>)>,
        /// Another host that creates the key just before our next create (a lost race).
        thief: Option<LeaseAttrs>,
        /// Another dual-stack host that creates a key with the same IPv4 half and IPv6 half
        /// `fd00:3:0:ff::/64` just before our next create.
        twin: Option<LeaseAttrs>,
        /// Keys written without a TTL (reservations).
        untimed: std::collections::BTreeSet<SubnetKey>,
    }

    impl Fake {
        fn new(config: &str) -> Fake {
            Fake {
                state: Arc::new(Mutex::new(FakeState {
                    config: NetworkConfig::parse(config.as_bytes()).unwrap(),
                    leases: BTreeMap::new(),
                    revision: 1,
                    watches: Vec::new(),
                    thief: None,
                    twin: None,
                    untimed: Default::default(),
                })),
            }
        }

        fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.state.lock().unwrap()
        }
    }

    impl FakeState {
        fn stored(&self, key: SubnetKey, attrs: &LeaseAttrs, revision: i64) -> StoredLease {
            StoredLease {
                lease: Lease {
                    key,
                    attrs: attrs.clone(),
                    expiration: None,
                },
                mod_revision: revision,
                reservation: self.untimed.contains(&key),
            }
        }
    }

    impl Registry for Fake {
        async fn network_config(&self) -> Result<NetworkConfig, RegistryError> {
            Ok(self.state().config.clone())
        }

        async fn list_leases(&self) -> Result<Vec<StoredLease>, RegistryError> {
            let state = self.state();
            Ok(state
                .leases
                .iter()
                .map(|(key, (attrs, rev))| state.stored(*key, attrs, *rev))
                .collect())
        }

        async fn get_lease(&self, key: SubnetKey) -> Result<Option<StoredLease>, RegistryError> {
            let state = self.state();
            Ok(state
                .leases
                .get(&key)
                .map(|(attrs, rev)| state.stored(key, attrs, *rev)))
        }

        async fn put_lease(
            &self,
            key: SubnetKey,
            attrs: &LeaseAttrs,
            guard: PutGuard,
            ttl: Option<Duration>,
        ) -> Result<Option<SystemTime>, RegistryError> {
            let mut state = self.state();
            if let (PutGuard::Absent, Some(thief)) = (guard, state.thief.take()) {
                state.revision += 1;
                let revision = state.revision;
                state.leases.insert(key, (thief, revision));
            }
            if let (PutGuard::Absent, Some(twin)) = (guard, state.twin.take()) {
                state.revision += 1;
                let revision = state.revision;
                let ipv6 = Some("fd00:3:0:ff::/64".parse().unwrap());
                let ipv4 = key.ipv4;
                state
                    .leases
                    .insert(SubnetKey { ipv4, ipv6 }, (twin, revision));
            }
            let current = state.leases.get(&key).map(|(_, rev)| *rev);
            let holds = match guard {
                PutGuard::Absent => current.is_none(),
                PutGuard::Unchanged { mod_revision } => current == Some(mod_revision),
            };
            if !holds {
                return Ok(None);
            }
            state.revision += 1;
            let revision = state.revision;
            state.leases.insert(key, (attrs.clone(), revision));
            match ttl {
                Some(ttl) => {
                    state.untimed.remove(&key);
                    Ok(Some(SystemTime::now() + ttl))
                }
                None => {
                    state.untimed.insert(key);
                    Ok(Some(crate::lease::never()))
                }
            }
        }

        async fn delete_lease(
            &self,
            key: SubnetKey,
            mod_revision: i64,
        ) -> Result<bool, RegistryError> {
            let mut state = self.state();
            if state.leases.get(&key).map(|(_, rev)| *rev) != Some(mod_revision) {
                return Ok(false);
            }
            Ok(state.leases.remove(&key).is_some())
        }

        fn watch_leases(&self, scope: WatchScope) -> mpsc::Receiver<WatchUpdate> {
            let (tx, rx) = mpsc::channel(8);
            self.state().watches.push((scope, tx));
            rx
        }
    }

    fn attrs(last: u8) -> LeaseAttrs {
        LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, last), "host-gw")
    }

    fn key(s: &str) -> SubnetKey {
        SubnetKey::v4(s.parse().unwrap())
    }

    async fn wait_for(rx: &mut state::Receiver<Lease>, what: &str, check: impl Fn(&Lease) -> bool) {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| check(l)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting until {what}"))
            .unwrap();
    }

    #[tokio::test]
    async fn a_re_created_dual_stack_lease_sharing_a_half_moves_us_to_a_new_subnet() {
        let fake = Fake::new(DUAL);
        let config = fake.state().config.clone();
        let timing = LeaseTiming::default();
        let manager = LeaseManager::start(fake.clone(), &config, attrs(1), None, timing)
            .await
            .unwrap();
        let first = manager.lease().key;
        let mut current = manager.subscribe();
        let task = tokio::spawn(manager.run());
        tokio::task::yield_now().await;

        // Our lease vanishes; re-creating it, we find a twin with our IPv4 half written first.
        let own_watch = {
            let mut state = fake.state();
            state.leases.remove(&first);
            state.twin = Some(attrs(9));
            state.watches.last().cloned().unwrap().1
        };
        let removed = LeaseEvent::Removed(first);
        own_watch
            .send(WatchUpdate::Events(vec![removed]))
            .await
            .unwrap();

        wait_for(&mut current, "we move to the other IPv4 subnet", |l| {
            l.key.ipv4 != first.ipv4 && is_valid(l, SystemTime::now())
        })
        .await;
        let state = fake.state();
        assert!(!state.leases.contains_key(&first), "ours was given up");
        let twins = state
            .leases
            .values()
            .filter(|(a, _)| *a == attrs(9))
            .count();
        assert_eq!(twins, 1, "{:?}", state.leases);
        drop(state);
        task.abort();
    }

    #[tokio::test]
    async fn a_vanished_lease_taken_by_another_host_moves_us_to_a_new_subnet() {
        let fake =
            Fake::new(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.2.0"}"#);
        let previous = Some("10.3.1.0-24".parse().unwrap());
        let config = fake.state().config.clone();
        let manager = LeaseManager::start(
            fake.clone(),
            &config,
            attrs(1),
            previous,
            LeaseTiming::default(),
        )
        .await
        .unwrap();
        assert_eq!(manager.lease().key, key("10.3.1.0/24"));
        let mut current = manager.subscribe();
        let task = tokio::spawn(manager.run());
        tokio::task::yield_now().await;

        // Another host takes the subnet between its deletion and our re-claim.
        let own_watch = {
            let mut state = fake.state();
            state.revision += 1;
            let revision = state.revision;
            state
                .leases
                .insert(key("10.3.1.0/24"), (attrs(9), revision));
            let (scope, tx) = state.watches.last().cloned().unwrap();
            assert_eq!(scope, WatchScope::OneLease(key("10.3.1.0/24")));
            tx
        };
        own_watch
            .send(WatchUpdate::Events(vec![LeaseEvent::Removed(key(
                "10.3.1.0/24",
            ))]))
            .await
            .unwrap();

        wait_for(&mut current, "we move to the free subnet", |l| {
            l.key == key("10.3.2.0/24") && is_valid(l, SystemTime::now())
        })
        .await;
        let state = fake.state();
        assert_eq!(
            state.leases[&key("10.3.1.0/24")].0,
            attrs(9),
            "the other host keeps its lease"
        );
        assert_eq!(state.leases[&key("10.3.2.0/24")].0, attrs(1));
        assert_eq!(
            state.watches.last().map(|(scope, _)| *scope),
            Some(WatchScope::OneLease(key("10.3.2.0/24"))),
            "the own-lease watch follows the new key"
        );
        drop(state);
        task.abort();
    }

    /// Applies `event` to the fake store as another writer would, and reports it on the
    /// own-lease watch (the last watch opened).
    async fn external(fake: &Fake, event: LeaseEvent) {
        let tx = {
            let mut state = fake.state();
            state.revision += 1;
            let revision = state.revision;
            match &event {
                LeaseEvent::Put(lease) => {
                    state
                        .leases
                        .insert(lease.key, (lease.attrs.clone(), revision));
                }
                LeaseEvent::Removed(key) => {
                    state.leases.remove(key);
                }
            }
            state.watches.last().map(|(_, tx)| tx.clone()).unwrap()
        };
        tx.send(WatchUpdate::Events(vec![event])).await.unwrap();
        // The manager task handles it before we go on (current-thread runtime).
        tokio::task::yield_now().await;
    }

    /// Only reports `attrs` at `key` on the own-lease watch, as the echo of an earlier write.
    async fn echo(fake: &Fake, key: SubnetKey, attrs: &LeaseAttrs) {
        let tx = fake
            .state()
            .watches
            .last()
            .map(|(_, tx)| tx.clone())
            .unwrap();
        let lease = Lease {
            key,
            attrs: attrs.clone(),
            expiration: None,
        };
        tx.send(WatchUpdate::Events(vec![LeaseEvent::Put(lease)]))
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }

    #[tokio::test]
    async fn changed_attributes_are_published_and_kept_for_re_claims() {
        let fake = Fake::new(r#"{"Network":"10.3.0.0/16"}"#);
        let config = fake.state().config.clone();
        let old = attrs(1);
        let manager = LeaseManager::start(
            fake.clone(),
            &config,
            old.clone(),
            None,
            LeaseTiming::default(),
        )
        .await
        .unwrap();
        let key = manager.lease().key;
        let handle = manager.handle();
        let mut current = manager.subscribe();
        let task = tokio::spawn(manager.run());
        tokio::task::yield_now().await;

        let mut new = old.clone();
        new.backend_data = Some(crate::BackendData::new(
            &serde_json::json!({"VtepMAC": "02:00:00:00:00:02"}),
        ));
        handle.set_attrs(new.clone());
        wait_for(&mut current, "the new attributes are published", |l| {
            l.key == key && l.attrs == new && is_valid(l, SystemTime::now())
        })
        .await;
        assert_eq!(fake.state().leases[&key].0, new, "written to the store");

        // The watch still reporting our earlier write is no conflict.
        echo(&fake, key, &old).await;
        assert!(is_valid(&current.borrow_and_update(), SystemTime::now()));
        echo(&fake, key, &new).await;

        // Once the new attributes were seen, the old ones come from another agent.
        external(
            &fake,
            LeaseEvent::Put(Lease {
                key,
                attrs: old.clone(),
                expiration: None,
            }),
        )
        .await;
        wait_for(&mut current, "the lease is invalid", |l| {
            !is_valid(l, SystemTime::now())
        })
        .await;

        // A re-claim writes the new attributes.
        external(&fake, LeaseEvent::Removed(key)).await;
        wait_for(&mut current, "the lease is re-claimed", |l| {
            l.key == key && is_valid(l, SystemTime::now())
        })
        .await;
        assert_eq!(fake.state().leases[&key].0, new);
        assert_eq!(current.borrow().attrs, new);
        task.abort();
    }

    #[tokio::test]
    async fn a_reservation_is_reused_and_renewed_without_a_ttl() {
        let fake = Fake::new(r#"{"Network":"10.3.0.0/16"}"#);
        let config = fake.state().config.clone();
        let reserved = key("10.3.7.0/24");
        fake.state().leases.insert(reserved, (attrs(1), 5));
        fake.state().untimed.insert(reserved);
        let ttl = Duration::from_secs(60);
        let lease = acquire(&fake, &config, &attrs(1), None, ttl).await.unwrap();
        assert_eq!(lease.key, reserved);
        assert_eq!(lease.expiration, Some(crate::lease::never()));
        assert!(
            fake.state().untimed.contains(&reserved),
            "still a reservation"
        );

        let timing = LeaseTiming::default();
        let manager = LeaseManager::start(fake.clone(), &config, attrs(1), None, timing)
            .await
            .unwrap();
        let renewed = manager.refresh(reserved).await.unwrap();
        assert!(matches!(renewed, Refresh::Refreshed(t) if t == crate::lease::never()));
        assert!(fake.state().untimed.contains(&reserved), "renewal keeps it");
        assert!(manager.renewal_time() <= Instant::now() + timing.ttl);
    }

    /// A dual-stack network of two IPv4 and four IPv6 subnets.
    const DUAL: &str = r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.2.0",
        "EnableIPv6":true,"IPv6Network":"fd00:3::/48",
        "IPv6SubnetMin":"fd00:3:0:1::","IPv6SubnetMax":"fd00:3:0:4::"}"#;

    #[tokio::test]
    async fn a_dual_stack_lease_sharing_a_half_with_an_earlier_one_is_given_up() {
        let fake = Fake::new(DUAL);
        let config = fake.state().config.clone();
        fake.state().twin = Some(attrs(9));
        let counters = LeaseCounters::default();
        let ttl = Duration::from_secs(60);
        let lease = acquire_counted(&fake, &config, &attrs(1), None, ttl, &counters)
            .await
            .unwrap();
        let leases = fake.state().leases.clone();
        assert_eq!(leases.len(), 2, "the twin's and ours: {leases:?}");
        let (twin, _) = (leases.iter())
            .find(|(_, (a, _))| *a == attrs(9))
            .expect("the twin's lease stays");
        assert_ne!(
            lease.key.ipv4, twin.ipv4,
            "ours moved to the other IPv4 subnet"
        );
        assert_eq!(leases[&lease.key].0, attrs(1));
        assert_eq!(counters.races_lost.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_lost_creation_race_picks_another_subnet() {
        let fake =
            Fake::new(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.2.0"}"#);
        let config = fake.state().config.clone();
        fake.state().thief = Some(attrs(9));
        let ttl = Duration::from_secs(60);
        let previous = Some("10.3.1.0-24".parse().unwrap());
        let lease = acquire(&fake, &config, &attrs(1), previous, ttl)
            .await
            .unwrap();
        assert_eq!(lease.key, key("10.3.2.0/24"));
        assert_eq!(fake.state().leases[&key("10.3.1.0/24")].0, attrs(9));

        let err = acquire(&fake, &config, &attrs(3), None, ttl)
            .await
            .unwrap_err();
        assert!(matches!(err, AcquireError::OutOfSubnets(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
}
