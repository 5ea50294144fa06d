//! Watching leases in etcd without losing events.
//!
//! The watcher lists the scope (revision `R`), delivers that as a [`WatchUpdate::Snapshot`], then
//! watches from `R + 1` and delivers each watch response's events as one
//! [`WatchUpdate::Events`] batch. When the stream breaks it reconnects from the revision after the
//! last event seen (backoff 100 ms doubling to 5 s, with jitter); when etcd no longer has the
//! events from that revision (v3: compacted; v2: outside the 1000-event window) it lists again
//! and delivers a fresh snapshot, which the consumer diffs against what it knows (e.g.
//! [`crate::PeerSet::replace_all`]); so it does when a v3 store is behind the revision we resume
//! from (etcd restored from a backup or wiped: waiting there would miss every change). A malformed
//! key or value is skipped with a warning; it never
//! turns into an empty snapshot (Go flanneld's hazard).
//!
//! The loop is shared by both etcd APIs through [`WatchSource`]; the sources are in
//! `etcd/watch.rs` (v3) and `etcdv2/watch.rs` (v2).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::registry::{RegistryError, StoredLease, WatchScope, WatchUpdate};
use crate::retry::{Backoff, WarnOnce};

/// Smallest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Largest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A watch that stayed up this long counts as healthy: the next failure starts the backoff over.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Updates buffered for a slow consumer before the watcher waits.
const CHANNEL_DEPTH: usize = 16;

/// A store whose leases can be listed and then followed from the position of the listing.
pub(crate) trait WatchSource: Send + Sync + 'static {
    /// Lists the leases in `scope`, skipping malformed entries; returns them with the store
    /// position (revision or index) of the listing.
    fn list(
        &self,
        scope: WatchScope,
    ) -> impl Future<Output = Result<(Vec<StoredLease>, i64), RegistryError>> + Send;

    /// Follows changes in `scope` from position `start`, sending event batches to `tx`, until
    /// the consumer goes away, the history is gone, or the connection breaks.
    fn follow(
        &self,
        scope: WatchScope,
        start: i64,
        tx: &mpsc::Sender<WatchUpdate>,
    ) -> impl Future<Output = Ended> + Send;
}

/// Starts the watch task; it ends when the receiver is dropped.
pub(crate) fn spawn<S: WatchSource>(source: S, scope: WatchScope) -> mpsc::Receiver<WatchUpdate> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        tokio::select! {
            _ = tx.closed() => {}
            _ = run(&source, scope, &tx) => {}
        }
    });
    rx
}

/// Why following a watch stream ended.
pub(crate) enum Ended {
    /// The consumer went away.
    Stopped,
    /// etcd no longer has the events from the position we wanted (compacted, or outside the v2
    /// event window); its history now starts at or before the given position: re-list.
    Compacted(i64),
    /// The stream broke; resume from `resume_from` after a backoff.
    Broken { resume_from: i64, error: String },
    /// The store's position is behind the one we resume from: etcd was restored from a backup
    /// or replaced by an empty one. Waiting for the old position would miss everything: re-list.
    Rewound { from: i64, now: i64 },
}

/// Lists and watches `scope` forever, sending updates to `tx`; returns when `tx` is closed.
async fn run<S: WatchSource>(source: &S, scope: WatchScope, tx: &mpsc::Sender<WatchUpdate>) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut warn = WarnOnce::default();
    let mut resume_from: Option<i64> = None;
    loop {
        let start = match resume_from {
            Some(revision) => revision,
            None => match source.list(scope).await {
                Ok((leases, revision)) => {
                    let leases = leases.into_iter().map(|stored| stored.lease).collect();
                    if tx.send(WatchUpdate::Snapshot(leases)).await.is_err() {
                        return;
                    }
                    revision + 1
                }
                Err(e) => {
                    warn.warn(format!("cannot list leases for {scope:?}: {e}"));
                    backoff.wait().await;
                    continue;
                }
            },
        };
        let opened = Instant::now();
        match source.follow(scope, start, tx).await {
            Ended::Stopped => return,
            Ended::Rewound { from, now } => {
                tracing::warn!(
                    "etcd is at revision {now}, behind revision {from} this watch had reached: \
                     it was restored or replaced; re-listing leases for {scope:?}"
                );
                resume_from = None;
            }
            Ended::Compacted(compact_revision) => {
                tracing::info!(
                    "etcd no longer has the events from {start} (compacted or cleared; now at \
                     {compact_revision}); re-listing leases for {scope:?}"
                );
                resume_from = None;
            }
            Ended::Broken {
                resume_from: next,
                error,
            } => {
                if opened.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                    warn.reset();
                }
                warn.warn(format!(
                    "lease watch for {scope:?} interrupted, resuming from revision {next}: {error}"
                ));
                // One key is read again instead (one small request): a broken connection may
                // mean an etcd that restarted from a backup, and its owner must know at once.
                resume_from = match scope {
                    WatchScope::OneLease(_) => None,
                    WatchScope::AllLeases => Some(next),
                };
                backoff.wait().await;
            }
        }
    }
}
