//! The etcd v3 lease store: connection options mirroring flanneld's `--etcd-*` flags, TLS, and
//! the [`Registry`] operations as etcd requests, each bounded by a timeout.
//!
//! Keys are those of Go flanneld: `<prefix>/config` and `<prefix>/subnets/<A.B.C.D-LEN>`, the
//! prefix joined with path semantics (`/coreos.com/network/` and `/coreos.com/network` are the
//! same). Leases are written with a fresh etcd lease (TTL) by compare-guarded transactions.

mod watch;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::sync::mpsc;

use crate::config::NetworkConfig;
use crate::ignored::IgnoreReason;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::{ConfigWatch, PutGuard, Registry, RegistryError, StoredLease};
use crate::registry::{WatchScope, WatchUpdate};
use crate::retry::Backoff;

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
        let bad = |problem: String| invalid(raw, IgnoreReason::BadKey, problem);
        let name = name.ok_or_else(|| bad(format!("not under {}", self.subnets)))?;
        name.parse().map_err(|e| bad(format!("{e}")))
    }

    /// Decodes a stored lease: its etcd key, JSON value and the revision (v2: modified index)
    /// of its last write. A value over [`MAX_LEASE_VALUE`] is not parsed.
    pub(crate) fn decode(
        &self,
        raw_key: &[u8],
        value: &[u8],
        mod_revision: i64,
    ) -> Result<StoredLease, RegistryError> {
        let key = self.decode_key(raw_key)?;
        if value.len() > MAX_LEASE_VALUE {
            let problem = format!(
                "its value has {} bytes, a lease a few hundred (at most {MAX_LEASE_VALUE} are \
                 read); delete the key",
                value.len()
            );
            return Err(invalid(raw_key, IgnoreReason::TooLarge, problem));
        }
        let attrs = LeaseAttrs::from_json(value)
            .map_err(|e| invalid(raw_key, IgnoreReason::BadValue, e.to_string()))?;
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

/// The largest value read as a lease: a lease is about 220 bytes, a dual-stack vxlan one under
/// 400; anything far larger was not written by a flannel agent.
pub(crate) const MAX_LEASE_VALUE: usize = 8 * 1024;

fn invalid(raw_key: &[u8], reason: IgnoreReason, problem: String) -> RegistryError {
    RegistryError::InvalidLease {
        key: String::from_utf8_lossy(raw_key).into_owned(),
        reason,
        problem,
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
    /// How many watch streams of this client are open now ([`Registry::watch_is_open`]).
    open_streams: Arc<AtomicUsize>,
}

/// Counts a watch stream as open while it lives.
pub(crate) struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
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
            open_streams: Arc::new(AtomicUsize::new(0)),
        })
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
            Err(_) => Err(self.timeout_error(operation)),
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

    /// Lists the leases in `scope`, skipping keys that are not leases (reported at a bounded
    /// rate, [`crate::ignored_keys`]); returns them with the store revision of the listing.
    /// The subnets prefix is read in pages of at most [`PAGE`] keys at one revision, so no
    /// number or size of keys there exceeds the client's message limit: a page too large for it
    /// is asked for again in halves, down to one key, and a single key too large to receive at
    /// all is skipped by name.
    pub(crate) async fn list(
        &self,
        scope: WatchScope,
    ) -> Result<(Vec<StoredLease>, i64), RegistryError> {
        let (key, prefix) = self.scope_key(scope);
        let end = if prefix {
            prefix_end(key.as_bytes())
        } else {
            Vec::new()
        };
        let mut listing = Listing::new(key.into_bytes(), end);
        while let Some(options) = listing.next_page() {
            let mut client = self.client.clone();
            let call = client.get(listing.from.clone(), Some(options));
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(response)) => listing.take(self, response),
                Ok(Err(e)) if too_large(&e) => {
                    if listing.shrink() {
                        self.skip_oversized(&mut listing).await?;
                    }
                }
                Ok(Err(e)) => return Err(self.describe("list leases", e)),
                Err(_) => return Err(self.timeout_error("list leases")),
            }
        }
        Ok((listing.leases, listing.revision))
    }

    /// Steps over the key at the start of `listing`, whose value alone is too large to be
    /// received: reads its name (keys only) and reports it.
    async fn skip_oversized(&self, listing: &mut Listing) -> Result<(), RegistryError> {
        let options = listing.page_options().with_keys_only().with_limit(1);
        let response = self
            .request(
                "list leases",
                self.client.clone().get(listing.from.clone(), Some(options)),
            )
            .await?;
        let Some(kv) = response.kvs().first() else {
            listing.done = true;
            return Ok(());
        };
        let problem = "its value is larger than the client accepts (4 MiB); delete the key";
        invalid(kv.key(), IgnoreReason::TooLarge, problem.to_string())
            .report_skipped("skipping a key under the subnets prefix");
        listing.from = after(kv.key());
        Ok(())
    }

    fn timeout_error(&self, operation: &'static str) -> RegistryError {
        RegistryError::Timeout {
            endpoints: self.endpoints.clone(),
            operation,
            timeout: self.timeout,
        }
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

    /// Counts a watch stream as open until the returned guard is dropped.
    pub(crate) fn stream_opened(&self) -> OpenStream {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.open_streams.clone())
    }

    /// Watches `key` for [`Registry::watch_config`]: [`ConfigWatch::Read`] whenever the stream
    /// (re)opens, [`ConfigWatch::Changed`] on each write or delete, [`ConfigWatch::Broken`] when
    /// it breaks (it opens again after a backoff). Nothing is asked of etcd while it stays open.
    fn watch_key(&self, key: String) -> mpsc::Receiver<ConfigWatch> {
        let (tx, rx) = mpsc::channel(4);
        let registry = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                let opened = tokio::time::Instant::now();
                let (error, was_open) = registry.follow_key(&key, &tx).await;
                let Some(error) = error else { return };
                // A stream that lived is followed at once; one canceled as it opened (a member
                // without a leader) is tried again ever more slowly.
                if was_open && opened.elapsed() >= KEY_WATCH_HEALTHY_AFTER {
                    backoff.reset();
                }
                if tx.send(ConfigWatch::Broken(error)).await.is_err() {
                    return;
                }
                backoff.wait().await;
            }
        });
        rx
    }

    /// Follows one watch stream of `key`. Returns why it ended (`None`: the receiver went away)
    /// and whether it had opened.
    async fn follow_key(
        &self,
        key: &str,
        tx: &mpsc::Sender<ConfigWatch>,
    ) -> (Option<String>, bool) {
        let mut client = self.client.clone();
        let mut stream = match self.request("watch config", client.watch(key, None)).await {
            Ok(stream) => stream,
            Err(e) => return (Some(e.to_string()), false),
        };
        let _open = self.stream_opened();
        if tx.send(ConfigWatch::Read).await.is_err() {
            return (None, true);
        }
        loop {
            let ended = match stream.message().await {
                Ok(Some(r)) if r.canceled() => {
                    format!("etcd canceled the watch: {}", r.cancel_reason())
                }
                Ok(Some(r)) if r.events().is_empty() => continue,
                Ok(Some(_)) => match tx.send(ConfigWatch::Changed).await {
                    Ok(()) => continue,
                    Err(_) => return (None, true),
                },
                Ok(None) => "etcd closed the watch stream".to_string(),
                Err(e) => self.describe("watch config", e).to_string(),
            };
            return (Some(ended), true);
        }
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

/// A config key watch that stayed open this long counts as healthy: the next break starts the
/// backoff over.
const KEY_WATCH_HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// How long a connection that carries a stream (the watches) may stay silent before it is
/// pinged. A member cut off the network, or frozen, is noticed at most [`KEEPALIVE_INTERVAL`] +
/// [`KEEPALIVE_TIMEOUT`] (7 s) after its last frame; the connection is closed, and the watches
/// resume from their revision through another member, so a lease written meanwhile reaches the
/// agent within 10 s (docs/reliability.md). Not shorter: etcd's `--grpc-keepalive-min-time`
/// (5 s by default) sends GOAWAY to a client that pings a busy connection more often, and a
/// connection without a stream is not pinged at all (etcd allows that only every 2 hours).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Keys per page of a lease listing: a page of leases is about 220 kB, far below the client's
/// 4 MiB message limit, and 20,000 leases take 20 requests.
const PAGE: i64 = 1000;

/// A listing read page by page: where the next page starts, how many keys it asks for, and what
/// was read so far.
struct Listing {
    /// The first key of the next page.
    from: Vec<u8>,
    /// The end of the range (exclusive); empty for a single key.
    end: Vec<u8>,
    /// Keys asked for per page: [`PAGE`], halved while pages are too large to receive, doubled
    /// back after each page that arrived.
    page: i64,
    /// The store revision every page is read at (that of the first page).
    revision: i64,
    leases: Vec<StoredLease>,
    done: bool,
}

impl Listing {
    fn new(from: Vec<u8>, end: Vec<u8>) -> Listing {
        Listing {
            from,
            end,
            page: PAGE,
            revision: 0,
            leases: Vec::new(),
            done: false,
        }
    }

    /// The range, at the listing's revision once known.
    fn page_options(&self) -> GetOptions {
        let mut options = GetOptions::new();
        if !self.end.is_empty() {
            options = options.with_range(self.end.clone());
        }
        if self.revision > 0 {
            options = options.with_revision(self.revision);
        }
        options
    }

    /// The options of the next page; `None` once everything was read.
    fn next_page(&self) -> Option<GetOptions> {
        (!self.done).then(|| self.page_options().with_limit(self.page))
    }

    /// Takes a page: decodes its leases (skipping, and reporting, the keys that are not) and
    /// moves past its last key.
    fn take(&mut self, registry: &EtcdRegistry, response: etcd_client::GetResponse) {
        if self.revision == 0 {
            self.revision = response.header().map_or(0, |h| h.revision());
        }
        for kv in response.kvs() {
            match registry.decode(kv) {
                Ok(lease) => self.leases.push(lease),
                Err(e) => e.report_skipped("skipping a key under the subnets prefix"),
            }
        }
        match response.kvs().last() {
            Some(last) if response.more() && !self.end.is_empty() => self.from = after(last.key()),
            _ => self.done = true,
        }
        self.page = (self.page * 2).min(PAGE);
    }

    /// Halves the page after one was too large to receive; returns true when it already was a
    /// single key (that key must be stepped over).
    fn shrink(&mut self) -> bool {
        let single = self.page == 1;
        self.page = (self.page / 2).max(1);
        single
    }
}

/// Whether the client refused a response for its size (tonic's decoding limit).
fn too_large(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange
            && status.message().contains("message length too large"))
}

/// The first key after `key` in etcd's byte order.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The end of the range of keys starting with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
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

    fn watch_config(&self) -> mpsc::Receiver<ConfigWatch> {
        self.watch_key(self.keys.config.clone())
    }

    fn watch_is_open(&self) -> bool {
        self.open_streams.load(Ordering::Relaxed) > 0
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
