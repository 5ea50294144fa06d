//! Notices when the network config in etcd no longer matches the one the agent runs on. The agent
//! never re-plans its data plane from a config changed under it (a new Network or backend needs a
//! new lease and new devices): it keeps running on the config it started with, says so once per
//! distinct finding, and shows it in the `/readyz` body. A restart applies the new config.

use std::time::Duration;

use subnet::{Ipv4Range, NetworkConfig, Registry, RegistryError};
use tokio::sync::watch;

/// How often the config is read again.
pub(crate) const CONFIG_CHECK_PERIOD: Duration = Duration::from_secs(10);

/// Starts the check; the receiver holds the current finding (`None` while etcd's config is the
/// one the agent runs on). The task ends when the receiver is dropped.
pub(crate) fn spawn<R: Registry>(
    registry: R,
    running: NetworkConfig,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CONFIG_CHECK_PERIOD);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick() => {}
            }
            let Some(finding) = finding(&running, registry.network_config().await) else {
                continue; // etcd unreachable: nothing new is known
            };
            tx.send_if_modified(|current| {
                if *current == finding {
                    return false;
                }
                match &finding {
                    Some(text) => tracing::warn!("{text}"),
                    None => tracing::info!(
                        "the network config in etcd is again the one this agent runs on"
                    ),
                }
                *current = finding;
                true
            });
        }
    });
    rx
}

/// What a read of the config says, compared with the `running` one: `Some(None)` when they
/// match, `Some(Some(text))` when they differ or the stored one is invalid or missing, `None`
/// when etcd could not be asked.
fn finding(
    running: &NetworkConfig,
    read: Result<NetworkConfig, RegistryError>,
) -> Option<Option<String>> {
    const KEEP: &str = "this agent keeps running on the config it started with; restart it to \
                        apply a new one";
    match read {
        Ok(config) if config == *running => Some(None),
        Ok(config) => Some(Some(format!(
            "the network config in etcd changed ({}); {KEEP}",
            differences(running, &config)
        ))),
        Err(e @ (RegistryError::InvalidConfig { .. } | RegistryError::ConfigNotFound { .. })) => {
            Some(Some(format!(
                "the network config in etcd is unusable now: {e}; {KEEP}"
            )))
        }
        Err(_) => None,
    }
}

/// How to show one key of the IPv4 range.
type Show = fn(&Ipv4Range) -> String;

/// The IPv4 keys compared, each with how to show its value.
const V4_KEYS: [(&str, Show); 4] = [
    ("Network", |r| r.network.to_string()),
    ("SubnetLen", |r| r.subnet_len.to_string()),
    ("SubnetMin", |r| r.subnet_min.to_string()),
    ("SubnetMax", |r| r.subnet_max.to_string()),
];

/// `Network 10.1.0.0/16 -> 10.2.0.0/16, Backend {..} -> {..}`, naming what changed.
fn differences(old: &NetworkConfig, new: &NetworkConfig) -> String {
    let show =
        |config: &NetworkConfig, get: Show| config.v4().map_or_else(|| "none".to_string(), get);
    let mut out: Vec<String> = V4_KEYS
        .iter()
        .map(|(name, get)| (name, show(old, *get), show(new, *get)))
        .chain(std::iter::once((
            &"Backend",
            old.backend.raw.to_string(),
            new.backend.raw.to_string(),
        )))
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("{name} {a} -> {b}"))
        .collect();
    if out.is_empty() {
        out.push("IPv6 or nftables settings".into());
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_changed_config_names_what_changed_and_what_the_agent_does() {
        let running = config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#);
        assert_eq!(finding(&running, Ok(running.clone())), Some(None));
        let moved = config(r#"{"Network":"10.2.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let text = finding(&running, Ok(moved)).flatten().unwrap();
        assert!(
            text.contains("Network 10.1.0.0/16 -> 10.2.0.0/16"),
            "{text}"
        );
        assert!(
            text.contains(r#"Backend {"Type":"host-gw"} -> {"Type":"vxlan"}"#),
            "{text}"
        );
        assert!(
            text.contains("keeps running on the config it started with"),
            "{text}"
        );
    }

    #[test]
    fn an_invalid_config_is_a_finding_and_an_unreachable_etcd_is_none() {
        let running = config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#);
        let invalid = RegistryError::InvalidConfig {
            key: "/n/config".into(),
            source: NetworkConfig::parse(b"{nope").unwrap_err(),
        };
        let text = finding(&running, Err(invalid)).flatten().unwrap();
        assert!(
            text.contains("unusable now") && text.contains("/n/config"),
            "{text}"
        );
        let down = RegistryError::Timeout {
            endpoints: "https://10.0.0.1:2379".into(),
            operation: "read config",
            timeout: Duration::from_secs(10),
        };
        assert_eq!(finding(&running, Err(down)), None);
    }
}
