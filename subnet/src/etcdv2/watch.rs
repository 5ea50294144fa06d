//! Following the v2 keyspace: long polls `GET <key>?wait=true&waitIndex=N[&recursive=true]`, one
//! event per answer, the cursor moving past each event's `modifiedIndex`.
//!
//! The server keeps only the last 1000 events; a cursor older than that is answered with "event
//! index cleared" (error 401) and the shared watch loop re-lists (a fresh
//! [`WatchUpdate::Snapshot`]). A poll with no event is ended after [`POLL`] and re-issued from the
//! index the server reported when the poll started, so a quiet scope does not fall out of the
//! window while other keys change. Actions `delete`, `expire` and `compareAndDelete` are
//! removals; `set`, `create`, `update` and `compareAndSwap` are additions; the deletion of a
//! directory above the scope re-lists.

use std::time::Duration;

use hyper::Method;
use tokio::sync::mpsc;

use super::{Answer, EtcdV2Registry, Outcome, EVENT_INDEX_CLEARED};
use crate::peers::LeaseEvent;
use crate::registry::{RegistryError, StoredLease};
use crate::registry::{WatchScope, WatchUpdate};
use crate::watch::{Ended, WatchSource};

/// How long one long poll waits for an event before it is re-issued.
const POLL: Duration = Duration::from_secs(60);

/// What one v2 event means for the scope.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived: matched right after it is made
enum Change {
    /// A lease event.
    Event(LeaseEvent),
    /// A directory above the scope was deleted: list again.
    Relist,
    /// Nothing for us (a malformed value, a directory, another action).
    Ignore,
}

impl EtcdV2Registry {
    /// What the v2 event `answer` means for `scope`.
    fn change(&self, scope: WatchScope, answer: Answer) -> Change {
        let (scope_key, _) = self.scope_key(scope);
        let node = answer.node;
        match answer.action.as_str() {
            "delete" | "expire" | "compareAndDelete" => {
                let above = scope_key.starts_with(&format!("{}/", node.key.trim_end_matches('/')));
                if above || (node.dir && node.key == scope_key) {
                    tracing::info!(
                        "etcd v2 directory {} was deleted ({})",
                        node.key,
                        answer.action
                    );
                    return Change::Relist;
                }
                match self.keys.decode_key(node.key.as_bytes()) {
                    Ok(key) => Change::Event(LeaseEvent::Removed(key)),
                    Err(e) => {
                        tracing::debug!("ignoring deletion of a non-lease key: {e}");
                        Change::Ignore
                    }
                }
            }
            "set" | "create" | "update" | "compareAndSwap" if !node.dir => {
                match self.decode(&node) {
                    Ok(StoredLease { lease, .. }) => Change::Event(LeaseEvent::Put(lease)),
                    Err(e) => {
                        e.report_skipped("ignoring a lease update");
                        Change::Ignore
                    }
                }
            }
            _ => Change::Ignore,
        }
    }

    /// Follows `scope` from index `start`.
    async fn follow_polls(
        &self,
        scope: WatchScope,
        start: i64,
        tx: &mpsc::Sender<WatchUpdate>,
    ) -> Ended {
        let (key, dir) = self.scope_key(scope);
        let mut next = u64::try_from(start).unwrap_or(0);
        loop {
            let answer = match self.poll(&key, dir, next).await {
                Ok(Polled::Answer(answer)) => answer,
                Ok(Polled::Quiet(started_at)) => {
                    // No event in scope up to the index the poll started at.
                    if let Some(index) = started_at {
                        next = next.max(index + 1);
                    }
                    continue;
                }
                Err(ended) => return ended,
            };
            next = next.max(answer.node.modified_index + 1);
            match self.change(scope, answer) {
                Change::Event(event) => {
                    if tx.send(WatchUpdate::Events(vec![event])).await.is_err() {
                        return Ended::Stopped;
                    }
                }
                Change::Relist => return Ended::Compacted(i64::try_from(next).unwrap_or(0)),
                Change::Ignore => {}
            }
        }
    }

    /// One long poll of `key` (recursive for a directory) from index `next`: the event it
    /// brought, none within [`POLL`], or why following must end.
    async fn poll(&self, key: &str, dir: bool, next: u64) -> Result<Polled, Ended> {
        let broken = |error: String| Ended::Broken {
            resume_from: i64::try_from(next).unwrap_or(i64::MAX),
            error,
        };
        let recursive = if dir { "&recursive=true" } else { "" };
        let query = format!("wait=true&waitIndex={next}{recursive}");
        let path = Self::path(key, &query);
        let pending = (self
            .client
            .open("watch leases", Method::GET, &path, None)
            .await)
            .map_err(|e| broken(e.to_string()))?;
        let (status, started_at) = (pending.status, pending.index);
        // A store behind the index we wait for was restored or replaced (see v3's check).
        if let Some(now) = started_at.filter(|now| now + 1 < next) {
            return Err(Ended::Rewound {
                from: i64::try_from(next - 1).unwrap_or(i64::MAX),
                now: i64::try_from(now).unwrap_or(0),
            });
        }
        let body = match tokio::time::timeout(POLL, pending.body()).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => return Err(broken(format!("the long poll broke: {e}"))),
            Err(_) => return Ok(Polled::Quiet(started_at)),
        };
        let outcome = (self.decode_reply("watch leases", status, started_at, &body))
            .map_err(|e| broken(e.to_string()))?;
        match outcome {
            Outcome::Done(answer, _) => Ok(Polled::Answer(answer)),
            Outcome::Failed(e) if e.code == EVENT_INDEX_CLEARED => {
                Err(Ended::Compacted(i64::try_from(e.index).unwrap_or(i64::MAX)))
            }
            Outcome::Failed(e) => {
                let error = RegistryError::Refused {
                    endpoints: self.client.endpoints().to_string(),
                    operation: "watch leases",
                    detail: e.to_string(),
                };
                Err(broken(error.to_string()))
            }
        }
    }
}

/// What one long poll brought.
enum Polled {
    /// An event.
    Answer(Answer),
    /// None within [`POLL`]; the index the server was at when the poll started.
    Quiet(Option<u64>),
}

impl WatchSource for EtcdV2Registry {
    async fn list(&self, scope: WatchScope) -> Result<(Vec<StoredLease>, i64), RegistryError> {
        EtcdV2Registry::list(self, scope).await
    }

    async fn follow(&self, scope: WatchScope, start: i64, tx: &mpsc::Sender<WatchUpdate>) -> Ended {
        self.follow_polls(scope, start, tx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::EtcdOptions;
    use crate::lease::SubnetKey;

    fn registry() -> EtcdV2Registry {
        EtcdV2Registry::connect(&EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/n".into(),
            ..EtcdOptions::default()
        })
        .unwrap()
    }

    fn event(action: &str, key: &str, value: Option<&str>) -> Answer {
        let value = value.map_or(String::new(), |v| format!(",\"value\":{v:?}"));
        serde_json::from_str(&format!(
            r#"{{"action":"{action}","node":{{"key":"{key}"{value},"modifiedIndex":12}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn v2_actions_map_to_lease_events() {
        let r = registry();
        let all = WatchScope::AllLeases;
        let key: SubnetKey = "10.1.2.0-24".parse().unwrap();
        let value = r#"{"PublicIP":"10.0.0.1","BackendType":"host-gw"}"#;
        for action in ["set", "create", "update", "compareAndSwap"] {
            let change = r.change(all, event(action, "/n/subnets/10.1.2.0-24", Some(value)));
            assert!(
                matches!(&change, Change::Event(LeaseEvent::Put(l)) if l.key == key),
                "{action}: {change:?}"
            );
        }
        for action in ["delete", "expire", "compareAndDelete"] {
            assert_eq!(
                r.change(all, event(action, "/n/subnets/10.1.2.0-24", None)),
                Change::Event(LeaseEvent::Removed(key)),
                "{action}"
            );
        }
        assert_eq!(
            r.change(
                all,
                event("set", "/n/subnets/10.1.2.0-24", Some("not json"))
            ),
            Change::Ignore
        );
        assert_eq!(
            r.change(all, event("set", "/n/subnets/bogus", Some(value))),
            Change::Ignore
        );
        assert_eq!(r.change(all, event("delete", "/n", None)), Change::Relist);
        let subnets_dir: Answer = serde_json::from_str(
            r#"{"action":"delete","node":{"key":"/n/subnets","dir":true,"modifiedIndex":12}}"#,
        )
        .unwrap();
        assert_eq!(r.change(all, subnets_dir), Change::Relist);
        assert_eq!(
            r.change(
                WatchScope::OneLease(key),
                event("delete", "/n/subnets", None)
            ),
            Change::Relist
        );
    }
}
