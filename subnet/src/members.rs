//! Which etcd members answer. With several `--etcd-endpoints` the v3 client balances over the live
//! members without a word, so an operator would not learn that one is gone. This task asks each
//! member for its status through a client of its own every [`MEMBER_CHECK_PERIOD`] and logs each
//! change once: a member that stops answering, and one that answers again.

use std::time::Duration;

use crate::etcd::{EtcdOptions, EtcdRegistry};

/// How often every member is asked.
pub const MEMBER_CHECK_PERIOD: Duration = Duration::from_secs(10);

/// How long one member may take to answer.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts the check when `options` names more than one endpoint; it runs until the runtime stops.
pub fn spawn_member_check(options: &EtcdOptions) {
    if options.endpoints.len() < 2 {
        return;
    }
    let options = options.clone();
    tokio::spawn(async move {
        let mut members = Vec::new();
        for endpoint in &options.endpoints {
            let single = EtcdOptions {
                endpoints: vec![endpoint.clone()],
                request_timeout: MEMBER_TIMEOUT,
                ..options.clone()
            };
            match EtcdRegistry::connect(&single).await {
                Ok(client) => members.push((endpoint.clone(), client, true)),
                Err(e) => tracing::warn!("etcd member {endpoint}: cannot check it: {e}"),
            }
        }
        let mut tick = tokio::time::interval(MEMBER_CHECK_PERIOD);
        loop {
            tick.tick().await;
            for (endpoint, client, answered) in &mut members {
                let now = client.status().await;
                match (&now, *answered) {
                    (Err(e), true) => tracing::warn!(
                        "etcd member {endpoint} does not answer ({e}); the others are used meanwhile"
                    ),
                    (Ok(()), false) => tracing::info!("etcd member {endpoint} answers again"),
                    _ => {}
                }
                *answered = now.is_ok();
            }
        }
    });
}
