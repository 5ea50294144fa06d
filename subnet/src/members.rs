//! Which etcd members answer. With several `--etcd-endpoints` the v3 client balances over the live
//! members without a word, so an operator would not learn that one is gone. Each member gets a
//! client of its own with a watch of the network config key open on it: the client's keepalive
//! pings that connection, so a member that stops answering (down, cut off, frozen) breaks the
//! watch within seconds, and a member that answers again lets it open. Each change is logged
//! once. Nothing is asked of the members while they answer: no status call per member and
//! period, which at thousands of hosts would be thousands of requests a second.

use std::time::Duration;

use crate::etcd::{EtcdOptions, EtcdRegistry};
use crate::registry::{ConfigWatch, Registry};

/// How long connecting to one member may take.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts the watch of each member when `options` names more than one endpoint; it runs until
/// the runtime stops.
pub fn spawn_member_check(options: &EtcdOptions) {
    if options.endpoints.len() < 2 {
        return;
    }
    for endpoint in &options.endpoints {
        let single = EtcdOptions {
            endpoints: vec![endpoint.clone()],
            request_timeout: MEMBER_TIMEOUT,
            ..options.clone()
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            match EtcdRegistry::connect(&single).await {
                Ok(member) => follow_member(&endpoint, &member).await,
                Err(e) => tracing::warn!("etcd member {endpoint}: cannot check it: {e}"),
            }
        });
    }
}

/// How long a member's watch must stay open again before the member counts as answering: one
/// without a leader opens it and cancels it at once, again and again.
const STEADY: Duration = Duration::from_secs(5);

/// Logs each change of whether `member` answers, as its config watch breaks and stays open
/// again.
async fn follow_member(endpoint: &str, member: &EtcdRegistry) {
    let mut watch = member.watch_config();
    let mut answered = true;
    while let Some(state) = watch.recv().await {
        match (state, answered) {
            (ConfigWatch::Broken(e), true) => {
                tracing::warn!(
                    "etcd member {endpoint} does not answer ({e}); the others are used meanwhile"
                );
                answered = false;
            }
            (ConfigWatch::Read, false) => match tokio::time::timeout(STEADY, watch.recv()).await {
                Ok(None) => return,
                Ok(Some(ConfigWatch::Broken(_))) => {}
                Err(_) | Ok(Some(_)) => {
                    tracing::info!("etcd member {endpoint} answers again");
                    answered = true;
                }
            },
            _ => {}
        }
    }
}
