//! A real etcd server for tests (Debian's `/usr/bin/etcd`, v3.4), optionally with mutual TLS, and
//! a TCP proxy that can cut the connection to it.
//!
//! [`EtcdServer`] runs etcd on free ports with its data in a temporary directory; dropping the
//! guard kills the process and removes the directory, also when the test panics (and the kernel
//! kills etcd if the test thread dies first). The helpers use `etcdctl` (API v3; the `v2_*` ones
//! `ETCDCTL_API=2 etcdctl` and curl for the v2 keyspace of flanneld v0.11), so they work from sync
//! and async tests alike.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::sync::watch;

use crate::netns::unique_id;

/// PEM files for mutual TLS, written into the server's temporary directory.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The server certificate (for 127.0.0.1, localhost and the listen address).
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// A client certificate the server accepts.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// An unrelated CA (for "wrong CA" tests).
    pub other_ca: PathBuf,
    /// A client certificate signed by the unrelated CA, which the server rejects.
    pub other_client_cert: PathBuf,
    /// Its key.
    pub other_client_key: PathBuf,
}

/// How to run etcd.
#[derive(Clone, Debug)]
pub struct EtcdSpec {
    /// Serve clients over TLS and require client certificates.
    pub tls: bool,
    /// The address to listen on for clients and peers.
    pub ip: Ipv4Addr,
    /// Run etcd (and the `etcdctl` helpers) inside this network namespace; etcd then uses the
    /// standard ports 2379/2380, which are free in a namespace of its own.
    pub netns: Option<String>,
    /// Serve the v2 API too (`--enable-v2=true`), as clusters of flanneld v0.11 need.
    pub enable_v2: bool,
    /// Membership in a multi-member cluster; `None`: a cluster of its own.
    pub membership: Option<Membership>,
    /// Certificates shared with other members; `None`: made for this server (with `tls`).
    pub tls_files: Option<TlsFiles>,
}

/// A member's place in a multi-member cluster (see [`EtcdServer::start_members`]).
#[derive(Clone, Debug)]
pub struct Membership {
    /// The member's name.
    pub name: String,
    /// `--initial-cluster`: `name=peer-url,...` of every member.
    pub initial_cluster: String,
    /// `--initial-cluster-token`.
    pub token: String,
    /// `new`, or `existing` when joining a running cluster.
    pub state: &'static str,
}

impl Default for EtcdSpec {
    fn default() -> Self {
        EtcdSpec {
            tls: false,
            ip: Ipv4Addr::LOCALHOST,
            netns: None,
            enable_v2: false,
            membership: None,
            tls_files: None,
        }
    }
}

/// A running etcd; killed and its data removed on drop.
///
/// The kernel also kills etcd when the thread that started it exits, so start it from the test's
/// own thread (not from a short-lived helper thread such as `spawn_blocking`).
pub struct EtcdServer {
    child: Child,
    netns: Option<String>,
    endpoint: String,
    tls: Option<TlsFiles>,
    dir: TempDir,
    spec: EtcdSpec,
    peer_port: u16,
}

/// How long etcd may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a start is retried when a picked port was taken meanwhile.
const PORT_RETRIES: usize = 5;

impl EtcdServer {
    /// Starts a plain-http etcd on loopback.
    pub fn start() -> EtcdServer {
        EtcdServer::start_with(EtcdSpec::default())
    }

    /// Starts etcd on loopback with TLS and client-certificate authentication.
    pub fn start_tls() -> EtcdServer {
        EtcdServer::start_with(EtcdSpec {
            tls: true,
            ..EtcdSpec::default()
        })
    }

    /// Starts etcd as `spec` says and waits until it is healthy; panics with etcd's log if it
    /// cannot start.
    pub fn start_with(spec: EtcdSpec) -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("flanneld-etcd-")
            .tempdir()
            .expect("cannot create a temporary directory for etcd");
        let tls = (spec.tls_files.clone())
            .or_else(|| spec.tls.then(|| write_certificates(dir.path(), &[spec.ip])));
        let mut dir = dir;
        let mut last_log = String::new();
        for _ in 0..PORT_RETRIES {
            let (client_port, peer_port) = match spec.netns {
                Some(_) => (2379, 2380),
                None => (free_port(spec.ip), free_port(spec.ip)),
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = format!("{scheme}://{}:{client_port}", spec.ip);
            let child = spawn_etcd(dir.path(), &spec, &endpoint, peer_port, tls.as_ref());
            let mut server = EtcdServer {
                child,
                netns: spec.netns.clone(),
                endpoint,
                tls: tls.clone(),
                dir,
                spec: spec.clone(),
                peer_port,
            };
            match server.wait_healthy() {
                Ok(()) => return server,
                Err(log) if log.contains("address already in use") => {
                    last_log = log;
                    server.stop();
                    dir = server.take_dir();
                }
                Err(log) => panic!("etcd did not start:\n{log}"),
            }
        }
        panic!("etcd did not start after {PORT_RETRIES} port picks:\n{last_log}");
    }

    /// Starts a cluster of one member per `(address, namespace)` (TLS, shared certificates, ports
    /// 2379/2380 in each namespace) and waits until every member is healthy. The members start
    /// together: a member of a new cluster waits for a quorum.
    pub fn start_members(members: &[(Ipv4Addr, String)], enable_v2: bool) -> Vec<EtcdServer> {
        let token = unique_id();
        let names: Vec<String> = (0..members.len()).map(|i| format!("{token}m{i}")).collect();
        let initial_cluster = (names.iter().zip(members))
            .map(|(name, (ip, _))| format!("{name}=http://{ip}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let ips: Vec<Ipv4Addr> = members.iter().map(|(ip, _)| *ip).collect();
        let mut servers: Vec<EtcdServer> = Vec::new();
        let mut tls_files = None;
        for ((ip, netns), name) in members.iter().zip(names) {
            let dir = tempfile::Builder::new()
                .prefix("flanneld-etcd-")
                .tempdir()
                .expect("tempdir");
            let tls = tls_files
                .get_or_insert_with(|| write_certificates(dir.path(), &ips))
                .clone();
            let spec = EtcdSpec {
                tls: true,
                ip: *ip,
                netns: Some(netns.clone()),
                enable_v2,
                membership: Some(Membership {
                    name,
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                    state: "new",
                }),
                tls_files: Some(tls.clone()),
            };
            let endpoint = format!("https://{ip}:2379");
            let child = spawn_etcd(dir.path(), &spec, &endpoint, 2380, Some(&tls));
            let netns = spec.netns.clone();
            servers.push(EtcdServer {
                child,
                netns,
                endpoint,
                tls: Some(tls),
                dir,
                spec,
                peer_port: 2380,
            });
        }
        for server in &mut servers {
            if let Err(log) = server.wait_healthy() {
                panic!("etcd member did not start:\n{log}");
            }
        }
        servers
    }

    /// Runs `etcdctl args` until it succeeds (or fails saying `done`, the sign that an earlier
    /// attempt took effect), for up to 30 s; panics with its last error.
    fn etcdctl_until_ok(&self, args: &[&str], done: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = (self.etcdctl_command("5s").args(args).output())
                .unwrap_or_else(|e| panic!("cannot run etcdctl: {e}"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || done.is_some_and(|sign| stderr.contains(sign)) {
                return;
            }
            if Instant::now() > deadline {
                panic!("etcdctl {args:?}: {stderr}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether this member is the cluster's leader now.
    pub fn is_leader(&self) -> bool {
        let status = self.json(&["endpoint", "status", "--write-out=json"]);
        let status = &status[0]["Status"];
        status["leader"].as_u64().is_some() && status["leader"] == status["header"]["member_id"]
    }

    /// Replaces this member by an empty one of the same name and address, as after a lost disk:
    /// removes it from the cluster through `via` (another member), adds it again, deletes its
    /// data and starts it to join the running cluster; waits until it is healthy.
    pub fn rejoin_empty(&mut self, via: &EtcdServer) {
        let membership = self.spec.membership.clone().expect("a cluster member");
        let members = via.json(&["member", "list", "--write-out=json"]);
        let id = (members["members"].as_array().into_iter().flatten())
            .find(|m| m["name"] == membership.name.as_str())
            .and_then(|m| m["ID"].as_u64())
            .expect("the member is listed");
        self.stop();
        let peer = format!("--peer-urls=http://{}:{}", self.spec.ip, self.peer_port);
        // etcd refuses membership changes while a member is still catching up ("unhealthy
        // cluster"): each is retried for a while.
        // A change that timed out on the client may have been applied: then "member not
        // found" (or "already exists") on the retry means it is done.
        let remove = ["member", "remove", &format!("{id:x}")];
        via.etcdctl_until_ok(&remove, Some("member not found"));
        let add = ["member", "add", &membership.name, &peer];
        via.etcdctl_until_ok(&add, Some("Peer URLs already exists"));
        self.spec.membership = Some(Membership {
            state: "existing",
            ..membership
        });
        self.restart_empty();
    }

    /// Kills etcd (its data is kept): an outage, until [`EtcdServer::start_again`].
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the etcd process: its TCP connections stay open, but
    /// nothing answers on them, as with a member hung on a dead disk.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) of our own child process (`ip netns exec` execs etcd in place).
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "signal etcd: {}", std::io::Error::last_os_error());
    }

    /// Starts etcd again at the same address with the same data and certificates, and waits
    /// until it is healthy.
    pub fn start_again(&mut self) {
        self.child = spawn_etcd(
            self.dir.path(),
            &self.spec,
            &self.endpoint,
            self.peer_port,
            self.tls.as_ref(),
        );
        if let Err(log) = self.wait_healthy() {
            panic!("etcd did not start again:\n{log}");
        }
    }

    /// A disaster: kills etcd, deletes its data directory (a lost disk) and starts an empty etcd
    /// at the same address with the same certificates.
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(self.dir.path().join("data"));
        self.start_again();
    }

    /// The client URL, e.g. `https://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The certificates, when started with TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Options for [`subnet::EtcdRegistry::connect`] reaching this server (with the good client
    /// certificate when TLS is on) under `prefix`.
    pub fn options(&self, prefix: &str) -> subnet::EtcdOptions {
        subnet::EtcdOptions {
            endpoints: vec![self.endpoint.clone()],
            prefix: prefix.to_string(),
            cafile: self.tls.as_ref().map(|t| t.ca.clone()),
            certfile: self.tls.as_ref().map(|t| t.client_cert.clone()),
            keyfile: self.tls.as_ref().map(|t| t.client_key.clone()),
            request_timeout: Duration::from_secs(5),
            ..subnet::EtcdOptions::default()
        }
    }

    /// A unique key prefix for one test, like `/flanneld-test/<id>/network`.
    pub fn unique_prefix() -> String {
        format!("/flanneld-test/{}/network", unique_id())
    }

    /// `etcdctl put key value`.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value]);
    }

    /// `etcdctl put key value`; whether it succeeded (e.g. false while a cluster elects a leader).
    pub fn try_put(&self, key: &str, value: &str) -> bool {
        (self
            .etcdctl_command("5s")
            .args(["put", key, value])
            .output())
        .is_ok_and(|o| o.status.success())
    }

    /// Writes every `(key, value)` (new keys) through the client library, 64 requests in flight:
    /// thousands of keys in seconds, where an `etcdctl` per key would take minutes.
    pub fn put_many(&self, kvs: Vec<(String, String)>) {
        let write = || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the etcd client");
            runtime.block_on(async {
                use futures::StreamExt;
                let registry = subnet::EtcdRegistry::connect(&self.options("/"))
                    .await
                    .expect("connect to etcd");
                let registry = &registry;
                let mut puts = futures::stream::iter(kvs)
                    .map(|(key, value)| async move {
                        registry.create_raw(&key, &value, None).await.map(|_| key)
                    })
                    .buffer_unordered(64);
                while let Some(put) = puts.next().await {
                    put.unwrap_or_else(|e| panic!("bulk put: {e}"));
                }
            });
        };
        match self.netns.as_deref() {
            Some(ns) => crate::netns::enter_named(ns, write),
            None => std::thread::scope(|s| {
                s.spawn(write)
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e))
            }),
        }
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        let value = out.strip_suffix('\n').unwrap_or(&out);
        (!out.is_empty()).then(|| value.to_string())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        self.etcdctl(&["del", key]).trim() == "1"
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        let json = self.json(&["get", "/", "--write-out=json"]);
        json["header"]["revision"]
            .as_i64()
            .expect("etcdctl get without a header revision")
    }

    /// Compacts the history up to `revision`.
    pub fn compact(&self, revision: i64) {
        self.etcdctl(&["compaction", "--physical", &revision.to_string()]);
    }

    /// The remaining and granted TTL in seconds of the etcd lease attached to `key`, and the lease
    /// ID; `None` if the key has no lease or does not exist.
    pub fn lease_ttl(&self, key: &str) -> Option<(i64, i64, i64)> {
        let json = self.json(&["get", key, "--write-out=json"]);
        let id = json["kvs"][0]["lease"].as_i64().filter(|id| *id != 0)?;
        let ttl = self.json(&[
            "lease",
            "timetolive",
            &format!("{id:x}"),
            "--write-out=json",
        ]);
        Some((ttl["ttl"].as_i64()?, ttl["granted-ttl"].as_i64()?, id))
    }

    /// `ETCDCTL_API=2 etcdctl set key value [--ttl N]`, as an operator of a flanneld v0.11
    /// cluster writes the config (or a lease by hand).
    pub fn v2_set(&self, key: &str, value: &str, ttl: Option<u64>) {
        let mut args = vec!["set".to_string(), key.to_string(), value.to_string()];
        if let Some(ttl) = ttl {
            args.push(format!("--ttl={ttl}"));
        }
        let mut cmd = self.etcdctl_v2_command();
        let out = cmd
            .arg("--")
            .args(&args)
            .output()
            .expect("cannot run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl (v2) {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The v2 node at `key` (`{"key":..,"value":..,"ttl":..,"modifiedIndex":..}`), if it exists.
    pub fn v2_get(&self, key: &str) -> Option<serde_json::Value> {
        let answer = self.v2_request("GET", &format!("{key}?quorum=true"), &[]);
        (answer["errorCode"].is_null()).then(|| answer["node"].clone())
    }

    /// Deletes the v2 `key`; returns whether it existed.
    pub fn v2_delete(&self, key: &str) -> bool {
        self.v2_request("DELETE", key, &[])["errorCode"].is_null()
    }

    /// The values of the v2 keys under the directory `dir` (recursively), by key.
    pub fn v2_values(&self, dir: &str) -> std::collections::BTreeMap<String, String> {
        fn collect(node: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
            if let (Some(key), Some(value)) = (node["key"].as_str(), node["value"].as_str()) {
                out.insert(key.to_string(), value.to_string());
            }
            for child in node["nodes"].as_array().into_iter().flatten() {
                collect(child, out);
            }
        }
        let mut out = std::collections::BTreeMap::new();
        let answer = self.v2_request("GET", &format!("{dir}?recursive=true&quorum=true"), &[]);
        collect(&answer["node"], &mut out);
        out
    }

    /// How many unary gRPC requests this member has handled (its `/metrics`,
    /// `grpc_server_handled_total{grpc_type="unary"}`, every method): what clients asked of it,
    /// watch streams apart.
    pub fn unary_requests(&self) -> u64 {
        let mut cmd = in_netns(self.netns.as_deref(), "curl");
        cmd.args(["-sS", "--max-time", "5"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        let out = cmd
            .arg(format!("{}/metrics", self.endpoint))
            .output()
            .expect("cannot run curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.starts_with("grpc_server_handled_total{") && l.contains(r#"grpc_type="unary""#)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .map(|n| n as u64)
            .sum()
    }

    /// Sends `method /v2/keys<path>` with form fields through curl; returns the JSON answer
    /// (an error answer too).
    pub fn v2_request(&self, method: &str, path: &str, form: &[(&str, &str)]) -> serde_json::Value {
        let mut cmd = in_netns(self.netns.as_deref(), "curl");
        cmd.args(["-sS", "--max-time", "5", "-X", method]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        for (name, value) in form {
            cmd.arg("--data-urlencode").arg(format!("{name}={value}"));
        }
        cmd.arg(format!("{}/v2/keys{path}", self.endpoint));
        let out = cmd.output().expect("cannot run curl");
        assert!(
            out.status.success(),
            "curl {method} {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "curl {method} {path}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// An `ETCDCTL_API=2 etcdctl` command for this server.
    fn etcdctl_v2_command(&self) -> Command {
        let mut cmd = in_netns(self.netns.as_deref(), "etcdctl");
        cmd.env("ETCDCTL_API", "2")
            .arg(format!("--endpoints={}", self.endpoint));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--ca-file={}", tls.ca.display()))
                .arg(format!("--cert-file={}", tls.client_cert.display()))
                .arg(format!("--key-file={}", tls.client_key.display()));
        }
        cmd
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.etcdctl(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}: {out}"))
    }

    /// An `etcdctl` command for this server (in its namespace, with the client certificate).
    fn etcdctl_command(&self, timeout: &str) -> Command {
        let mut cmd = in_netns(self.netns.as_deref(), "etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg(format!("--command-timeout={timeout}"));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        cmd
    }

    /// Runs `etcdctl` against this server; panics if it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self
            .etcdctl_command("5s")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run etcdctl: {e}"));
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until etcd answers; on failure returns its log.
    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited ({status}):\n{}", self.log()));
            }
            let mut cmd = self.etcdctl_command("1s");
            if cmd
                .args(["endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "etcd not healthy after {START_TIMEOUT:?}:\n{}",
            self.log()
        ))
    }

    fn log(&self) -> String {
        let mut log = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.path().join("etcd.log")) {
            let _ = f.read_to_string(&mut log);
        }
        log
    }

    /// Kills etcd (by PID) and reaps it.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Moves the temporary directory out of a failed attempt, leaving a fresh one behind.
    fn take_dir(&mut self) -> TempDir {
        let _ = fs::remove_dir_all(self.dir.path().join("data"));
        std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("cannot create a temporary directory"),
        )
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `program`, run inside `netns` if given.
fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, program]);
            cmd
        }
        None => Command::new(program),
    }
}

/// A port on `ip` that was free a moment ago.
fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a free port")
}

/// The value etcd wants in `ETCD_UNSUPPORTED_ARCH` on this architecture, if any (etcd 3.4
/// supports amd64, arm64 and ppc64le without it).
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" | "aarch64" | "powerpc64" => None,
        "x86" => Some("386"),
        other => Some(other),
    }
}

fn spawn_etcd(
    dir: &Path,
    spec: &EtcdSpec,
    endpoint: &str,
    peer_port: u16,
    tls: Option<&TlsFiles>,
) -> Child {
    let peer = format!("http://{}:{peer_port}", spec.ip);
    let membership = spec.membership.clone().unwrap_or_else(|| {
        let name = unique_id();
        Membership {
            initial_cluster: format!("{name}={peer}"),
            token: name.clone(),
            name,
            state: "new",
        }
    });
    let log = fs::File::create(dir.join("etcd.log")).expect("cannot create etcd.log");
    // `ip netns exec` execs etcd in place, so the child's PID is etcd's.
    let mut cmd = in_netns(spec.netns.as_deref(), "/usr/bin/etcd");
    cmd.arg(format!("--name={}", membership.name))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={}", membership.initial_cluster))
        .arg(format!("--initial-cluster-token={}", membership.token))
        .arg(format!("--initial-cluster-state={}", membership.state))
        .arg("--logger=zap")
        .arg("--log-outputs=stderr");
    if spec.enable_v2 {
        cmd.arg("--enable-v2=true");
    }
    if let Some(tls) = tls {
        cmd.arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", tls.ca.display()))
            .arg(format!("--cert-file={}", tls.server_cert.display()))
            .arg(format!("--key-file={}", tls.server_key.display()));
    }
    if let Some(arch) = unsupported_arch() {
        cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
    }
    let stderr = log.try_clone().expect("cannot clone the log file handle");
    cmd.stdin(Stdio::null()).stdout(log).stderr(stderr);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill etcd when the thread
    // that started it (the test) dies, so a killed test run leaves no etcd behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("cannot start /usr/bin/etcd")
}

/// A key pair and the certificate PEM signed for it.
fn issue(
    name: &str,
    sans: Vec<String>,
    usage: &[ExtendedKeyUsagePurpose],
    issuer: &CertifiedIssuer<'_, KeyPair>,
) -> (String, String) {
    let mut params = CertificateParams::new(sans).expect("invalid certificate names");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usage.to_vec();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().expect("cannot generate a key");
    let cert = params
        .signed_by(&key, issuer)
        .expect("cannot sign a certificate");
    (cert.pem(), key.serialize_pem())
}

/// A self-signed CA.
fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::new()).expect("invalid CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("cannot generate a CA key");
    CertifiedIssuer::self_signed(params, key).expect("cannot self-sign the CA")
}

/// Generates the CA, server, client and unrelated-CA certificates into `dir`.
fn write_certificates(dir: &Path, ips: &[Ipv4Addr]) -> TlsFiles {
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        fs::write(&path, pem).expect("cannot write a PEM file");
        path
    };
    let ca = certificate_authority("flanneld test CA");
    let other = certificate_authority("unrelated CA");
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(
        (ips.iter())
            .filter(|ip| !ip.is_loopback())
            .map(ToString::to_string),
    );
    let server_usage = [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let client_usage = [ExtendedKeyUsagePurpose::ClientAuth];
    let (server_cert, server_key) = issue("etcd", sans, &server_usage, &ca);
    let (client_cert, client_key) = issue("flanneld", Vec::new(), &client_usage, &ca);
    let (other_cert, other_key) = issue("intruder", Vec::new(), &client_usage, &other);
    TlsFiles {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
        other_ca: write("other-ca.pem", &other.pem()),
        other_client_cert: write("other-client.pem", &other_cert),
        other_client_key: write("other-client-key.pem", &other_key),
    }
}

/// A TCP proxy in front of etcd whose connections a test can cut, to simulate a network outage
/// (e.g. to make a watcher reconnect after a compaction). Runs on the test's tokio runtime.
pub struct CutProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Starts a proxy on a free loopback port forwarding to the host and port of `endpoint`.
    pub async fn start(endpoint: &str) -> CutProxy {
        let target = endpoint
            .rsplit("//")
            .next()
            .and_then(|hostport| hostport.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("endpoint {endpoint} is not scheme://ip:port"));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("cannot bind the proxy");
        let addr = listener.local_addr().expect("proxy has no address");
        let (up, _) = watch::channel(true);
        let up_rx = up.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut up = up_rx.clone();
                if !*up.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        CutProxy { addr, up, task }
    }

    /// The proxy's URL with the scheme of `endpoint` (the TLS server name stays 127.0.0.1).
    pub fn endpoint(&self, like: &str) -> String {
        let scheme = like.split("://").next().unwrap_or("http");
        format!("{scheme}://{}", self.addr)
    }

    /// Drops every connection and refuses new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
