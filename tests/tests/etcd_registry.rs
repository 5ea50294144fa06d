//! The etcd registry, lease manager and peer watcher against a real etcd (Debian's etcd 3.4),
//! over mutual TLS and plain http.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use flanneld_tests::etcd::{CutProxy, EtcdServer};
use ipnet::Ipv4Net;
use subnet::{
    acquire, is_valid, AcquireError, EtcdOptions, EtcdRegistry, Lease, LeaseAttrs, LeaseEvent,
    LeaseManager, LeaseTiming, PeerSet, Registry, RegistryError, SubnetKey, WatchScope,
    WatchUpdate,
};
use tokio::sync::mpsc;

const CONFIG: &str = r#"{"Network":"10.3.0.0/16","Backend":{"Type":"host-gw"}}"#;
const DAY: Duration = Duration::from_secs(86400);

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn host(last: u8) -> LeaseAttrs {
    LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, last), "host-gw")
}

/// A server with a config under a fresh prefix, and a registry connected to it.
async fn setup(server: &EtcdServer, config: &str) -> (EtcdRegistry, String) {
    let prefix = EtcdServer::unique_prefix();
    server.put(&format!("{prefix}/config"), config);
    let registry = EtcdRegistry::connect(&server.options(&prefix))
        .await
        .unwrap();
    (registry, prefix)
}

/// Connects with `options` and reads the config, which must fail; returns the error.
async fn config_error(options: &EtcdOptions) -> RegistryError {
    EtcdRegistry::connect(options)
        .await
        .unwrap()
        .network_config()
        .await
        .unwrap_err()
}

async fn next(updates: &mut mpsc::Receiver<WatchUpdate>) -> WatchUpdate {
    tokio::time::timeout(Duration::from_secs(20), updates.recv())
        .await
        .expect("no watch update within 20 s")
        .expect("watch ended")
}

/// Polls `check` every 100 ms for up to 15 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..150 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn config_found_missing_and_invalid_over_tls() {
    let server = EtcdServer::start_tls();
    let (registry, prefix) = setup(&server, CONFIG).await;
    let config = registry.network_config().await.unwrap();
    assert_eq!(config.v4().unwrap().network, net("10.3.0.0/16"));
    assert_eq!(config.backend.backend_type, "host-gw");

    let missing = EtcdServer::unique_prefix();
    let registry = EtcdRegistry::connect(&server.options(&format!("{missing}/")))
        .await
        .unwrap();
    let err = registry.network_config().await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ConfigNotFound { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "flannel config not found in etcd store at {missing}/config. Did you create your \
             config using etcdv3 API? e.g. etcdctl put {missing}/config '{{\"Network\":"
        )),
        "{text}"
    );

    server.put(
        &format!("{prefix}/config"),
        r#"{"Network":"10.3.0.0/16","SubnetLen":31}"#,
    );
    let (registry, _) = (
        EtcdRegistry::connect(&server.options(&prefix))
            .await
            .unwrap(),
        (),
    );
    match registry.network_config().await.unwrap_err() {
        RegistryError::InvalidConfig { key, source } => {
            assert_eq!(key, format!("{prefix}/config"));
            assert!(
                matches!(source, subnet::ConfigError::SubnetLenTooLong { .. }),
                "{source:?}"
            );
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test]
async fn acquire_writes_a_go_compatible_lease_in_range_over_tls() {
    let server = EtcdServer::start_tls();
    let (registry, prefix) = setup(&server, CONFIG).await;
    let config = registry.network_config().await.unwrap();
    let attrs = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 5), "host-gw");
    let before = SystemTime::now();
    let lease = acquire(&registry, &config, &attrs, None, DAY)
        .await
        .unwrap();
    assert!(config.v4().unwrap().allows(lease.subnet()), "{lease:?}");
    assert_eq!(lease.key.ipv6, None);
    let expiration = lease.expiration.unwrap();
    assert!(
        expiration >= before + DAY - Duration::from_secs(10)
            && expiration <= before + DAY + Duration::from_secs(10)
    );

    let key = format!("{prefix}/subnets/{}", lease.key);
    assert_eq!(
        server.get(&key).as_deref(),
        Some(r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}"#)
    );
    let (ttl, granted, _) = server.lease_ttl(&key).unwrap();
    assert_eq!(granted, 86400);
    assert!(ttl > 86390, "{ttl}");
}

#[tokio::test]
async fn reacquire_reuses_the_lease_holding_our_public_ip() {
    let server = EtcdServer::start();
    let (registry, prefix) = setup(&server, CONFIG).await;
    let config = registry.network_config().await.unwrap();
    let first = acquire(&registry, &config, &host(1), None, DAY)
        .await
        .unwrap();
    let key = format!("{prefix}/subnets/{}", first.key);
    let (_, _, first_id) = server.lease_ttl(&key).unwrap();
    // PublicIP beats subnet.env, as in Go flanneld.
    let again = acquire(
        &registry,
        &config,
        &host(1),
        Some(SubnetKey::v4(net("10.3.99.0/24"))),
        DAY,
    )
    .await
    .unwrap();
    assert_eq!(again.key, first.key);
    let (_, _, second_id) = server.lease_ttl(&key).unwrap();
    assert_ne!(
        first_id, second_id,
        "the reused lease should get a fresh etcd lease"
    );
    assert_eq!(registry.list_leases().await.unwrap().len(), 1);
}

#[tokio::test]
async fn previous_subnet_is_reused_only_if_the_config_allows_it() {
    let server = EtcdServer::start();
    let (registry, prefix) = setup(&server, CONFIG).await;
    let config = registry.network_config().await.unwrap();
    let lease = acquire(
        &registry,
        &config,
        &host(1),
        Some(SubnetKey::v4(net("10.3.6.0/24"))),
        DAY,
    )
    .await
    .unwrap();
    assert_eq!(lease.subnet(), net("10.3.6.0/24"));

    let lease = acquire(
        &registry,
        &config,
        &host(2),
        Some(SubnetKey::v4(net("10.4.1.0/24"))),
        DAY,
    )
    .await
    .unwrap();
    assert_ne!(lease.subnet(), net("10.4.1.0/24"));
    assert!(config.v4().unwrap().allows(lease.subnet()));

    // Our old lease outside a changed config is deleted and replaced.
    server.put(&format!("{prefix}/config"), r#"{"Network":"10.5.0.0/16"}"#);
    let config = registry.network_config().await.unwrap();
    let moved = acquire(&registry, &config, &host(1), None, DAY)
        .await
        .unwrap();
    assert!(config.v4().unwrap().allows(moved.subnet()), "{moved:?}");
    assert_eq!(server.get(&format!("{prefix}/subnets/10.3.6.0-24")), None);
}

#[tokio::test]
async fn racing_agents_get_different_subnets() {
    let server = EtcdServer::start();
    let (registry, _) = setup(&server, CONFIG).await;
    let config = registry.network_config().await.unwrap();
    let previous = Some(SubnetKey::v4(net("10.3.6.0/24")));
    let hosts = [host(1), host(2), host(3)];
    let (a, b, c) = tokio::join!(
        acquire(&registry, &config, &hosts[0], previous, DAY),
        acquire(&registry, &config, &hosts[1], previous, DAY),
        acquire(&registry, &config, &hosts[2], previous, DAY),
    );
    let subnets: BTreeSet<Ipv4Net> = [a, b, c].into_iter().map(|l| l.unwrap().subnet()).collect();
    assert_eq!(subnets.len(), 3, "{subnets:?}");
    assert!(subnets.contains(&net("10.3.6.0/24")));

    // A range of two subnets: two racers fit, a third is out of subnets.
    let (registry, _) = setup(
        &server,
        r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.2.0"}"#,
    )
    .await;
    let config = registry.network_config().await.unwrap();
    let (a, b) = tokio::join!(
        acquire(&registry, &config, &hosts[0], None, DAY),
        acquire(&registry, &config, &hosts[1], None, DAY),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.subnet(), b.subnet());
    match acquire(&registry, &config, &host(3), None, DAY).await {
        Err(AcquireError::OutOfSubnets(e)) => assert_eq!(e.leases, 2),
        other => panic!("expected out of subnets, got {other:?}"),
    }
}

/// Two dual-stack agents choosing at once from two IPv4 and eight IPv6 subnets: etcd creates
/// both keys when they differ in one half only, so the later writer must notice the shared half
/// and choose again. Each round would clash on IPv4 about every other time without that.
#[tokio::test]
async fn racing_dual_stack_agents_share_no_half() {
    let server = EtcdServer::start();
    let config = r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.2.0",
        "EnableIPv6":true,"IPv6Network":"fd00:3::/48",
        "IPv6SubnetMin":"fd00:3:0:1::","IPv6SubnetMax":"fd00:3:0:8::"}"#;
    for round in 0..8 {
        let (registry, _) = setup(&server, config).await;
        let config = registry.network_config().await.unwrap();
        let hosts = [host(1), host(2)];
        let (a, b) = tokio::join!(
            acquire(&registry, &config, &hosts[0], None, DAY),
            acquire(&registry, &config, &hosts[1], None, DAY),
        );
        let (a, b) = (a.unwrap().key, b.unwrap().key);
        assert_ne!(a.ipv4, b.ipv4, "round {round}: {a} and {b}");
        assert_ne!(a.ipv6, b.ipv6, "round {round}: {a} and {b}");
        assert_eq!(
            registry.list_leases().await.unwrap().len(),
            2,
            "round {round}"
        );
    }
}

fn short_timing() -> LeaseTiming {
    LeaseTiming {
        ttl: Duration::from_secs(10),
        renew_margin: Duration::from_secs(8),
        retry_interval: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn renewal_refreshes_the_ttl_and_keeps_the_value() {
    let server = EtcdServer::start_tls();
    let (registry, prefix) = setup(&server, CONFIG).await;
    let config = registry.network_config().await.unwrap();
    let manager = LeaseManager::start(registry, &config, host(1), None, short_timing())
        .await
        .unwrap();
    let first = manager.lease();
    let key = format!("{prefix}/subnets/{}", first.key);
    let value = server.get(&key).unwrap();
    let (_, granted, first_id) = server.lease_ttl(&key).unwrap();
    assert_eq!(granted, 10);
    let mut updates = manager.subscribe();
    let task = tokio::spawn(manager.run());

    tokio::time::timeout(Duration::from_secs(10), updates.changed())
        .await
        .expect("no renewal within 10 s")
        .unwrap();
    let renewed = updates.borrow().clone();
    assert_eq!(renewed.key, first.key);
    assert!(renewed.expiration.unwrap() > first.expiration.unwrap());
    let (ttl, granted, id) = server.lease_ttl(&key).unwrap();
    assert_ne!(id, first_id);
    assert_eq!(granted, 10);
    assert!(ttl >= 8, "{ttl}");
    assert_eq!(server.get(&key).unwrap(), value);

    // Twelve seconds is beyond the first TTL: only renewals keep the key alive.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(server.get(&key).unwrap(), value);
    assert!(is_valid(&updates.borrow(), SystemTime::now()));
    task.abort();
}

#[tokio::test]
async fn a_deleted_own_lease_is_reclaimed_and_an_overwritten_one_reported() {
    let server = EtcdServer::start_tls();
    let (registry, prefix) = setup(&server, CONFIG).await;
    let config = registry.network_config().await.unwrap();
    let timing = LeaseTiming {
        ttl: DAY,
        ..short_timing()
    };
    let manager = LeaseManager::start(registry, &config, host(1), None, timing)
        .await
        .unwrap();
    let lease = manager.lease();
    let key = format!("{prefix}/subnets/{}", lease.key);
    let value = server.get(&key).unwrap();
    let updates = manager.subscribe();
    let task = tokio::spawn(manager.run());
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(server.delete(&key));
    eventually("the lease is re-claimed", || {
        server.get(&key).as_deref() == Some(&value)
    })
    .await;
    eventually("the re-claimed lease is published", || {
        is_valid(&updates.borrow(), SystemTime::now())
    })
    .await;
    assert_eq!(updates.borrow().key, lease.key);
    assert_eq!(server.lease_ttl(&key).unwrap().1, 86400);

    let intruder = host(9).to_json();
    server.put(&key, &intruder);
    eventually("the conflict makes the lease invalid", || {
        !is_valid(&updates.borrow(), SystemTime::now())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.get(&key),
        Some(intruder),
        "another host's value must not be overwritten"
    );

    assert!(server.delete(&key));
    eventually("the lease is re-claimed after the intruder left", || {
        server.get(&key).as_deref() == Some(&value)
    })
    .await;
    eventually("valid again", || {
        is_valid(&updates.borrow(), SystemTime::now())
    })
    .await;
    task.abort();
}

/// vxlan lease attributes of host `192.168.0.1` with VtepMAC `mac`.
fn vtep(mac: &str) -> LeaseAttrs {
    let mut attrs = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 1), "vxlan");
    let data = serde_json::json!({"VNI": 1, "VtepMAC": mac});
    attrs.backend_data = Some(subnet::BackendData::new(&data));
    attrs
}

#[tokio::test]
async fn changed_attributes_reach_the_peers_and_survive_a_re_claim() {
    let server = EtcdServer::start_tls();
    let (registry, prefix) = setup(&server, CONFIG).await;
    let config = registry.network_config().await.unwrap();
    let timing = LeaseTiming {
        ttl: DAY,
        ..short_timing()
    };
    let old = vtep("02:00:00:00:00:01");
    let manager = LeaseManager::start(registry.clone(), &config, old, None, timing)
        .await
        .unwrap();
    let lease = manager.lease();
    let key = format!("{prefix}/subnets/{}", lease.key);
    let handle = manager.handle();
    let updates = manager.subscribe();
    let task = tokio::spawn(manager.run());
    // A peer's view of the leases (its own subnet outside the network: it sees all of them).
    let mut peer_watch = registry.watch_leases(WatchScope::AllLeases);
    let mut peers = PeerSet::new(net("10.99.0.0/24").into());
    match next(&mut peer_watch).await {
        WatchUpdate::Snapshot(leases) => {
            peers.replace_all(leases);
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let new = vtep("02:00:00:00:00:02");
    handle.set_attrs(new.clone());
    while peers.iter().all(|l| l.attrs != new) {
        match next(&mut peer_watch).await {
            WatchUpdate::Snapshot(leases) => {
                peers.replace_all(leases);
            }
            WatchUpdate::Events(events) => events.iter().for_each(|e| {
                peers.apply(e);
            }),
        }
    }
    assert_eq!(server.get(&key), Some(new.to_json()));
    eventually("the new attributes are published", || {
        let current = updates.borrow();
        current.attrs == new && is_valid(&current, SystemTime::now())
    })
    .await;
    // The watch echo of our own writes is no conflict (the retry interval is 1 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(is_valid(&updates.borrow(), SystemTime::now()));

    assert!(server.delete(&key));
    eventually("the lease is re-claimed with the new attributes", || {
        server.get(&key) == Some(new.to_json())
    })
    .await;
    task.abort();
}

fn lease_json(ip: u8) -> String {
    host(ip).to_json()
}

fn keys(leases: &[Lease]) -> BTreeSet<String> {
    leases.iter().map(|l| l.key.to_string()).collect()
}

#[tokio::test]
async fn peer_watch_reports_changes_and_skips_malformed_entries() {
    let server = EtcdServer::start_tls();
    let (registry, prefix) = setup(&server, CONFIG).await;
    let subnets = format!("{prefix}/subnets");
    server.put(&format!("{subnets}/10.3.1.0-24"), &lease_json(1));
    server.put(&format!("{subnets}/10.3.2.0-24"), &lease_json(2));
    server.put(&format!("{subnets}/not-a-subnet"), &lease_json(3));
    server.put(&format!("{subnets}/10.3.4.0-24"), "not json");

    let own = net("10.3.1.0/24");
    let mut peers = PeerSet::new(own.into());
    let mut updates = registry.watch_leases(WatchScope::AllLeases);
    let WatchUpdate::Snapshot(snapshot) = next(&mut updates).await else {
        panic!("the first update must be a snapshot")
    };
    assert_eq!(
        keys(&snapshot),
        BTreeSet::from(["10.3.1.0-24".into(), "10.3.2.0-24".into()])
    );
    peers.replace_all(snapshot);
    assert_eq!(peers.len(), 1, "our own lease is never a peer");

    server.put(&format!("{subnets}/10.3.5.0-24"), &lease_json(5));
    let update = next(&mut updates).await;
    let WatchUpdate::Events(events) = update else {
        panic!("expected events, got {update:?}")
    };
    assert_eq!(events.len(), 1);
    let LeaseEvent::Put(added) = &events[0] else {
        panic!("expected Added, got {events:?}")
    };
    assert_eq!(added.subnet(), net("10.3.5.0/24"));
    assert_eq!(added.attrs, host(5));
    events.iter().for_each(|e| {
        peers.apply(e);
    });

    // Malformed entries produce no update at all; the next real change comes through alone.
    server.put(&format!("{subnets}/garbage-key"), &lease_json(7));
    server.put(&format!("{subnets}/10.3.2.0-24"), "{broken");
    server.delete(&format!("{subnets}/10.3.5.0-24"));
    let update = next(&mut updates).await;
    assert_eq!(
        update,
        WatchUpdate::Events(vec![LeaseEvent::Removed(SubnetKey::v4(net("10.3.5.0/24")))])
    );
    if let WatchUpdate::Events(events) = &update {
        events.iter().for_each(|e| {
            peers.apply(e);
        });
    }
    assert_eq!(
        peers.iter().map(|l| l.subnet()).collect::<Vec<_>>(),
        vec![net("10.3.2.0/24")]
    );

    // Our own lease changing is delivered but ignored by the peer set.
    server.put(&format!("{subnets}/10.3.1.0-24"), &lease_json(11));
    let WatchUpdate::Events(events) = next(&mut updates).await else {
        panic!("expected events")
    };
    assert!(!events.iter().any(|e| peers.apply(e)));
}

#[tokio::test]
async fn peer_watch_recovers_from_disconnects_and_compaction() {
    let server = EtcdServer::start_tls();
    let prefix = EtcdServer::unique_prefix();
    let subnets = format!("{prefix}/subnets");
    server.put(&format!("{prefix}/config"), CONFIG);
    server.put(&format!("{subnets}/10.3.1.0-24"), &lease_json(1));
    server.put(&format!("{subnets}/10.3.2.0-24"), &lease_json(2));
    let proxy = CutProxy::start(server.endpoint()).await;
    let options = EtcdOptions {
        endpoints: vec![proxy.endpoint(server.endpoint())],
        ..server.options(&prefix)
    };
    let registry = EtcdRegistry::connect(&options).await.unwrap();
    let mut peers = PeerSet::new(net("10.3.9.0/24").into());
    let mut updates = registry.watch_leases(WatchScope::AllLeases);
    let WatchUpdate::Snapshot(snapshot) = next(&mut updates).await else {
        panic!("snapshot first")
    };
    peers.replace_all(snapshot);
    assert_eq!(peers.len(), 2);

    // A short outage without compaction: the watch resumes and delivers the missed event.
    proxy.cut();
    server.put(&format!("{subnets}/10.3.3.0-24"), &lease_json(3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let update = next(&mut updates).await;
    let WatchUpdate::Events(events) = &update else {
        panic!("expected events, got {update:?}")
    };
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(matches!(&events[0], LeaseEvent::Put(l) if l.subnet() == net("10.3.3.0/24")));
    events.iter().for_each(|e| {
        peers.apply(e);
    });

    // An outage during which the missed history is compacted away: re-list and diff.
    proxy.cut();
    server.delete(&format!("{subnets}/10.3.1.0-24"));
    server.put(&format!("{subnets}/10.3.2.0-24"), &lease_json(22));
    server.put(&format!("{subnets}/10.3.4.0-24"), &lease_json(4));
    server.put("/unrelated", "x");
    server.compact(server.revision());
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let update = next(&mut updates).await;
    let WatchUpdate::Snapshot(snapshot) = update else {
        panic!("expected a snapshot, got {update:?}")
    };
    let events = peers.replace_all(snapshot);
    let mut described: Vec<String> = events
        .iter()
        .map(|e| match e {
            LeaseEvent::Put(l) => format!("+{} {}", l.key, l.attrs.public_ip),
            LeaseEvent::Removed(k) => format!("-{k}"),
        })
        .collect();
    described.sort();
    assert_eq!(
        described,
        vec![
            "+10.3.2.0-24 192.168.0.22",
            "+10.3.4.0-24 192.168.0.4",
            "-10.3.1.0-24"
        ]
    );

    // And the watch goes on after the re-list.
    server.put(&format!("{subnets}/10.3.5.0-24"), &lease_json(5));
    let update = next(&mut updates).await;
    let WatchUpdate::Events(events) = &update else {
        panic!("expected events, got {update:?}")
    };
    assert!(matches!(&events[..], [LeaseEvent::Put(l)] if l.subnet() == net("10.3.5.0/24")));
}

#[tokio::test]
async fn tls_misconfiguration_is_a_clear_error() {
    let server = EtcdServer::start_tls();
    let prefix = EtcdServer::unique_prefix();
    server.put(&format!("{prefix}/config"), CONFIG);
    let tls = server.tls().unwrap().clone();

    let wrong_ca = EtcdOptions {
        cafile: Some(tls.other_ca.clone()),
        ..server.options(&prefix)
    };
    let err = config_error(&wrong_ca).await;
    let text = err.to_string();
    assert!(matches!(err, RegistryError::Unavailable { .. }), "{err:?}");
    assert!(text.contains(server.endpoint()), "{text}");
    assert!(text.contains("--etcd-cafile"), "{text}");

    let untrusted_client = EtcdOptions {
        certfile: Some(tls.other_client_cert.clone()),
        keyfile: Some(tls.other_client_key.clone()),
        ..server.options(&prefix)
    };
    let err = config_error(&untrusted_client).await;
    let text = err.to_string();
    assert!(
        text.contains(server.endpoint()) && text.contains("--etcd-certfile"),
        "{text}"
    );

    let missing_cert = EtcdOptions {
        certfile: Some(tls.client_cert.with_file_name("absent.pem")),
        ..server.options(&prefix)
    };
    let err = EtcdRegistry::connect(&missing_cert)
        .await
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("--etcd-certfile") && err.to_string().contains("absent.pem"),
        "{err}"
    );

    let plain = EtcdOptions {
        endpoints: vec![server.endpoint().replace("https://", "http://")],
        cafile: None,
        certfile: None,
        keyfile: None,
        ..server.options(&prefix)
    };
    let err = config_error(&plain).await;
    assert!(err.to_string().contains(&plain.endpoints[0]), "{err}");
}

#[tokio::test]
async fn an_unreachable_etcd_fails_fast_and_names_the_endpoint() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let options = EtcdOptions {
        endpoints: vec![endpoint.clone()],
        request_timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    };
    let err = config_error(&options).await;
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&endpoint), "{err}");
}

#[tokio::test]
async fn a_dropped_watch_stops_its_task() {
    let server = EtcdServer::start();
    let (registry, _) = setup(&server, CONFIG).await;
    registry.network_config().await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let mut updates = registry.watch_leases(WatchScope::AllLeases);
    assert!(matches!(next(&mut updates).await, WatchUpdate::Snapshot(_)));
    assert!(metrics.num_alive_tasks() > before);
    drop(updates);
    eventually("the watch task ends", || {
        metrics.num_alive_tasks() == before
    })
    .await;
}

#[tokio::test]
async fn username_and_password_are_used() {
    let server = EtcdServer::start();
    let prefix = EtcdServer::unique_prefix();
    server.put(&format!("{prefix}/config"), CONFIG);
    server.etcdctl(&["user", "add", "root:s3cret"]);
    server.etcdctl(&["user", "grant-role", "root", "root"]);
    server.etcdctl(&["auth", "enable"]);
    let with = |password: &str| EtcdOptions {
        username: Some("root".into()),
        password: Some(password.into()),
        ..server.options(&prefix)
    };
    let registry = EtcdRegistry::connect(&with("s3cret")).await.unwrap();
    assert_eq!(
        registry
            .network_config()
            .await
            .unwrap()
            .v4()
            .unwrap()
            .network,
        net("10.3.0.0/16")
    );
    let err = EtcdRegistry::connect(&with("wrong"))
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, RegistryError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    let anonymous = EtcdRegistry::connect(&server.options(&prefix))
        .await
        .unwrap();
    let err = anonymous.network_config().await.unwrap_err();
    assert!(matches!(err, RegistryError::Refused { .. }), "{err:?}");
}

/// The value of a 20,000-peer cluster's leases, and keys too large to receive in one response:
/// the listing pages through them at one revision (issue 24: a 4 MiB response limit stopped
/// every agent that listed).
#[tokio::test]
async fn listing_pages_through_20000_leases_and_keys_too_large_for_one_response() {
    let server = EtcdServer::start_tls();
    let (registry, prefix) = setup(
        &server,
        r#"{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}"#,
    )
    .await;
    let subnets = format!("{prefix}/subnets");
    let mut kvs: Vec<(String, String)> = (0..20_000u32)
        .map(|i| {
            let key = format!("{subnets}/10.{}.{}.0-24", i / 256, i % 256);
            (key, lease_json(u8::try_from(i % 250).unwrap() + 1))
        })
        .collect();
    // 100 values of 64 KiB among them, in key order between the leases: 6.4 MB in one page of
    // keys would exceed the client's 4 MiB; each is skipped, by name.
    let big = "x".repeat(64 * 1024);
    kvs.extend((0..100u32).map(|i| (format!("{subnets}/10.{}.0.128-25", i * 2), big.clone())));
    server.put_many(kvs);

    let leases = registry.list_leases().await.expect("the listing completes");
    assert_eq!(leases.len(), 20_000);
    let distinct: BTreeSet<String> = leases.iter().map(|l| l.lease.key.to_string()).collect();
    assert_eq!(distinct.len(), 20_000, "no lease twice across pages");
    let too_large = subnet::ignored_keys().totals()[&subnet::IgnoreReason::TooLarge];
    assert!(too_large >= 100, "every oversized key counted: {too_large}");
}
