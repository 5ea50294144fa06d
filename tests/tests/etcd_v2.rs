//! The etcd v2 keyspace (flanneld v0.11 clusters) against a real etcd 3.4 with `--enable-v2`:
//! config read and keyspace detection, lease create/renew/reuse/expiry, the watch recovering
//! after the 1000-event window was exceeded, and `flanneld migrate-etcd` to the v3 keyspace.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, SystemTime};

use flanneld_tests::cluster::flanneld_bin;
use flanneld_tests::etcd::{EtcdServer, EtcdSpec};
use subnet::{
    acquire, is_valid, Detector, EtcdV2Registry, Keyspace, LeaseAttrs, LeaseEvent, LeaseManager,
    LeaseTiming, PeerSet, PutGuard, Registry, RegistryError, SubnetKey, WatchScope, WatchUpdate,
};
use tokio::sync::mpsc;

const CONFIG: &str = r#"{"Network":"10.3.0.0/16","Backend":{"Type":"vxlan"}}"#;
const DAY: Duration = Duration::from_secs(86400);

fn v2_server(tls: bool) -> EtcdServer {
    EtcdServer::start_with(EtcdSpec {
        tls,
        enable_v2: true,
        ..EtcdSpec::default()
    })
}

/// vxlan attributes as this agent builds them (with VNI), for host `192.168.0.<last>`.
fn vtep(last: u8) -> LeaseAttrs {
    let mut attrs = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, last), "vxlan");
    let data = serde_json::json!({"VNI": 1, "VtepMAC": format!("02:00:00:00:00:{last:02x}")});
    attrs.backend_data = Some(subnet::BackendData::new(&data));
    attrs
}

/// What flanneld v0.11 writes for `vtep(last)`.
fn v011_value(last: u8) -> String {
    format!(
        r#"{{"PublicIP":"192.168.0.{last}","BackendType":"vxlan","BackendData":{{"VtepMAC":"02:00:00:00:00:{last:02x}"}}}}"#
    )
}

fn key(s: &str) -> SubnetKey {
    SubnetKey::v4(s.parse().unwrap())
}

/// A fresh prefix with the config written by `ETCDCTL_API=2 etcdctl set`, and a v2 registry.
fn setup(server: &EtcdServer) -> (EtcdV2Registry, String) {
    let prefix = EtcdServer::unique_prefix();
    server.v2_set(&format!("{prefix}/config"), CONFIG, None);
    let registry = EtcdV2Registry::connect(&server.options(&prefix)).unwrap();
    (registry, prefix)
}

async fn next(updates: &mut mpsc::Receiver<WatchUpdate>) -> WatchUpdate {
    tokio::time::timeout(Duration::from_secs(20), updates.recv())
        .await
        .expect("no watch update within 20 s")
        .expect("watch ended")
}

#[tokio::test]
async fn v2_config_is_read_over_tls_and_auto_prefers_the_v3_keyspace() {
    let server = v2_server(true);
    let (registry, prefix) = setup(&server);
    let config = registry.network_config().await.unwrap();
    assert_eq!(config.v4().unwrap().network, "10.3.0.0/16".parse().unwrap());
    assert_eq!(config.backend.backend_type, "vxlan");

    // A dead endpoint first (as in the default list): the next one answers.
    let mut options = server.options(&prefix);
    options.endpoints.insert(0, "https://127.0.0.1:1".into());
    let registry = EtcdV2Registry::connect(&options).unwrap();
    assert!(registry.network_config().await.is_ok());

    let detector = Detector::connect(&server.options(&prefix)).await.unwrap();
    assert!(matches!(detector.detect().await, Ok(Keyspace::V2(_))));
    server.v2_set(
        &format!("{prefix}/config"),
        r#"{"Network":"10.3.0.0/16","SubnetLen":31}"#,
        None,
    );
    assert!(
        matches!(
            detector.detect().await,
            Err(RegistryError::InvalidConfig { .. })
        ),
        "the keyspace holding the config decides, even when the config is invalid"
    );
    server.v2_set(&format!("{prefix}/config"), CONFIG, None);
    server.put(&format!("{prefix}/config"), r#"{"Network":"10.4.0.0/16"}"#);
    assert!(
        matches!(detector.detect().await, Ok(Keyspace::V3(_))),
        "v3 first when both hold a config"
    );

    let missing = EtcdServer::unique_prefix();
    let registry = EtcdV2Registry::connect(&server.options(&missing)).unwrap();
    let err = registry.network_config().await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ConfigNotFound { .. })
            && err
                .to_string()
                .contains(&format!("ETCDCTL_API=2 etcdctl set {missing}/config")),
        "{err}"
    );
    let detector = Detector::connect(&server.options(&missing)).await.unwrap();
    let err = detector.detect().await.err().unwrap().to_string();
    assert!(
        err.contains("Looked in the v3 keyspace, then in the v2 keyspace (--etcd-api=auto)"),
        "{err}"
    );

    // A client certificate of another CA: a clear TLS error naming the flags.
    let tls = server.tls().unwrap();
    let mut bad = server.options(&prefix);
    bad.certfile = Some(tls.other_client_cert.clone());
    bad.keyfile = Some(tls.other_client_key.clone());
    let err = EtcdV2Registry::connect(&bad)
        .unwrap()
        .network_config()
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unavailable { .. })
            && err.to_string().contains("--etcd-certfile/--etcd-keyfile"),
        "{err}"
    );
}

#[tokio::test]
async fn an_etcd_without_v2_is_reported_and_auto_falls_back_to_v3_errors() {
    let server = EtcdServer::start();
    let prefix = EtcdServer::unique_prefix();
    let registry = EtcdV2Registry::connect(&server.options(&prefix)).unwrap();
    let err = registry.network_config().await.unwrap_err();
    assert!(matches!(err, RegistryError::V2Disabled { .. }), "{err:?}");
    assert!(err.to_string().contains("--enable-v2=true"), "{err}");
    let detector = Detector::connect(&server.options(&prefix)).await.unwrap();
    let err = detector.detect().await.err().unwrap().to_string();
    assert!(
        err.contains("(this etcd does not serve the v2 API)"),
        "{err}"
    );
}

#[tokio::test]
async fn leases_are_created_as_v011_writes_them_and_reused_by_public_ip_or_subnet_env() {
    let server = v2_server(true);
    let (registry, prefix) = setup(&server);
    let config = registry.network_config().await.unwrap();

    let lease = acquire(&registry, &config, &vtep(1), None, DAY)
        .await
        .unwrap();
    let etcd_key = format!("{prefix}/subnets/{}", lease.key);
    let node = server.v2_get(&etcd_key).expect("lease written");
    assert_eq!(node["value"], v011_value(1), "exactly v0.11's JSON");
    let ttl = node["ttl"].as_i64().unwrap();
    assert!((86390..=86400).contains(&ttl), "ttl {ttl}");
    let written_at = node["modifiedIndex"].as_u64().unwrap();

    // Reuse by PublicIP: same subnet, written again (guarded by prevIndex).
    let again = acquire(&registry, &config, &vtep(1), None, DAY)
        .await
        .unwrap();
    assert_eq!(again.key, lease.key);
    let node = server.v2_get(&etcd_key).unwrap();
    assert!(node["modifiedIndex"].as_u64().unwrap() > written_at);

    // Reuse of the subnet recorded in subnet.env.
    let previous = "10.3.77.0-24".parse().unwrap();
    let lease2 = acquire(&registry, &config, &vtep(2), Some(previous), DAY)
        .await
        .unwrap();
    assert_eq!(lease2.key, key("10.3.77.0/24"));

    // A host that ran flanneld v0.11 (its lease written by v0.11) keeps its subnet.
    let old = format!("{prefix}/subnets/10.3.99.0-24");
    server.v2_set(&old, &v011_value(9), Some(86400));
    let lease9 = acquire(&registry, &config, &vtep(9), None, DAY)
        .await
        .unwrap();
    assert_eq!(lease9.key, key("10.3.99.0/24"));

    // Guarded writes and deletes: a stale index changes nothing.
    let stored = registry.get_lease(lease9.key).await.unwrap().unwrap();
    assert_eq!(stored.lease.attrs, vtep(9).v011());
    let stale = PutGuard::Unchanged {
        mod_revision: stored.mod_revision - 1,
    };
    assert_eq!(
        registry
            .put_lease(lease9.key, &vtep(8), stale, Some(DAY))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        registry
            .put_lease(lease9.key, &vtep(8), PutGuard::Absent, Some(DAY))
            .await
            .unwrap(),
        None
    );
    assert!(!registry
        .delete_lease(lease9.key, stored.mod_revision - 1)
        .await
        .unwrap());
    assert!(registry
        .delete_lease(lease9.key, stored.mod_revision)
        .await
        .unwrap());
    assert!(server.v2_get(&old).is_none());
    let listed: BTreeSet<SubnetKey> = registry
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.lease.key)
        .collect();
    assert_eq!(listed, BTreeSet::from([lease.key, lease2.key]));
}

#[tokio::test]
async fn the_manager_renews_in_v2_and_expired_leases_are_removals() {
    let server = v2_server(false);
    let (registry, prefix) = setup(&server);
    let config = registry.network_config().await.unwrap();
    let timing = LeaseTiming {
        ttl: Duration::from_secs(4),
        renew_margin: Duration::from_secs(3),
        retry_interval: Duration::from_secs(1),
    };
    let manager = LeaseManager::start(registry.clone(), &config, vtep(1), None, timing)
        .await
        .unwrap();
    let own = manager.lease().key;
    let current = manager.subscribe();
    let task = tokio::spawn(manager.run());
    let mut peers = registry.watch_leases(WatchScope::AllLeases);
    assert!(matches!(next(&mut peers).await, WatchUpdate::Snapshot(_)));

    // A lease written with a short TTL (as a v0.11 host that stopped) expires: a removal.
    let gone = key("10.3.200.0/24");
    server.v2_set(&format!("{prefix}/subnets/{gone}"), &v011_value(7), Some(2));
    let (mut added, mut removed) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !removed && tokio::time::Instant::now() < deadline {
        if let WatchUpdate::Events(events) = next(&mut peers).await {
            for event in events {
                match event {
                    LeaseEvent::Put(l) if l.key == gone => added = true,
                    LeaseEvent::Removed(k) if k == gone => removed = true,
                    _ => {}
                }
            }
        }
    }
    assert!(added && removed, "added {added}, expired {removed}");

    // By now our 4 s lease was renewed several times, seen as ours (no conflict).
    let lease = current.borrow().clone();
    assert_eq!(lease.key, own);
    assert!(is_valid(&lease, SystemTime::now()), "{lease:?}");
    let node = server
        .v2_get(&format!("{prefix}/subnets/{own}"))
        .expect("own lease kept alive");
    assert_eq!(node["value"], v011_value(1));
    assert!(node["ttl"].as_i64().unwrap() <= 4);
    task.abort();
}

#[tokio::test]
async fn the_watch_re_lists_after_the_1000_event_window_and_the_diff_is_right() {
    let server = v2_server(false);
    let (registry, prefix) = setup(&server);
    let (a, b, c, d) = (
        key("10.3.1.0/24"),
        key("10.3.2.0/24"),
        key("10.3.3.0/24"),
        key("10.3.4.0/24"),
    );
    for (k, host) in [(a, 1), (b, 2)] {
        registry
            .put_lease(k, &vtep(host), PutGuard::Absent, Some(DAY))
            .await
            .unwrap()
            .unwrap();
    }
    let mut peers = PeerSet::new("10.3.250.0/24".parse().unwrap());
    let mut updates = registry.watch_leases(WatchScope::AllLeases);
    let WatchUpdate::Snapshot(first) = next(&mut updates).await else {
        panic!("the watch starts with a snapshot");
    };
    peers.replace_all(first);
    assert_eq!(peers.len(), 2);

    // While nobody reads the watch (its buffer fills after 16 events), C is created and deleted
    // 600 times (1200 events), then B is deleted and D created: far beyond the 1000 events etcd
    // v2 keeps.
    for _ in 0..600 {
        registry
            .put_lease(c, &vtep(3), PutGuard::Absent, Some(DAY))
            .await
            .unwrap()
            .unwrap();
        let stored = registry.get_lease(c).await.unwrap().unwrap();
        assert!(registry.delete_lease(c, stored.mod_revision).await.unwrap());
    }
    let stored_b = registry.get_lease(b).await.unwrap().unwrap();
    assert!(registry
        .delete_lease(b, stored_b.mod_revision)
        .await
        .unwrap());
    registry
        .put_lease(d, &vtep(4), PutGuard::Absent, Some(DAY))
        .await
        .unwrap()
        .unwrap();

    let mut after_snapshot = None;
    let mut events_before = 0;
    let mut c_known = false;
    while after_snapshot.is_none() {
        match next(&mut updates).await {
            WatchUpdate::Events(events) => {
                events_before += events.len();
                for e in &events {
                    peers.apply(e);
                }
            }
            WatchUpdate::Snapshot(leases) => {
                c_known = peers.iter().any(|l| l.key == c);
                after_snapshot = Some(peers.replace_all(leases));
            }
        }
    }
    assert!(
        events_before <= 20,
        "{events_before} events before the re-listing"
    );
    let diff: BTreeSet<String> = after_snapshot
        .unwrap()
        .iter()
        .map(|e| match e {
            LeaseEvent::Put(l) => format!("+{}", l.key),
            LeaseEvent::Removed(k) => format!("-{k}"),
        })
        .collect();
    // B went, D came, and C (created and deleted 600 times) is gone if the events delivered
    // before the window was exceeded left it present.
    let mut expected = BTreeSet::from([format!("-{b}"), format!("+{d}")]);
    if c_known {
        expected.insert(format!("-{c}"));
    }
    assert_eq!(diff, expected, "the snapshot diff");
    let now: BTreeSet<SubnetKey> = peers.iter().map(|l| l.key).collect();
    assert_eq!(now, BTreeSet::from([a, d]));

    // And the watch goes on from there.
    assert!(server.v2_delete(&format!("{prefix}/subnets/{a}")));
    match next(&mut updates).await {
        WatchUpdate::Events(events) => assert_eq!(events, vec![LeaseEvent::Removed(a)]),
        other => panic!("expected the deletion of A, got {other:?}"),
    }
}

/// Runs `flanneld migrate-etcd` against `server` under `prefix`; returns the exit code and stdout.
fn migrate(server: &EtcdServer, prefix: &str, extra: &[&str]) -> (i32, String) {
    let tls = server.tls().expect("TLS server");
    let out = Command::new(flanneld_bin())
        .args(["migrate-etcd", "--from", "v2", "--to", "v3"])
        .args(extra)
        .arg(format!("-etcd-endpoints={}", server.endpoint()))
        .arg(format!("-etcd-prefix={prefix}"))
        .arg(format!("-etcd-cafile={}", tls.ca.display()))
        .arg(format!("-etcd-certfile={}", tls.client_cert.display()))
        .arg(format!("-etcd-keyfile={}", tls.client_key.display()))
        .output()
        .expect("run flanneld migrate-etcd");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.stderr.is_empty() || out.status.code() != Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn migrate_etcd_copies_config_and_leases_with_their_ttls_idempotently() {
    let server = v2_server(true);
    let prefix = EtcdServer::unique_prefix();
    let config_key = format!("{prefix}/config");
    server.v2_set(&config_key, CONFIG, None);
    let leases = [
        ("10.3.1.0-24", v011_value(1), Some(600)),
        ("10.3.2.0-24", v011_value(2), Some(3000)),
        ("10.3.3.0-24", v011_value(3), None),
    ];
    for (k, value, ttl) in &leases {
        server.v2_set(&format!("{prefix}/subnets/{k}"), value, *ttl);
    }
    server.v2_set(&format!("{prefix}/subnets/bogus"), "x", None);

    let (code, out) = migrate(&server, &prefix, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(": would create with ").count(), 4, "{out}");
    assert!(
        out.contains("dry run: 4 to create, 0 already in v3"),
        "{out}"
    );
    assert!(out.contains("skipped: invalid lease at"), "{out}");
    assert_eq!(server.get(&config_key), None, "a dry run writes nothing");

    let (code, out) = migrate(&server, &prefix, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("done: 4 created, 0 already in v3, 0 differing"),
        "{out}"
    );
    assert_eq!(server.get(&config_key).as_deref(), Some(CONFIG));
    let mut lease_ids = Vec::new();
    for (k, value, ttl) in &leases {
        let v3_key = format!("{prefix}/subnets/{k}");
        assert_eq!(
            server.get(&v3_key).as_ref(),
            Some(value),
            "{k} copied verbatim"
        );
        match ttl {
            Some(ttl) => {
                let ttl = i64::try_from(*ttl).unwrap();
                let (left, granted, id) = server.lease_ttl(&v3_key).expect("a v3 lease");
                assert!(
                    (ttl - 5..=ttl).contains(&granted) && left <= granted && left >= ttl - 10,
                    "{k}: v2 TTL {ttl}, v3 granted {granted}, left {left}"
                );
                lease_ids.push(id);
            }
            None => assert_eq!(server.lease_ttl(&v3_key), None, "{k} stays without TTL"),
        }
    }
    assert_eq!(server.get(&format!("{prefix}/subnets/bogus")), None);

    // Again: nothing changes.
    let (code, out) = migrate(&server, &prefix, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("done: 0 created, 4 already in v3, 0 differing"),
        "{out}"
    );
    for (k, _, ttl) in &leases {
        if ttl.is_some() {
            let id = server
                .lease_ttl(&format!("{prefix}/subnets/{k}"))
                .unwrap()
                .2;
            assert!(lease_ids.contains(&id), "{k} keeps its v3 lease");
        }
    }

    // A host already moved to v3 rewrote its lease in the v3 format: the same lease. Another host
    // holding a subnet in v3 that v2 gives to someone else: reported, exit 1, left alone.
    server.put(
        &format!("{prefix}/subnets/10.3.1.0-24"),
        r#"{"PublicIP":"192.168.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#,
    );
    let conflict = format!("{prefix}/subnets/10.3.4.0-24");
    server.v2_set(&conflict, &v011_value(4), Some(600));
    server.put(&conflict, &v011_value(5));
    let (code, out) = migrate(&server, &prefix, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("held by the same PublicIP"), "{out}");
    assert!(
        out.contains(&format!("{conflict}: DIFFERS in v3, left as it is")),
        "{out}"
    );
    assert_eq!(server.get(&conflict), Some(v011_value(5)));
}
