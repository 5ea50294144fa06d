//! The lease store as the lease protocol sees it: a small trait with one implementation per
//! datastore (etcd v3, see [`crate::etcd`], and the etcd v2 keyspace of flanneld v0.11, see
//! [`crate::etcdv2`]), and the errors every store reports.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::config::{ConfigError, NetworkConfig};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::peers::LeaseEvent;

/// Which leases to watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchScope {
    /// Every lease under `<prefix>/subnets/` (the peers, and our own).
    AllLeases,
    /// One lease key (our own).
    OneLease(SubnetKey),
}

/// What a lease watch delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchUpdate {
    /// The complete current set of leases in the scope; replaces everything known before.
    Snapshot(Vec<Lease>),
    /// Changes since the previous update, in order (one batch per etcd watch response).
    Events(Vec<LeaseEvent>),
}

/// What [`Registry::watch_config`] reports about the network config key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigWatch {
    /// Read the config now: the watch (re)opened, so it may have changed unseen (or, for a
    /// store that cannot watch it, a poll is due).
    Read,
    /// The config key was written or deleted.
    Changed,
    /// The watch broke (the message says why); it opens again by itself.
    Broken(String),
}

/// How often a store that cannot watch its config key has it read ([`Registry::watch_config`]'s
/// default).
pub const CONFIG_POLL_PERIOD: Duration = Duration::from_secs(10);

/// A lease as stored, with the store revision it was last written at (for guarded writes).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredLease {
    /// The lease; `expiration` is `None` (the listing does not look up TTLs).
    pub lease: Lease,
    /// The revision of the last write to the key.
    pub mod_revision: i64,
    /// The key has no TTL: a reservation (flannel's Documentation/reservations.md), which
    /// renewals and reuse keep without one.
    pub reservation: bool,
}

/// The condition under which [`Registry::put_lease`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutGuard {
    /// Only if the key does not exist (creating a lease).
    Absent,
    /// Only if the key was not written since `mod_revision` (renewing or reusing a lease that was
    /// seen holding our PublicIP).
    Unchanged {
        /// The revision the key was seen at.
        mod_revision: i64,
    },
}

/// Operations of the flannel lease protocol on a datastore.
///
/// Implementations must bound every request with a timeout, so an unreachable store surfaces as
/// [`RegistryError::Unavailable`] or [`RegistryError::Timeout`] instead of hanging.
pub trait Registry: Clone + Send + Sync + 'static {
    /// Reads and validates the network config (`<prefix>/config`).
    fn network_config(&self) -> impl Future<Output = Result<NetworkConfig, RegistryError>> + Send;

    /// Lists all leases under `<prefix>/subnets/`; malformed keys and values are skipped with a
    /// warning.
    fn list_leases(&self) -> impl Future<Output = Result<Vec<StoredLease>, RegistryError>> + Send;

    /// Reads one lease; `None` if the key does not exist. A malformed value is an error.
    fn get_lease(
        &self,
        key: SubnetKey,
    ) -> impl Future<Output = Result<Option<StoredLease>, RegistryError>> + Send;

    /// Writes `attrs` at `key` with a fresh store lease of `ttl` (`None`: without a TTL, for a
    /// reservation), if `guard` holds. Returns the new expiration ([`crate::lease::never`] without
    /// a TTL), or `None` when the guard failed (the fresh store lease is then revoked).
    fn put_lease(
        &self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        guard: PutGuard,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Option<SystemTime>, RegistryError>> + Send;

    /// Deletes `key` if it was not written since `mod_revision`; returns whether it was deleted.
    fn delete_lease(
        &self,
        key: SubnetKey,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;

    /// The attributes that reading back a lease written with `attrs` yields: a store may keep
    /// fewer fields (the etcd v2 keyspace keeps what flanneld v0.11 writes, see
    /// [`LeaseAttrs::v011`]). The lease manager recognises its own lease by these.
    fn stored_attrs(&self, attrs: &LeaseAttrs) -> LeaseAttrs {
        attrs.clone()
    }

    /// Starts watching leases in `scope`: first a [`WatchUpdate::Snapshot`], then batches of
    /// events, and a fresh snapshot whenever events may have been missed. The watch runs until
    /// the receiver is dropped; it reconnects by itself.
    fn watch_leases(&self, scope: WatchScope) -> mpsc::Receiver<WatchUpdate>;

    /// Tells when to read the network config again, until the receiver is dropped. The default
    /// polls: [`ConfigWatch::Read`] every [`CONFIG_POLL_PERIOD`]. etcd v3 watches the key
    /// instead, which asks nothing of etcd while the config stays as it is.
    fn watch_config(&self) -> mpsc::Receiver<ConfigWatch> {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CONFIG_POLL_PERIOD);
            loop {
                tick.tick().await;
                if tx.send(ConfigWatch::Read).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Whether a watch stream of this store is open now: etcd answered when it opened, and the
    /// client's keepalive closes a connection whose pings go unanswered, so an open stream is
    /// contact with etcd that costs it no request. False for a store that cannot tell (the v2
    /// keyspace): its users then read to know.
    fn watch_is_open(&self) -> bool {
        false
    }
}

/// What went wrong talking to the lease store.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A TLS file given on the command line cannot be read or is not PEM.
    #[error("cannot use {flag} {path}: {problem}")]
    TlsFile {
        /// The flag that named the file, e.g. `--etcd-cafile`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The command line options cannot work together.
    #[error("invalid etcd options: {0}")]
    BadOptions(String),
    /// The store could not be reached or the connection failed (including TLS handshakes).
    #[error("cannot reach etcd at {endpoints}: {detail}{hint}")]
    Unavailable {
        /// The endpoints tried, comma separated.
        endpoints: String,
        /// The underlying error chain.
        detail: String,
        /// A suggestion how to fix it (may be empty).
        hint: &'static str,
    },
    /// A request got no answer in time.
    #[error("etcd at {endpoints} did not answer within {timeout:?} ({operation})")]
    Timeout {
        /// The endpoints tried, comma separated.
        endpoints: String,
        /// What was asked.
        operation: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// The store answered with an error (permission denied, bad credentials, ...).
    #[error("etcd at {endpoints} refused {operation}: {detail}")]
    Refused {
        /// The endpoints tried, comma separated.
        endpoints: String,
        /// What was asked.
        operation: &'static str,
        /// The status returned.
        detail: String,
    },
    /// There is no network config in the store.
    #[error("flannel config not found in etcd store at {key}. {hint}")]
    ConfigNotFound {
        /// The config key.
        key: String,
        /// How to create it, e.g. `Did you create your config using etcdv3 API? e.g. ...`.
        hint: String,
    },
    /// The server does not serve the etcd v2 API (etcd 3.4/3.5 without `--enable-v2`, or 3.6+).
    #[error("etcd at {endpoints} does not serve the v2 API ({detail}); start etcd with --enable-v2=true, or keep the network in the v3 keyspace (--etcd-api=v3)")]
    V2Disabled {
        /// The endpoints tried, comma separated.
        endpoints: String,
        /// What the server answered.
        detail: String,
    },
    /// The network config in the store is invalid.
    #[error("invalid flannel config at {key}: {source}")]
    InvalidConfig {
        /// The config key.
        key: String,
        /// Why it was rejected.
        #[source]
        source: ConfigError,
    },
    /// A key under the subnets prefix that is not a usable lease.
    #[error("invalid lease at {key}: {problem}")]
    InvalidLease {
        /// The etcd key.
        key: String,
        /// Which kind of problem (for the bounded report and the metric).
        reason: crate::IgnoreReason,
        /// What is wrong with it.
        problem: String,
    },
}

impl RegistryError {
    /// Reports a key skipped for this error through the bounded reporter ([`crate::ignored_keys`])
    /// with `what` it was skipped in (e.g. "ignoring a lease update"); other errors are logged.
    pub(crate) fn report_skipped(&self, what: &str) {
        match self {
            RegistryError::InvalidLease { key, reason, .. } => {
                if crate::ignored_keys().report(*reason, key) == crate::Logged::Named {
                    tracing::warn!("{what}: {self}");
                }
            }
            other => tracing::warn!("{what}: {other}"),
        }
    }

    /// Whether retrying later may succeed without an operator fixing something (the store is
    /// down or slow). Config errors are also worth retrying (an operator may fix the config).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            RegistryError::TlsFile { .. } | RegistryError::BadOptions(_)
        )
    }
}
