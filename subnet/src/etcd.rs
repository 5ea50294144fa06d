//! The etcd v3 lease store: connection options mirroring flanneld's `--etcd-*` flags, TLS, and
//! the [`Registry`] operations as etcd requests, each bounded by a timeout.
//!
//! Keys are those of Go flanneld: `<prefix>/config` and `<prefix>/subnets/<A.B.C.D-LEN>`, the
//! prefix joined with path semantics (`/coreos.com/network/` and `/coreos.com/network` are the
//! same). Leases are written with a fresh etcd lease (TTL) by compare-guarded transactions.

mod watch;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::sync::mpsc;

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::{PutGuard, Registry, RegistryError, StoredLease};
use crate::registry::{WatchScope, WatchUpdate};

/// Go flanneld's default `--etcd-endpoints`.
pub const DEFAULT_ENDPOINTS: [&str; 2] = ["http://127.0.0.1:4001", "http://127.0.0.1:2379"];
/// Go flanneld's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// How to reach etcd; one field per `--etcd-*` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `--etcd-endpoints`: URLs with `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// `--etcd-prefix`: where the config and leases live.
    pub prefix: String,
    /// `--etcd-keyfile`: the client private key (PEM).
    pub keyfile: Option<PathBuf>,
    /// `--etcd-certfile`: the client certificate (PEM).
    pub certfile: Option<PathBuf>,
    /// `--etcd-cafile`: the CA that signed the server certificate (PEM).
    pub cafile: Option<PathBuf>,
    /// `--etcd-username`.
    pub username: Option<String>,
    /// `--etcd-password`.
    pub password: Option<String>,
    /// Upper bound for each request (not for watches, which stay open).
    pub request_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: DEFAULT_ENDPOINTS.iter().map(|e| e.to_string()).collect(),
            prefix: DEFAULT_PREFIX.to_string(),
            keyfile: None,
            certfile: None,
            cafile: None,
            username: None,
            password: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The etcd keys of one flannel network (the same in the v3 and the v2 keyspace).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `<prefix>/config`.
    pub(crate) config: String,
    /// `<prefix>/subnets/`, with the trailing slash, so `subnets2/...` is not listed.
    pub(crate) subnets: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            config: path_join(prefix, "config"),
            subnets: format!("{}/", path_join(prefix, "subnets")),
        }
    }

    /// `<prefix>/subnets/<key>`.
    pub(crate) fn lease(&self, key: SubnetKey) -> String {
        format!("{}{key}", self.subnets)
    }

    /// The subnet key of an etcd key under `<prefix>/subnets/`.
    pub(crate) fn decode_key(&self, raw: &[u8]) -> Result<SubnetKey, RegistryError> {
        let name = std::str::from_utf8(raw)
            .ok()
            .and_then(|k| k.strip_prefix(self.subnets.as_str()));
        let bad = |problem: String| RegistryError::InvalidLease {
            key: String::from_utf8_lossy(raw).into_owned(),
            problem,
        };
        let name = name.ok_or_else(|| bad(format!("not under {}", self.subnets)))?;
        name.parse().map_err(|e| bad(format!("{e}")))
    }

    /// Decodes a stored lease: its etcd key, JSON value and the revision (v2: modified index)
    /// of its last write.
    pub(crate) fn decode(
        &self,
        raw_key: &[u8],
        value: &[u8],
        mod_revision: i64,
    ) -> Result<StoredLease, RegistryError> {
        let key = self.decode_key(raw_key)?;
        let attrs = LeaseAttrs::from_json(value).map_err(|e| RegistryError::InvalidLease {
            key: String::from_utf8_lossy(raw_key).into_owned(),
            problem: e.to_string(),
        })?;
        Ok(StoredLease {
            lease: Lease {
                key,
                attrs,
                expiration: None,
            },
            mod_revision,
            reservation: false,
        })
    }
}

/// How to create the config in the v3 keyspace, for [`RegistryError::ConfigNotFound`].
pub(crate) fn v3_config_hint(key: &str) -> String {
    format!(
        "Did you create your config using etcdv3 API? e.g. etcdctl put {key} '{EXAMPLE_CONFIG}'"
    )
}

/// A network config for error hints.
pub(crate) const EXAMPLE_CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// Joins `prefix` and `name` like Go's `path.Join`: empty and `.` segments dropped, `..` pops,
/// a leading `/` kept.
fn path_join(prefix: &str, name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in prefix.split('/').chain(name.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if prefix.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Hint appended to connection errors that look like TLS problems.
const TLS_HINT: &str = "; check --etcd-cafile (the CA that signed the etcd server certificate) \
     and --etcd-certfile/--etcd-keyfile (a client certificate the server trusts)";
/// Hint appended to unclear connection failures when TLS is configured.
const TLS_OR_REACH_HINT: &str = "; is etcd running there? If so, check --etcd-cafile (the CA \
     that signed the etcd server certificate) and --etcd-certfile/--etcd-keyfile (a client \
     certificate the server trusts)";
/// Hint appended to refused connections.
const REACH_HINT: &str = "; is etcd running and are --etcd-endpoints right?";
/// Hint appended to other connection errors without TLS.
const PLAIN_HINT: &str = "; is etcd running and are --etcd-endpoints right? If etcd serves TLS, \
     use https:// endpoints with --etcd-cafile, --etcd-certfile and --etcd-keyfile";

/// The etcd v3 [`Registry`].
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    keys: Keys,
    /// The endpoints, comma separated, for error messages.
    endpoints: String,
    /// Whether TLS files were given (for error hints).
    tls: bool,
    timeout: Duration,
}

impl EtcdRegistry {
    /// Prepares a client for `options`: TLS when TLS files are given (the client certificate and
    /// key together, the CA to verify the server), username/password if given. The connection is
    /// made lazily (except for authentication), so an unreachable etcd is usually reported by the
    /// first request, as [`RegistryError::Unavailable`] or [`RegistryError::Timeout`].
    pub async fn connect(options: &EtcdOptions) -> Result<EtcdRegistry, RegistryError> {
        let tls = tls_options(options)?;
        let uses_tls = tls.is_some();
        let endpoints = check_endpoints(options, uses_tls)?;
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some(tls) = tls {
            connect = connect.with_tls(tls);
        }
        match (&options.username, &options.password) {
            (Some(user), password) if !user.is_empty() => {
                connect = connect.with_user(user, password.clone().unwrap_or_default());
            }
            _ => {}
        }
        let registry_timeout = options.request_timeout;
        let connecting = Client::connect(&options.endpoints, Some(connect));
        let client = match tokio::time::timeout(registry_timeout, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(classify(&endpoints, uses_tls, "connect", e)),
            Err(_) => {
                return Err(RegistryError::Timeout {
                    endpoints,
                    operation: "connect",
                    timeout: registry_timeout,
                })
            }
        };
        Ok(EtcdRegistry {
            client,
            keys: Keys::new(&options.prefix),
            endpoints,
            tls: uses_tls,
            timeout: registry_timeout,
        })
    }

    /// Asks the member(s) for their status: whether etcd answers at all.
    pub async fn status(&self) -> Result<(), RegistryError> {
        self.request("status", self.client.clone().status())
            .await
            .map(|_| ())
    }

    /// The config key, `<prefix>/config`.
    pub fn config_key(&self) -> &str {
        &self.keys.config
    }

    /// The key of a lease, `<prefix>/subnets/<key>`.
    pub fn lease_key(&self, key: SubnetKey) -> String {
        self.keys.lease(key)
    }

    /// The value stored at `key` (any key, e.g. [`EtcdRegistry::config_key`]), if it exists.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let response = self
            .request("read key", self.client.clone().get(key, None))
            .await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Creates `key` with `value` if it does not exist, attached to a fresh etcd lease of `ttl`
    /// (no lease when `None`); returns whether it was created.
    pub async fn create_raw(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, RegistryError> {
        let condition = Compare::create_revision(key, CompareOp::Equal, 0);
        let written = self
            .put_if(key.into(), value.into(), condition, ttl)
            .await?;
        Ok(written.is_some())
    }

    /// Writes `value` at `key` if `condition` holds, with a fresh etcd lease of `ttl` if given.
    /// Returns `None` if the condition failed (the fresh lease is then revoked), else the
    /// expiration (`None` without a lease).
    async fn put_if(
        &self,
        key: String,
        value: String,
        condition: Compare,
        ttl: Option<Duration>,
    ) -> Result<Option<Option<SystemTime>>, RegistryError> {
        let granted_at = SystemTime::now();
        let grant = match ttl {
            Some(ttl) => {
                let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
                let grant = self
                    .request(
                        "grant lease",
                        self.client.clone().lease_grant(ttl_secs, None),
                    )
                    .await?;
                Some(grant)
            }
            None => None,
        };
        let options = grant
            .as_ref()
            .map(|grant| PutOptions::new().with_lease(grant.id()));
        let txn = Txn::new()
            .when([condition])
            .and_then([TxnOp::put(key, value, options)]);
        let written = self
            .request("write lease", self.client.clone().txn(txn))
            .await?
            .succeeded();
        let Some(grant) = grant else {
            return Ok(written.then_some(None));
        };
        if written {
            let lifetime = Duration::from_secs(grant.ttl().max(0).unsigned_abs());
            return Ok(Some(Some(granted_at + lifetime)));
        }
        if let Err(e) = self
            .request(
                "revoke unused lease",
                self.client.clone().lease_revoke(grant.id()),
            )
            .await
        {
            tracing::warn!(
                "could not revoke unused etcd lease {:x} (it expires by itself): {e}",
                grant.id()
            );
        }
        Ok(None)
    }

    /// Runs one request with the timeout, mapping errors.
    async fn request<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.describe(operation, e)),
            Err(_) => Err(RegistryError::Timeout {
                endpoints: self.endpoints.clone(),
                operation,
                timeout: self.timeout,
            }),
        }
    }

    /// Describes a failed etcd call as a [`RegistryError`] naming the endpoints.
    pub(crate) fn describe(
        &self,
        operation: &'static str,
        error: etcd_client::Error,
    ) -> RegistryError {
        classify(&self.endpoints, self.tls, operation, error)
    }

    /// The etcd key and options selecting `scope`.
    fn scope_key(&self, scope: WatchScope) -> (String, bool) {
        match scope {
            WatchScope::AllLeases => (self.keys.subnets.clone(), true),
            WatchScope::OneLease(key) => (self.keys.lease(key), false),
        }
    }

    /// Lists the leases in `scope`, skipping malformed entries with a warning; returns them with
    /// the store revision of the listing.
    pub(crate) async fn list(
        &self,
        scope: WatchScope,
    ) -> Result<(Vec<StoredLease>, i64), RegistryError> {
        let (key, prefix) = self.scope_key(scope);
        let options = prefix.then(|| GetOptions::new().with_prefix());
        let response = self
            .request("list leases", self.client.clone().get(key, options))
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let leases = response
            .kvs()
            .iter()
            .filter_map(|kv| match self.decode(kv) {
                Ok(lease) => Some(lease),
                Err(e) => {
                    tracing::warn!("skipping malformed lease: {e}");
                    None
                }
            })
            .collect();
        Ok((leases, revision))
    }

    /// Opens a watch on `scope` from `start_revision`. Without previous values: nothing uses
    /// them, and etcd reads each one from its backend before it sends the event.
    pub(crate) async fn open_watch(
        &self,
        scope: WatchScope,
        start_revision: i64,
    ) -> Result<WatchStream, RegistryError> {
        let (key, prefix) = self.scope_key(scope);
        let mut options = WatchOptions::new().with_start_revision(start_revision);
        if prefix {
            options = options.with_prefix();
        }
        self.request(
            "watch leases",
            self.client.clone().watch(key, Some(options)),
        )
        .await
    }

    /// The subnet key of an etcd key under `<prefix>/subnets/`.
    pub(crate) fn decode_key(&self, raw: &[u8]) -> Result<SubnetKey, RegistryError> {
        self.keys.decode_key(raw)
    }

    /// Decodes a stored lease (key and JSON value).
    pub(crate) fn decode(&self, kv: &KeyValue) -> Result<StoredLease, RegistryError> {
        let mut stored = self.keys.decode(kv.key(), kv.value(), kv.mod_revision())?;
        stored.reservation = kv.lease() == 0;
        Ok(stored)
    }
}

/// Checks that endpoints are given and, with TLS, that none is plain http; returns them comma
/// separated (for error messages).
pub(crate) fn check_endpoints(options: &EtcdOptions, tls: bool) -> Result<String, RegistryError> {
    if options.endpoints.is_empty() {
        return Err(RegistryError::BadOptions(
            "no etcd endpoints given (--etcd-endpoints)".into(),
        ));
    }
    if let Some(plain) = tls
        .then(|| options.endpoints.iter().find(|e| e.starts_with("http://")))
        .flatten()
    {
        return Err(RegistryError::BadOptions(format!(
            "TLS files are given but endpoint {plain} is plain http; use https:// endpoints"
        )));
    }
    Ok(options.endpoints.join(","))
}

/// The contents of the TLS files given on the command line (PEM).
pub(crate) struct TlsMaterial {
    /// The client certificate and its key (`--etcd-certfile`, `--etcd-keyfile`).
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The CA of the server certificate (`--etcd-cafile`).
    pub(crate) ca: Option<Vec<u8>>,
}

/// Reads the TLS files of `options`, if any: certificate and key must come together; a CA alone
/// is honoured (it secures the server side).
pub(crate) fn tls_material(options: &EtcdOptions) -> Result<Option<TlsMaterial>, RegistryError> {
    let given = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let (cert, key, ca) = (
        given(&options.certfile),
        given(&options.keyfile),
        given(&options.cafile),
    );
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((
            read_pem("--etcd-certfile", &cert)?,
            read_pem("--etcd-keyfile", &key)?,
        )),
        (Some(_), None) => {
            return Err(RegistryError::BadOptions(
                "--etcd-certfile is given without --etcd-keyfile; give both".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(RegistryError::BadOptions(
                "--etcd-keyfile is given without --etcd-certfile; give both".into(),
            ))
        }
        (None, None) => None,
    };
    let ca = ca.map(|ca| read_pem("--etcd-cafile", &ca)).transpose()?;
    if identity.is_none() && ca.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsMaterial { identity, ca }))
}

/// The TLS client configuration for `options`, if TLS files are given.
fn tls_options(options: &EtcdOptions) -> Result<Option<TlsOptions>, RegistryError> {
    Ok(tls_material(options)?.map(|material| {
        let mut tls = TlsOptions::new();
        if let Some((cert, key)) = material.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(ca) = material.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        tls
    }))
}

/// Reads a PEM file, naming the flag and the file in errors.
fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, RegistryError> {
    let bad = |problem: String| RegistryError::TlsFile {
        flag,
        path: path.to_path_buf(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(bad("not a PEM file (no -----BEGIN line)".into()));
    }
    Ok(pem)
}

/// Maps an etcd client error to a [`RegistryError`] naming the endpoints and the likely fix;
/// `tls` says whether TLS files were given.
fn classify(
    endpoints: &str,
    tls: bool,
    operation: &'static str,
    error: etcd_client::Error,
) -> RegistryError {
    use etcd_client::Error as E;
    use tonic::Code;
    let detail = match &error {
        E::GRpcStatus(status) => {
            let mut detail = status.message().to_string();
            if let Some(source) = std::error::Error::source(status) {
                let chain = error_chain(source);
                if !detail.contains(&chain) {
                    detail = format!("{detail} ({chain})");
                }
            }
            detail
        }
        other => error_chain(other),
    };
    let unavailable = || unavailable(endpoints, tls, detail.clone());
    match &error {
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => {
            RegistryError::BadOptions(format!("--etcd-endpoints {endpoints}: {detail}"))
        }
        E::GRpcStatus(status) => match status.code() {
            Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
            | Code::DeadlineExceeded => unavailable(),
            _ => RegistryError::Refused {
                endpoints: endpoints.to_string(),
                operation,
                detail,
            },
        },
        _ => unavailable(),
    }
}

/// A connection failure as [`RegistryError::Unavailable`], with the hint that fits `detail` (an
/// error chain); `tls` says whether TLS files were given.
pub(crate) fn unavailable(endpoints: &str, tls: bool, detail: String) -> RegistryError {
    let lower = detail.to_ascii_lowercase();
    let tls_problem = ["certificate", "tls", "handshake", "issuer", "alert"]
        .iter()
        .any(|w| lower.contains(w));
    let refused = lower.contains("connection refused") || lower.contains("dns error");
    let hint = match (tls_problem, refused, tls) {
        (true, _, _) => TLS_HINT,
        (false, false, true) => TLS_OR_REACH_HINT,
        (false, true, _) => REACH_HINT,
        (false, false, false) => PLAIN_HINT,
    };
    RegistryError::Unavailable {
        endpoints: endpoints.to_string(),
        detail,
        hint,
    }
}

/// An error and all its sources, joined with `: `, without repeating a message its cause already
/// contains.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let message = e.to_string();
        if !messages.iter().any(|m| m.contains(&message)) {
            messages.push(message);
        }
        current = e.source();
    }
    messages.join(": ")
}

impl Registry for EtcdRegistry {
    async fn network_config(&self) -> Result<NetworkConfig, RegistryError> {
        let key = self.keys.config.clone();
        let response = self
            .request("read config", self.client.clone().get(key.clone(), None))
            .await?;
        let kv = response
            .kvs()
            .first()
            .ok_or_else(|| RegistryError::ConfigNotFound {
                hint: v3_config_hint(&key),
                key: key.clone(),
            })?;
        NetworkConfig::parse(kv.value())
            .map_err(|source| RegistryError::InvalidConfig { key, source })
    }

    async fn list_leases(&self) -> Result<Vec<StoredLease>, RegistryError> {
        Ok(self.list(WatchScope::AllLeases).await?.0)
    }

    async fn get_lease(&self, key: SubnetKey) -> Result<Option<StoredLease>, RegistryError> {
        let response = self
            .request(
                "read lease",
                self.client.clone().get(self.keys.lease(key), None),
            )
            .await?;
        response.kvs().first().map(|kv| self.decode(kv)).transpose()
    }

    async fn put_lease(
        &self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        guard: PutGuard,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>, RegistryError> {
        let etcd_key = self.keys.lease(key);
        let condition = match guard {
            PutGuard::Absent => Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0),
            PutGuard::Unchanged { mod_revision } => {
                Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, mod_revision)
            }
        };
        let written = self
            .put_if(etcd_key, attrs.to_json(), condition, ttl)
            .await?;
        Ok(written.map(|expiration| expiration.unwrap_or_else(crate::lease::never)))
    }

    async fn delete_lease(&self, key: SubnetKey, mod_revision: i64) -> Result<bool, RegistryError> {
        let etcd_key = self.keys.lease(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::delete(etcd_key, None)]);
        Ok(self
            .request("delete lease", self.client.clone().txn(txn))
            .await?
            .succeeded())
    }

    fn watch_leases(&self, scope: WatchScope) -> mpsc::Receiver<WatchUpdate> {
        crate::watch::spawn(self.clone(), scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_joined_like_go_path_join() {
        let keys = Keys::new("/coreos.com/network/");
        assert_eq!(keys.config, "/coreos.com/network/config");
        assert_eq!(keys.subnets, "/coreos.com/network/subnets/");
        assert_eq!(
            Keys::new("/coreos.com/network").config,
            "/coreos.com/network/config"
        );
        assert_eq!(path_join("//a/./b/../c", "config"), "/a/c/config");
        assert_eq!(path_join("a", "config"), "a/config");
        assert_eq!(
            keys.lease("10.5.34.0-24".parse().unwrap()),
            "/coreos.com/network/subnets/10.5.34.0-24"
        );
    }

    #[test]
    fn tls_file_errors_name_the_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let options = EtcdOptions {
            cafile: Some(missing.clone()),
            ..EtcdOptions::default()
        };
        let err = tls_options(&options).unwrap_err().to_string();
        assert!(err.contains("--etcd-cafile"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");

        let not_pem = dir.path().join("cert.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let options = EtcdOptions {
            certfile: Some(not_pem.clone()),
            keyfile: Some(not_pem.clone()),
            ..EtcdOptions::default()
        };
        let err = tls_options(&options).unwrap_err().to_string();
        assert!(
            err.contains("--etcd-certfile") && err.contains("not a PEM file"),
            "{err}"
        );

        let options = EtcdOptions {
            certfile: Some(not_pem),
            ..EtcdOptions::default()
        };
        let err = tls_options(&options).unwrap_err().to_string();
        assert!(err.contains("without --etcd-keyfile"), "{err}");
    }

    #[test]
    fn no_tls_files_means_plain_http() {
        assert!(tls_options(&EtcdOptions::default()).unwrap().is_none());
    }
}
