//! Notices when the network config in etcd no longer matches the one the agent runs on (read when
//! its watch says it may have changed, [`Registry::watch_config`]). A change
//! of the `Backend` section alone (host-gw ⇄ vxlan, DirectRouting, VNI, ...) is handed to the
//! control loop, which applies it in place ([`crate::control::Agent::switch_backend`]). Anything
//! else (the Network, the subnet sizes and range, IPv6, nftables) needs a new lease or new
//! rules under every pod: the agent keeps running on the config it started with, says so once
//! per distinct finding, and shows it in the `/readyz` body. A restart applies such a config.

use subnet::{ConfigWatch, Ipv4Range, NetworkConfig, Registry, RegistryError};
use tokio::sync::watch;

/// What the agent learns about the config in etcd, and how it says what it runs on.
pub(crate) struct ConfigUpdates {
    /// A note for `/readyz` while etcd's config differs in a way only a restart applies (or is
    /// unusable); `None` otherwise.
    pub(crate) note: watch::Receiver<Option<String>>,
    /// A config that differs from the running one only in its `Backend`: to be applied live.
    pub(crate) backend: watch::Receiver<Option<NetworkConfig>>,
    /// The config the agent runs on; the control loop sends the new one after a live switch.
    pub(crate) running: watch::Sender<NetworkConfig>,
}

/// The state of live switches ([`crate::control::backend_switch`]): the configs handed over by the config
/// watch, the one the agent runs on, and what the last switch left to say.
pub(crate) struct LiveBackend {
    /// New configs differing only in `Backend`, until the control loop takes the receiver.
    updates: Option<watch::Receiver<Option<NetworkConfig>>>,
    /// The config the agent runs on, for the config watch to compare against.
    running: watch::Sender<NetworkConfig>,
    /// A config taken from `updates`, to apply this turn.
    pending: Option<NetworkConfig>,
    /// The MTU note of the last switch (pods created before keep a larger MTU).
    mtu_note: Option<String>,
}

impl LiveBackend {
    /// From the config watch's channels.
    pub(crate) fn new(
        updates: watch::Receiver<Option<NetworkConfig>>,
        running: watch::Sender<NetworkConfig>,
    ) -> LiveBackend {
        LiveBackend {
            updates: Some(updates),
            running,
            pending: None,
            mtu_note: None,
        }
    }

    /// The receiver of new configs, for the control loop to wait on (once).
    pub(crate) fn take_updates(&mut self) -> Option<watch::Receiver<Option<NetworkConfig>>> {
        self.updates.take()
    }

    /// Notes a config to apply on this turn.
    pub(crate) fn set_pending(&mut self, config: NetworkConfig) {
        self.pending = Some(config);
    }

    /// The config to apply this turn, if one was noted.
    pub(crate) fn take_pending(&mut self) -> Option<NetworkConfig> {
        self.pending.take()
    }

    /// Records a switch to `config` done: the config watch compares against it from now on,
    /// and `note` is what `/readyz` says about it.
    pub(crate) fn switched(&mut self, config: NetworkConfig, note: Option<String>) {
        self.running.send_replace(config);
        self.mtu_note = note;
    }

    /// What `/readyz` should say about the last switch, if anything.
    pub(crate) fn note(&self) -> Option<&str> {
        self.mtu_note.as_deref()
    }
}

/// What one read of the config says, compared with the running one.
#[derive(Clone, Debug, PartialEq)]
enum Finding {
    /// etcd holds the running config.
    Same,
    /// Only the `Backend` section changed: applied live.
    Backend(NetworkConfig),
    /// A change only a restart applies, or an unusable config: the note.
    Restart(String),
}

/// Starts the check. The task ends when the receivers are dropped.
pub(crate) fn spawn<R: Registry>(registry: R, running: NetworkConfig) -> ConfigUpdates {
    let (note_tx, note) = watch::channel(None);
    let (backend_tx, backend) = watch::channel(None);
    let (running_tx, running_rx) = watch::channel(running);
    tokio::spawn(async move {
        // etcd v3: a watch of the key (a read when it opens and on each change, nothing at
        // idle); the v2 keyspace: a read every 10 s.
        let mut changes = registry.watch_config();
        loop {
            tokio::select! {
                _ = note_tx.closed() => return,
                change = changes.recv() => match change {
                    None => return,
                    Some(ConfigWatch::Broken(_)) => continue,
                    Some(ConfigWatch::Read | ConfigWatch::Changed) => {}
                },
            }
            let running = running_rx.borrow().clone();
            let Some(finding) = classify(&running, registry.network_config().await) else {
                continue; // etcd unreachable: nothing new is known
            };
            let (text, switch) = match finding {
                Finding::Same => (None, None),
                Finding::Backend(config) => (None, Some(config)),
                Finding::Restart(text) => (Some(text), None),
            };
            publish_note(&note_tx, text);
            backend_tx.send_if_modified(|current| {
                let changed = *current != switch;
                *current = switch;
                changed
            });
        }
    });
    ConfigUpdates {
        note,
        backend,
        running: running_tx,
    }
}

/// Sends `text` as the note when it changed, logging the change once.
fn publish_note(tx: &watch::Sender<Option<String>>, text: Option<String>) {
    tx.send_if_modified(|current| {
        if *current == text {
            return false;
        }
        match &text {
            Some(text) => tracing::warn!("{text}"),
            None => tracing::info!("the network config in etcd is one this agent runs on"),
        }
        *current = text;
        true
    });
}

/// What a read of the config says, compared with the `running` one; `None` when etcd could not
/// be asked.
fn classify(
    running: &NetworkConfig,
    read: Result<NetworkConfig, RegistryError>,
) -> Option<Finding> {
    const KEEP: &str = "this agent keeps running on the config it started with; restart it to \
                        apply a new one";
    match read {
        Ok(config) if config == *running => Some(Finding::Same),
        Ok(config) if backend_only(running, &config) => {
            match backends::check_config(&config.backend) {
                Ok(()) => Some(Finding::Backend(config)),
                Err(e) => Some(Finding::Restart(format!(
                    "the network config in etcd has an unusable Backend now: {e}; {KEEP}"
                ))),
            }
        }
        Ok(config) => Some(Finding::Restart(format!(
            "the network config in etcd changed ({}); only the Backend section can change under \
             a running agent, and {KEEP}",
            differences(running, &config)
        ))),
        Err(e @ (RegistryError::InvalidConfig { .. } | RegistryError::ConfigNotFound { .. })) => {
            Some(Finding::Restart(format!(
                "the network config in etcd is unusable now: {e}; {KEEP}"
            )))
        }
        Err(_) => None,
    }
}

/// Whether `new` differs from `running` in its `Backend` section only.
fn backend_only(running: &NetworkConfig, new: &NetworkConfig) -> bool {
    running.ipv4 == new.ipv4
        && running.ipv6 == new.ipv6
        && running.enable_nftables == new.enable_nftables
        && running.backend != new.backend
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
    use std::time::Duration;

    use super::*;

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_backend_change_alone_is_applied_live_anything_else_needs_a_restart() {
        let running = config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#);
        assert_eq!(classify(&running, Ok(running.clone())), Some(Finding::Same));
        let vxlan =
            config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#);
        assert_eq!(
            classify(&running, Ok(vxlan.clone())),
            Some(Finding::Backend(vxlan))
        );
        let moved = config(r#"{"Network":"10.2.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let Some(Finding::Restart(text)) = classify(&running, Ok(moved)) else {
            panic!("a new Network needs a restart");
        };
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
        let unknown = config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#);
        let Some(Finding::Restart(text)) = classify(&running, Ok(unknown)) else {
            panic!("an unusable Backend is a note");
        };
        assert!(
            text.contains("unusable Backend") && text.contains("udp"),
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
        let Some(Finding::Restart(text)) = classify(&running, Err(invalid)) else {
            panic!("an invalid config is a note");
        };
        assert!(
            text.contains("unusable now") && text.contains("/n/config"),
            "{text}"
        );
        let down = RegistryError::Timeout {
            endpoints: "https://10.0.0.1:2379".into(),
            operation: "read config",
            timeout: Duration::from_secs(10),
        };
        assert_eq!(classify(&running, Err(down)), None);
    }
}
