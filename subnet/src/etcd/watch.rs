//! The etcd v3 source of the lease watch loop ([`crate::watch`]): a listing at a revision, then a
//! watch stream from the next one, noticing compaction and a store that went back in revision.

use etcd_client::{Event, EventType};
use tokio::sync::mpsc;

use crate::etcd::EtcdRegistry;
use crate::peers::LeaseEvent;
use crate::registry::{RegistryError, StoredLease, WatchScope, WatchUpdate};
use crate::watch::{Ended, WatchSource};

impl WatchSource for EtcdRegistry {
    async fn list(&self, scope: WatchScope) -> Result<(Vec<StoredLease>, i64), RegistryError> {
        EtcdRegistry::list(self, scope).await
    }

    async fn follow(&self, scope: WatchScope, start: i64, tx: &mpsc::Sender<WatchUpdate>) -> Ended {
        follow(self, scope, start, tx).await
    }
}

/// Follows one etcd v3 watch stream from `start`, sending event batches until it ends.
async fn follow(
    registry: &EtcdRegistry,
    scope: WatchScope,
    start: i64,
    tx: &mpsc::Sender<WatchUpdate>,
) -> Ended {
    let mut next = start;
    let mut stream = match registry.open_watch(scope, start).await {
        Ok(stream) => stream,
        Err(e) => {
            return Ended::Broken {
                resume_from: next,
                error: e.to_string(),
            }
        }
    };
    let _open = registry.stream_opened();
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                return Ended::Broken {
                    resume_from: next,
                    error: "etcd closed the watch stream".into(),
                }
            }
            Err(e) => {
                return Ended::Broken {
                    resume_from: next,
                    error: registry.describe("watch leases", e).to_string(),
                }
            }
        };
        let position = response.header().map(|h| h.revision());
        if let Some(now) = position.filter(|now| response.created() && now + 1 < start) {
            return Ended::Rewound {
                from: start - 1,
                now,
            };
        }
        if response.canceled() {
            if response.compact_revision() > 0 {
                return Ended::Compacted(response.compact_revision());
            }
            return Ended::Broken {
                resume_from: next,
                error: format!("etcd canceled the watch: {}", response.cancel_reason()),
            };
        }
        let events = translate(registry, response.events(), &mut next);
        if !events.is_empty() && tx.send(WatchUpdate::Events(events)).await.is_err() {
            return Ended::Stopped;
        }
    }
}

/// Turns etcd events into lease events, skipping malformed ones with a warning, and advances
/// `next` past every event seen.
fn translate(registry: &EtcdRegistry, events: &[Event], next: &mut i64) -> Vec<LeaseEvent> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let Some(kv) = event.kv() else { continue };
        *next = (*next).max(kv.mod_revision() + 1);
        match event.event_type() {
            EventType::Put => match registry.decode(kv) {
                Ok(stored) => out.push(LeaseEvent::Put(stored.lease)),
                Err(e) => e.report_skipped("ignoring a lease update"),
            },
            EventType::Delete => match registry.decode_key(kv.key()) {
                Ok(key) => out.push(LeaseEvent::Removed(key)),
                Err(e) => tracing::debug!("ignoring deletion of a non-lease key: {e}"),
            },
        }
    }
    out
}
