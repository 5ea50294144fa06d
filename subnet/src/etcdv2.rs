//! The etcd v2 keyspace, where flanneld v0.11 keeps its network (etcd 3.x serves it with
//! `--enable-v2`): the [`Registry`] operations over the v2 HTTP keys API, so this agent can run
//! beside unmodified v0.11 agents.
//!
//! Same keys as v3 (`<prefix>/config`, `<prefix>/subnets/<A.B.C.D-LEN>`), values as v0.11 writes
//! them ([`LeaseAttrs::to_json_v011`]), lifetimes as v2 node TTLs. Reads are quorum reads; a
//! lease is created with `prevExist=false` and renewed or reused with `prevIndex` (v0.11 renews
//! unguarded); the store position is the v2 index (`modifiedIndex`, `X-Etcd-Index`). Watches are
//! long polls with `waitIndex` (see [`watch`]).

mod http;
mod watch;

use std::time::{Duration, SystemTime};

use hyper::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::NetworkConfig;
use crate::etcd::{EtcdOptions, Keys, EXAMPLE_CONFIG};
use crate::lease::{LeaseAttrs, SubnetKey};
use crate::registry::{PutGuard, Registry, RegistryError, StoredLease};
use crate::registry::{WatchScope, WatchUpdate};

/// v2 error: the key does not exist.
const KEY_NOT_FOUND: u32 = 100;
/// v2 error: a `prevIndex`/`prevValue` condition failed.
const TEST_FAILED: u32 = 101;
/// v2 error: `prevExist=false` but the key exists.
const NODE_EXIST: u32 = 105;
/// v2 error: the `waitIndex` is older than the 1000 events the server keeps.
const EVENT_INDEX_CLEARED: u32 = 401;

/// Characters escaped in key paths: everything but unreserved characters and `/`.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// Characters escaped in form and query values: everything but unreserved characters.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A v2 API answer with a node (`{"action":...,"node":{...}}`).
#[derive(Debug, Deserialize)]
struct Answer {
    action: String,
    node: Node,
}

/// A v2 node: a key with a value, or a directory.
#[derive(Debug, Deserialize)]
struct Node {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    dir: bool,
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(rename = "modifiedIndex", default)]
    modified_index: u64,
    /// Remaining lifetime in seconds; absent for keys without a TTL.
    #[serde(default)]
    ttl: Option<i64>,
}

impl Node {
    /// The leaves (non-directory nodes) of this node, depth first.
    fn leaves(self) -> Vec<Node> {
        if !self.dir {
            return vec![self];
        }
        self.nodes.into_iter().flat_map(Node::leaves).collect()
    }
}

/// A v2 API error (`{"errorCode":100,"message":"Key not found","cause":...,"index":7}`).
#[derive(Debug, Deserialize)]
struct V2Error {
    #[serde(rename = "errorCode")]
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    cause: Option<String>,
    /// The store index when the error happened.
    #[serde(default)]
    index: u64,
}

impl std::fmt::Display for V2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (etcd v2 error {}", self.message, self.code)?;
        if let Some(cause) = self.cause.as_deref().filter(|c| !c.is_empty()) {
            write!(f, ": {cause}")?;
        }
        write!(f, ")")
    }
}

/// The outcome of a request the server understood.
#[derive(Debug)]
enum Outcome {
    /// Done; the answer and `X-Etcd-Index`.
    Done(Answer, Option<u64>),
    /// The server refused with a v2 error.
    Failed(V2Error),
}

/// One live lease as stored in the v2 keyspace, for copying it elsewhere.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedLease {
    /// The subnet.
    pub key: SubnetKey,
    /// The value exactly as stored (valid lease JSON).
    pub value: String,
    /// The remaining lifetime; `None` for a key without TTL (a reservation).
    pub ttl: Option<Duration>,
}

/// The network as stored in the v2 keyspace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Export {
    /// The config value, if the key exists (not validated).
    pub config: Option<String>,
    /// The live leases with valid keys and values.
    pub leases: Vec<ExportedLease>,
    /// Entries under `subnets/` that were skipped, and why.
    pub skipped: Vec<String>,
}

/// The etcd v2 [`Registry`].
#[derive(Clone)]
pub struct EtcdV2Registry {
    client: http::Client,
    keys: Keys,
}

impl EtcdV2Registry {
    /// Prepares a client for `options` (same flags as v3: mutual TLS needs the CA too; basic auth
    /// with username/password). No connection is made: an unreachable etcd is reported by the
    /// first request.
    pub fn connect(options: &EtcdOptions) -> Result<EtcdV2Registry, RegistryError> {
        // v2 keys are absolute: `coreos.com/network` is `/coreos.com/network`.
        let prefix = format!("/{}", options.prefix.trim_start_matches('/'));
        Ok(EtcdV2Registry {
            client: http::Client::new(options)?,
            keys: Keys::new(&prefix),
        })
    }

    /// The request path of `key` with a query.
    fn path(key: &str, query: &str) -> String {
        format!("/v2/keys{}?{query}", utf8_percent_encode(key, PATH))
    }

    /// etcd's clock, from the `Date` header of its answer to `GET /version` (served whichever
    /// keyspace is used); `None` when it sent none.
    pub async fn server_time(&self) -> Result<Option<SystemTime>, RegistryError> {
        let reply = self
            .client
            .call("version", Method::GET, "/version", None)
            .await?;
        Ok(reply.date)
    }

    /// Sends a request about `key` and decodes the answer or the v2 error.
    async fn request(
        &self,
        operation: &'static str,
        method: Method,
        key: &str,
        query: &str,
        form: Option<String>,
    ) -> Result<Outcome, RegistryError> {
        let reply = self
            .client
            .call(operation, method, &Self::path(key, query), form)
            .await?;
        self.decode_reply(operation, reply.status, reply.index, &reply.body)
    }

    /// Decodes an answer body: a node on success, a v2 error, or an HTTP-level refusal.
    fn decode_reply(
        &self,
        operation: &'static str,
        status: StatusCode,
        index: Option<u64>,
        body: &[u8],
    ) -> Result<Outcome, RegistryError> {
        let text = || String::from_utf8_lossy(body).trim().to_string();
        if status.is_success() {
            return serde_json::from_slice(body)
                .map(|answer| Outcome::Done(answer, index))
                .map_err(|e| {
                    self.refused(operation, format!("unexpected answer ({e}): {}", text()))
                });
        }
        if let Ok(error) = serde_json::from_slice::<V2Error>(body) {
            return Ok(Outcome::Failed(error));
        }
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::V2Disabled {
                endpoints: self.client.endpoints().to_string(),
                detail: format!("/v2/keys answered {status}: {}", text()),
            });
        }
        Err(self.refused(operation, format!("HTTP {status}: {}", text())))
    }

    fn refused(&self, operation: &'static str, detail: String) -> RegistryError {
        RegistryError::Refused {
            endpoints: self.client.endpoints().to_string(),
            operation,
            detail,
        }
    }

    /// The v2 key and whether it is a directory, for `scope`.
    fn scope_key(&self, scope: WatchScope) -> (String, bool) {
        match scope {
            WatchScope::AllLeases => (self.keys.subnets.trim_end_matches('/').to_string(), true),
            WatchScope::OneLease(key) => (self.keys.lease(key), false),
        }
    }

    /// Reads the nodes in `scope` (quorum read); returns the leaves and the store index.
    async fn read_scope(&self, scope: WatchScope) -> Result<(Vec<Node>, u64), RegistryError> {
        let (key, dir) = self.scope_key(scope);
        let query = if dir {
            "recursive=true&quorum=true"
        } else {
            "quorum=true"
        };
        match self
            .request("list leases", Method::GET, &key, query, None)
            .await?
        {
            Outcome::Done(answer, index) => {
                let index = index.unwrap_or(answer.node.modified_index);
                Ok((answer.node.leaves(), index))
            }
            Outcome::Failed(e) if e.code == KEY_NOT_FOUND => Ok((Vec::new(), e.index)),
            Outcome::Failed(e) => Err(self.refused("list leases", e.to_string())),
        }
    }

    /// Decodes a node holding a lease.
    fn decode(&self, node: &Node) -> Result<StoredLease, RegistryError> {
        let revision = i64::try_from(node.modified_index).unwrap_or(i64::MAX);
        let value = node.value.as_deref().unwrap_or_default();
        let mut stored = self
            .keys
            .decode(node.key.as_bytes(), value.as_bytes(), revision)?;
        stored.reservation = node.ttl.is_none();
        Ok(stored)
    }

    /// Lists the leases in `scope`, skipping keys that are not leases (reported at a bounded
    /// rate); returns them with the store index of the listing.
    pub(crate) async fn list(
        &self,
        scope: WatchScope,
    ) -> Result<(Vec<StoredLease>, i64), RegistryError> {
        let (nodes, index) = self.read_scope(scope).await?;
        let leases = nodes
            .iter()
            .filter_map(|node| match self.decode(node) {
                Ok(lease) => Some(lease),
                Err(e) => {
                    e.report_skipped("skipping a key under the subnets prefix");
                    None
                }
            })
            .collect();
        Ok((leases, i64::try_from(index).unwrap_or(i64::MAX)))
    }

    /// Reads the config value and every live lease, as stored, for copying them to another
    /// keyspace (`flanneld migrate-etcd`).
    pub async fn export(&self) -> Result<Export, RegistryError> {
        let config = match self
            .request(
                "read config",
                Method::GET,
                &self.keys.config,
                "quorum=true",
                None,
            )
            .await?
        {
            Outcome::Done(answer, _) => answer.node.value,
            Outcome::Failed(e) if e.code == KEY_NOT_FOUND => None,
            Outcome::Failed(e) => return Err(self.refused("read config", e.to_string())),
        };
        let (nodes, _) = self.read_scope(WatchScope::AllLeases).await?;
        let mut export = Export {
            config,
            ..Export::default()
        };
        for node in nodes {
            match self.decode(&node) {
                Ok(stored) => export.leases.push(ExportedLease {
                    key: stored.lease.key,
                    value: node.value.unwrap_or_default(),
                    ttl: node
                        .ttl
                        .map(|t| Duration::from_secs(t.max(0).unsigned_abs())),
                }),
                Err(e) => export.skipped.push(e.to_string()),
            }
        }
        Ok(export)
    }
}

impl Registry for EtcdV2Registry {
    async fn network_config(&self) -> Result<NetworkConfig, RegistryError> {
        let key = self.keys.config.clone();
        let outcome = self
            .request("read config", Method::GET, &key, "quorum=true", None)
            .await?;
        let value = match outcome {
            Outcome::Done(answer, _) => answer.node.value.unwrap_or_default(),
            Outcome::Failed(e) if e.code == KEY_NOT_FOUND => {
                return Err(RegistryError::ConfigNotFound {
                    hint: format!(
                        "Did you create your config using the etcd v2 API? e.g. \
                         ETCDCTL_API=2 etcdctl set {key} '{EXAMPLE_CONFIG}'"
                    ),
                    key,
                })
            }
            Outcome::Failed(e) => return Err(self.refused("read config", e.to_string())),
        };
        NetworkConfig::parse(value.as_bytes())
            .map_err(|source| RegistryError::InvalidConfig { key, source })
    }

    async fn list_leases(&self) -> Result<Vec<StoredLease>, RegistryError> {
        Ok(self.list(WatchScope::AllLeases).await?.0)
    }

    async fn get_lease(&self, key: SubnetKey) -> Result<Option<StoredLease>, RegistryError> {
        let outcome = self
            .request(
                "read lease",
                Method::GET,
                &self.keys.lease(key),
                "quorum=true",
                None,
            )
            .await?;
        match outcome {
            Outcome::Done(answer, _) => self.decode(&answer.node).map(Some),
            Outcome::Failed(e) if e.code == KEY_NOT_FOUND => Ok(None),
            Outcome::Failed(e) => Err(self.refused("read lease", e.to_string())),
        }
    }

    async fn put_lease(
        &self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        guard: PutGuard,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>, RegistryError> {
        let condition = match guard {
            PutGuard::Absent => "prevExist=false".to_string(),
            PutGuard::Unchanged { mod_revision } => format!("prevIndex={mod_revision}"),
        };
        // Without `ttl` a v2 write makes the key permanent (a reservation stays one).
        let ttl_field = ttl.map_or(String::new(), |t| format!("&ttl={}", t.as_secs()));
        let form = format!(
            "value={}{ttl_field}&{condition}",
            utf8_percent_encode(&attrs.to_json_v011(), VALUE),
        );
        let written_at = SystemTime::now();
        let outcome = self
            .request(
                "write lease",
                Method::PUT,
                &self.keys.lease(key),
                "",
                Some(form),
            )
            .await?;
        match outcome {
            Outcome::Done(answer, _) => {
                let lifetime = match (answer.node.ttl, ttl) {
                    (Some(t), _) => Duration::from_secs(t.max(0).unsigned_abs()),
                    (None, Some(asked)) => asked,
                    (None, None) => return Ok(Some(crate::lease::never())),
                };
                Ok(Some(written_at + lifetime))
            }
            Outcome::Failed(e) if [KEY_NOT_FOUND, TEST_FAILED, NODE_EXIST].contains(&e.code) => {
                Ok(None)
            }
            Outcome::Failed(e) => Err(self.refused("write lease", e.to_string())),
        }
    }

    async fn delete_lease(&self, key: SubnetKey, mod_revision: i64) -> Result<bool, RegistryError> {
        let outcome = self
            .request(
                "delete lease",
                Method::DELETE,
                &self.keys.lease(key),
                &format!("prevIndex={mod_revision}"),
                None,
            )
            .await?;
        match outcome {
            Outcome::Done(..) => Ok(true),
            Outcome::Failed(e) if [KEY_NOT_FOUND, TEST_FAILED].contains(&e.code) => Ok(false),
            Outcome::Failed(e) => Err(self.refused("delete lease", e.to_string())),
        }
    }

    fn stored_attrs(&self, attrs: &LeaseAttrs) -> LeaseAttrs {
        attrs.v011()
    }

    fn watch_leases(&self, scope: WatchScope) -> mpsc::Receiver<WatchUpdate> {
        crate::watch::spawn(self.clone(), scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_escaped() {
        assert_eq!(
            EtcdV2Registry::path(
                "/coreos.com/network/subnets/10.1.2.0-24&fd00::-64",
                "quorum=true"
            ),
            "/v2/keys/coreos.com/network/subnets/10.1.2.0-24%26fd00%3A%3A-64?quorum=true"
        );
        assert_eq!(
            utf8_percent_encode(r#"{"PublicIP":"1.2.3.4"} +&="#, VALUE).to_string(),
            "%7B%22PublicIP%22%3A%221.2.3.4%22%7D%20%2B%26%3D"
        );
    }

    #[test]
    fn a_relative_prefix_is_absolute_in_v2() {
        let options = EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "coreos.com/network".into(),
            ..EtcdOptions::default()
        };
        let registry = EtcdV2Registry::connect(&options).unwrap();
        assert_eq!(registry.keys.config, "/coreos.com/network/config");
    }

    #[test]
    fn listings_flatten_directories_and_errors_decode() {
        let answer: Answer = serde_json::from_str(
            r#"{"action":"get","node":{"key":"/n/subnets","dir":true,"nodes":[
                {"key":"/n/subnets/10.1.2.0-24","value":"{\"PublicIP\":\"10.0.0.1\"}","expiration":"2026-11-22T20:00:00Z","ttl":86399,"modifiedIndex":8,"createdIndex":8},
                {"key":"/n/subnets/x","dir":true,"nodes":[{"key":"/n/subnets/x/y","value":"v","modifiedIndex":9}]}
            ],"modifiedIndex":4}}"#,
        )
        .unwrap();
        let leaves = answer.node.leaves();
        assert_eq!(leaves.len(), 2);
        assert_eq!(leaves[0].ttl, Some(86399));
        assert_eq!(leaves[1].key, "/n/subnets/x/y");
        let error: V2Error = serde_json::from_str(
            r#"{"errorCode":401,"message":"The event in requested index is outdated and cleared","cause":"the requested history has been cleared [1008/7]","index":2007}"#,
        )
        .unwrap();
        assert_eq!((error.code, error.index), (EVENT_INDEX_CLEARED, 2007));
        assert!(error.to_string().contains("[1008/7]"), "{error}");
    }
}
