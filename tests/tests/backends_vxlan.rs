//! vxlan backend against the real kernel, in network namespaces: device, per-peer neighbour /
//! FDB / route, removal, VtepMAC change, DirectRouting, device deletion noticed and repaired,
//! restart, and a ping between two hosts across a router.

use std::time::Duration;

use backends::{
    Backend, DeviceChange, Drift, Netlink, Notification, Notifications, Reaction, Reconciler,
};
use flanneld_tests::dataplane::{
    backend_config, eth0, gone, host_with_eth0, in_ns, own_lease, peer, peers, route_of, v4_network,
};
use flanneld_tests::netns::Netns;
use serde_json::{json, Value};
use subnet::LeaseAttrs;

const OWN: &str = "10.5.1.0/24";
const MAC2: &str = "02:aa:00:00:00:02";
const MAC3: &str = "02:aa:00:00:00:03";

fn vtep(mac: &str) -> Option<Value> {
    Some(json!({"VNI": 1, "VtepMAC": mac}))
}

fn vtep_mac(attrs: &LeaseAttrs) -> String {
    attrs.backend_data.as_ref().unwrap().value()["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Builds, inits and configures a vxlan backend on `eth0` with address `ip`.
async fn vxlan_backend(nl: &Netlink, raw: Value, ip: &str) -> (Backend, LeaseAttrs) {
    let public = ip.parse().unwrap();
    let mut backend = Backend::new(&backend_config(raw), eth0(ip), Some(public), None).unwrap();
    let attrs = backend.init(nl).await.unwrap();
    backend
        .configure(nl, &own_lease(OWN, public), v4_network("10.5.0.0/16"))
        .await
        .unwrap();
    (backend, attrs)
}

fn link_index(ns: &Netns, dev: &str) -> String {
    ns.sh(&format!("cat /sys/class/net/{dev}/ifindex"))
        .trim()
        .to_string()
}

#[test]
fn vxlan_device_and_peer_entries() {
    let host = &host_with_eth0("vx", "192.168.60.1/24");
    in_ns(host, |nl| async move {
        let public = "192.168.60.1".parse().unwrap();
        let mut backend = Backend::new(
            &backend_config(json!({"Type": "vxlan"})),
            eth0("192.168.60.1"),
            Some(public),
            None,
        )
        .unwrap();
        let attrs = backend.init(&nl).await.unwrap();
        let mac = vtep_mac(&attrs);
        assert_eq!(
            attrs.to_json(),
            format!(
                r#"{{"PublicIP":"192.168.60.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
            )
        );
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 3, 2, "locally administered unicast: {mac}");
        assert_eq!(backend.mtu(), 1450);

        let link = host.sh("ip -d link show flannel.1");
        for want in [
            "mtu 1450",
            &format!("link/ether {mac}"),
            "vxlan id 1 local 192.168.60.1 dev eth0",
            "dstport 8472",
            "nolearning",
        ] {
            assert!(link.contains(want), "{want:?} not in {link}");
        }
        assert!(!link.contains("gbp"), "{link}");

        // Addresses inside the cluster network other than ours go; unrelated ones stay.
        host.sh(
            "ip addr add 10.5.77.1/24 dev flannel.1 && ip addr add 172.31.0.1/32 dev flannel.1",
        );
        backend
            .configure(&nl, &own_lease(OWN, public), v4_network("10.5.0.0/16"))
            .await
            .unwrap();
        let addrs = host.sh("ip -4 addr show dev flannel.1");
        assert!(addrs.contains("inet 10.5.1.0/32"), "{addrs}");
        assert!(!addrs.contains("10.5.77.1"), "{addrs}");
        assert!(addrs.contains("172.31.0.1/32"), "{addrs}");
        assert!(host.sh("ip link show flannel.1").contains(",UP"));

        let mut rec = Reconciler::new(nl.clone());
        let mut set = peers(
            OWN,
            &[
                peer("10.5.2.0/24", "192.168.60.2", "vxlan", vtep(MAC2)),
                // A v0.11 lease: no VNI.
                peer(
                    "10.5.3.0/24",
                    "172.16.0.3",
                    "vxlan",
                    Some(json!({"VtepMAC": MAC3})),
                ),
            ],
        );
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.added, report.converged), (6, true), "{report:?}");
        let neigh = host.sh("ip neigh show dev flannel.1");
        assert!(
            neigh.contains(&format!("10.5.2.0 lladdr {MAC2} PERMANENT")),
            "{neigh}"
        );
        assert!(
            neigh.contains(&format!("10.5.3.0 lladdr {MAC3} PERMANENT")),
            "{neigh}"
        );
        let fdb = host.sh("bridge fdb show dev flannel.1");
        assert!(
            fdb.contains(&format!("{MAC2} dst 192.168.60.2 self permanent")),
            "{fdb}"
        );
        assert!(
            fdb.contains(&format!("{MAC3} dst 172.16.0.3 self permanent")),
            "{fdb}"
        );
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 10.5.2.0 dev flannel.1 proto 70 onlink"
        );
        assert_eq!(
            route_of(host, "10.5.3.0/24"),
            "10.5.3.0/24 via 10.5.3.0 dev flannel.1 proto 70 onlink"
        );

        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.writes(), report.converged), (0, true), "{report:?}");

        // A changed VtepMAC replaces the neighbour and drops the old FDB entry.
        let new_mac = "02:aa:00:00:00:22";
        set.apply(&peer("10.5.2.0/24", "192.168.60.2", "vxlan", vtep(new_mac)));
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert!(report.converged, "{report:?}");
        assert!(host
            .sh("ip neigh show dev flannel.1")
            .contains(&format!("10.5.2.0 lladdr {new_mac} PERMANENT")));
        let fdb = host.sh("bridge fdb show dev flannel.1");
        assert!(
            fdb.contains(&format!("{new_mac} dst 192.168.60.2 self permanent")),
            "{fdb}"
        );
        assert!(!fdb.contains(MAC2), "{fdb}");

        // Removal deletes all three.
        set.apply(&gone("10.5.3.0/24"));
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.deleted, report.converged), (3, true), "{report:?}");
        assert!(!host.sh("ip neigh show dev flannel.1").contains("10.5.3.0"));
        assert!(!host.sh("bridge fdb show dev flannel.1").contains(MAC3));
        assert_eq!(route_of(host, "10.5.3.0/24"), "");

        // Stale permanent entries on our device (e.g. from a previous run) go too.
        host.sh("ip neigh add 10.5.99.0 lladdr 02:bb:00:00:00:99 dev flannel.1 nud permanent");
        host.sh(
            "bridge fdb append 02:bb:00:00:00:99 dev flannel.1 dst 192.168.60.99 self permanent",
        );
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!(
            (report.deleted, report.converged),
            (2, true),
            "{report:?}\n{}\n{}",
            host.sh("ip neigh show dev flannel.1"),
            host.sh("bridge -d fdb show dev flannel.1")
        );
        assert!(!host.sh("ip neigh show dev flannel.1").contains("10.5.99.0"));
        assert!(!host
            .sh("bridge fdb show dev flannel.1")
            .contains("02:bb:00:00:00:99"));
    });
}

#[test]
fn vxlan_options_reach_the_device() {
    let host = &host_with_eth0("vxo", "192.168.62.1/24");
    in_ns(host, |nl| async move {
        let raw = json!({"Type": "vxlan", "VNI": 42, "Port": 4789, "GBP": true, "Learning": true, "MTU": 1400});
        let (backend, attrs) = vxlan_backend(&nl, raw, "192.168.62.1").await;
        assert_eq!(attrs.backend_data.as_ref().unwrap().value()["VNI"], 42);
        assert_eq!(backend.mtu(), 1350);
        let link = host.sh("ip -d link show flannel.42");
        for want in [
            "mtu 1350",
            "vxlan id 42 local 192.168.62.1 dev eth0",
            "dstport 4789",
            "gbp",
        ] {
            assert!(link.contains(want), "{want:?} not in {link}");
        }
        assert!(!link.contains("nolearning"), "{link}");
    });
}

#[test]
fn vxlan_direct_routing_splits_peers_and_moves_them() {
    let host = &host_with_eth0("vxd", "192.168.61.1/24");
    in_ns(host, |nl| async move {
        let raw = json!({"Type": "vxlan", "VNI": 2, "DirectRouting": true});
        let (backend, _) = vxlan_backend(&nl, raw, "192.168.61.1").await;
        let mut rec = Reconciler::new(nl.clone());
        let mut set = peers(
            OWN,
            &[
                peer("10.5.2.0/24", "192.168.61.2", "vxlan", vtep(MAC2)),
                peer("10.5.3.0/24", "172.16.0.3", "vxlan", vtep(MAC3)),
            ],
        );
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert!(report.converged, "{report:?}");
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 192.168.61.2 dev eth0 proto 70"
        );
        assert_eq!(
            route_of(host, "10.5.3.0/24"),
            "10.5.3.0/24 via 10.5.3.0 dev flannel.2 proto 70 onlink"
        );
        assert!(!host.sh("ip neigh show dev flannel.2").contains("10.5.2.0"));

        // The on-link peer moves behind a router: the direct route is replaced by the overlay.
        set.apply(&peer("10.5.2.0/24", "172.16.0.2", "vxlan", vtep(MAC2)));
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert!(report.converged, "{report:?}");
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 10.5.2.0 dev flannel.2 proto 70 onlink"
        );
        assert!(host
            .sh("bridge fdb show dev flannel.2")
            .contains(&format!("{MAC2} dst 172.16.0.2 self permanent")));

        // And back: the overlay entries go.
        set.apply(&peer("10.5.2.0/24", "192.168.61.2", "vxlan", vtep(MAC2)));
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert!(report.converged, "{report:?}");
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 192.168.61.2 dev eth0 proto 70"
        );
        assert!(!host.sh("ip neigh show dev flannel.2").contains("10.5.2.0"));
        assert!(!host.sh("bridge fdb show dev flannel.2").contains(MAC2));
    });
}

#[test]
fn vxlan_device_deleted_is_noticed_and_restored_and_restart_reuses_it() {
    let host = &host_with_eth0("vxr", "192.168.63.1/24");
    in_ns(host, |nl| async move {
        let raw = json!({"Type": "vxlan"});
        let (mut backend, attrs) = vxlan_backend(&nl, raw.clone(), "192.168.63.1").await;
        let mac = vtep_mac(&attrs);
        let mut rec = Reconciler::new(nl.clone());
        let set = peers(
            OWN,
            &[peer("10.5.2.0/24", "192.168.63.2", "vxlan", vtep(MAC2))],
        );
        assert!(rec.reconcile(&backend.desired(&set)).await.converged);

        let mut notes = Notifications::subscribe(false).unwrap();
        host.sh("ip link del flannel.1");
        let removed = link_event(&mut notes, "flannel.1", true).await;
        assert_eq!(backend.reaction(&removed), Reaction::Setup);

        let again = backend.init(&nl).await.unwrap();
        assert_eq!(again, attrs, "the published VtepMAC stays valid");
        backend
            .configure(
                &nl,
                &own_lease(OWN, "192.168.63.1".parse().unwrap()),
                v4_network("10.5.0.0/16"),
            )
            .await
            .unwrap();
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.added, report.converged), (3, true), "{report:?}");
        assert!(host
            .sh("ip link show flannel.1")
            .contains(&format!("link/ether {mac}")));
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 10.5.2.0 dev flannel.1 proto 70 onlink"
        );

        // Restart: a new instance reuses the device and its MAC; nothing to write.
        let index = link_index(host, "flannel.1");
        let (restarted, attrs2) = vxlan_backend(&nl, raw, "192.168.63.1").await;
        assert_eq!(vtep_mac(&attrs2), mac);
        assert_eq!(link_index(host, "flannel.1"), index);
        let report = Reconciler::new(nl.clone())
            .reconcile(&restarted.desired(&set))
            .await;
        assert_eq!((report.writes(), report.converged), (0, true), "{report:?}");

        // A real mismatch (port) recreates the device, keeping the MAC.
        let (_, attrs3) =
            vxlan_backend(&nl, json!({"Type": "vxlan", "Port": 4789}), "192.168.63.1").await;
        assert_eq!(vtep_mac(&attrs3), mac);
        assert_ne!(link_index(host, "flannel.1"), index);
        assert!(host
            .sh("ip -d link show flannel.1")
            .contains("dstport 4789"));
    });
}

/// Waits (at most 5 s) for a link notification about `name`.
async fn link_event(notes: &mut Notifications, name: &str, removed: bool) -> Notification {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(n) = notes.next().await {
            if let Notification::Link {
                removed: r,
                name: Some(nm),
                ..
            } = &n
            {
                if nm == name && *r == removed {
                    return n;
                }
            }
        }
        panic!("notification socket closed");
    })
    .await
    .unwrap_or_else(|_| panic!("no link notification for {name} (removed: {removed})"))
}

/// Collects notifications until none came for 300 ms.
async fn drain(notes: &mut Notifications) -> Vec<Notification> {
    let mut seen = Vec::new();
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(300), notes.next()).await {
        seen.push(n);
    }
    seen
}

/// A difference of the device `flannel.1`.
fn device(change: DeviceChange) -> Drift {
    Drift::Device {
        name: "flannel.1".into(),
        change,
    }
}

#[test]
fn vxlan_drift_tells_changes_under_us_from_the_echo_of_our_own_setup() {
    let host = &host_with_eth0("vxc", "192.168.65.1/24");
    in_ns(host, |nl| async move {
        let public = "192.168.65.1".parse().unwrap();
        let own = own_lease(OWN, public);
        let network = v4_network("10.5.0.0/16");
        let (mut backend, attrs) =
            vxlan_backend(&nl, json!({"Type": "vxlan"}), "192.168.65.1").await;
        let mac = vtep_mac(&attrs);
        assert_eq!(backend.drift(&nl).await, Vec::<Drift>::new());

        let mut notes = Notifications::subscribe(false).unwrap();
        host.sh("ip link del flannel.1");
        let removed = link_event(&mut notes, "flannel.1", true).await;
        assert_eq!(backend.reaction(&removed), Reaction::Setup);
        let gone = backend.drift(&nl).await;
        assert_eq!(gone, [device(DeviceChange::Gone)]);
        assert_eq!(gone[0].to_string(), "flannel.1 is gone");
        drain(&mut notes).await;

        // Setup recreates the device; the kernel reports its writes, but nothing differs.
        backend.init(&nl).await.unwrap();
        backend.configure(&nl, &own, network).await.unwrap();
        let echo = drain(&mut notes).await;
        assert!(
            echo.iter().any(|n| backend.reaction(n) == Reaction::Setup),
            "{echo:?}"
        );
        assert_eq!(backend.drift(&nl).await, Vec::<Drift>::new());

        // Setup that changes nothing writes nothing, so the kernel reports nothing.
        backend.init(&nl).await.unwrap();
        backend.configure(&nl, &own, network).await.unwrap();
        let echo = drain(&mut notes).await;
        assert!(
            echo.iter().all(|n| backend.reaction(n) == Reaction::Ignore),
            "{echo:?}"
        );

        // Changes under us are differences, and setup repairs them.
        host.sh(
            "ip link set flannel.1 down && ip link set flannel.1 address 02:bb:00:00:00:01 && \
             ip addr del 10.5.1.0/32 dev flannel.1 && ip addr add 10.5.9.1/24 dev flannel.1 && \
             ip link set eth0 mtu 1400",
        );
        let changed = backend.drift(&nl).await;
        assert_eq!(
            changed,
            [
                Drift::InterfaceMtu {
                    name: "eth0".into(),
                    found: 1400,
                    was: 1500
                },
                device(DeviceChange::Down),
                device(DeviceChange::Mac {
                    found: Some("02:bb:00:00:00:01".parse().unwrap()),
                    want: mac.parse().unwrap()
                }),
                device(DeviceChange::AddressMissing("10.5.1.0/32".parse().unwrap())),
                device(DeviceChange::ForeignAddress("10.5.9.1/24".parse().unwrap())),
            ]
        );
        assert_eq!(
            changed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "interface eth0 has MTU 1400, was 1500".to_string(),
                "flannel.1: it is down".into(),
                format!("flannel.1: MAC is 02:bb:00:00:00:01, want {mac}"),
                "flannel.1: address 10.5.1.0/32 is missing".into(),
                "flannel.1: it has address 10.5.9.1/24".into(),
            ]
        );
        assert_eq!(backend.init(&nl).await.unwrap(), attrs);
        backend.configure(&nl, &own, network).await.unwrap();
        assert_eq!(backend.drift(&nl).await, Vec::<Drift>::new());
        assert!(host.sh("ip link show flannel.1").contains("mtu 1350"));
    });
}

#[test]
fn vxlan_underlay_gone_and_back_is_repaired() {
    let host = &host_with_eth0("vxu", "192.168.64.1/24");
    in_ns(host, |nl| async move {
        let (mut backend, attrs) =
            vxlan_backend(&nl, json!({"Type": "vxlan"}), "192.168.64.1").await;
        let mut rec = Reconciler::new(nl.clone());
        let set = peers(
            OWN,
            &[peer("10.5.2.0/24", "192.168.64.2", "vxlan", vtep(MAC2))],
        );
        assert!(rec.reconcile(&backend.desired(&set)).await.converged);

        let mut notes = Notifications::subscribe(false).unwrap();
        host.sh("ip link del eth0");
        let n = link_event(&mut notes, "eth0", true).await;
        assert_eq!(backend.reaction(&n), Reaction::Setup);
        let err = backend.init(&nl).await.unwrap_err();
        assert!(err.to_string().contains("eth0"), "{err}");
        assert!(!host
            .try_exec("ip", &["link", "show", "flannel.1"])
            .status
            .success());

        host.sh(
            "ip link add eth0 type veth peer name eth0p && ip link set eth0p up && \
             ip link set eth0 up && ip addr add 192.168.64.1/24 dev eth0",
        );
        let n = link_event(&mut notes, "eth0", false).await;
        assert_eq!(backend.reaction(&n), Reaction::Setup);
        assert_eq!(
            backend.init(&nl).await.unwrap(),
            attrs,
            "same VtepMAC after recreation"
        );
        backend
            .configure(
                &nl,
                &own_lease(OWN, "192.168.64.1".parse().unwrap()),
                v4_network("10.5.0.0/16"),
            )
            .await
            .unwrap();
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert!(report.converged, "{report:?}");
        assert!(host
            .sh("ip -d link show flannel.1")
            .contains("local 192.168.64.1 dev eth0"));
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 10.5.2.0 dev flannel.1 proto 70 onlink"
        );
        assert!(host
            .sh("bridge fdb show dev flannel.1")
            .contains(&format!("{MAC2} dst 192.168.64.2 self permanent")));
    });
}

/// A host on its own LAN behind `router`: `eth0` with `lan_ip`, default route via `gw`, and a
/// "pod" address `pod_ip` on a veth standing in for cni0.
fn routed_host(
    role: &str,
    router: &Netns,
    router_if: &str,
    lan_ip: &str,
    gw: &str,
    pod_ip: &str,
) -> Netns {
    let host = Netns::new(role);
    router.link_to(router_if, &host, "eth0");
    host.sh(&format!(
        "ip addr add {lan_ip} dev eth0 && ip route add default via {gw} && \
         ip link add cni0 type veth peer name cni0p && ip link set cni0p up && \
         ip link set cni0 up && ip addr add {pod_ip} dev cni0"
    ));
    host
}

#[test]
fn vxlan_two_hosts_across_a_router_ping() {
    let router = Netns::new("vxrt");
    router.sh("sysctl -qw net.ipv4.ip_forward=1");
    let a = routed_host(
        "vxa",
        &router,
        "lana",
        "192.168.80.2/24",
        "192.168.80.1",
        "10.5.1.1/24",
    );
    let b = routed_host(
        "vxb",
        &router,
        "lanb",
        "192.168.81.2/24",
        "192.168.81.1",
        "10.5.2.1/24",
    );
    router.sh("ip addr add 192.168.80.1/24 dev lana && ip addr add 192.168.81.1/24 dev lanb");

    let setup = |ns: &Netns, ip: &'static str, own: &'static str| {
        in_ns(ns, |nl| async move {
            let public = ip.parse().unwrap();
            let mut backend = Backend::new(
                &backend_config(json!({"Type": "vxlan", "DirectRouting": true})),
                eth0(ip),
                Some(public),
                None,
            )
            .unwrap();
            let attrs = backend.init(&nl).await.unwrap();
            let mut lease = own_lease(own, public);
            lease.attrs = attrs.clone();
            backend
                .configure(&nl, &lease, v4_network("10.5.0.0/16"))
                .await
                .unwrap();
            (backend, lease)
        })
    };
    let (backend_a, lease_a) = setup(&a, "192.168.80.2", "10.5.1.0/24");
    let (backend_b, lease_b) = setup(&b, "192.168.81.2", "10.5.2.0/24");
    let all = [
        subnet::LeaseEvent::Put(lease_a.clone()),
        subnet::LeaseEvent::Put(lease_b.clone()),
    ];
    for (ns, backend, own) in [
        (&a, &backend_a, "10.5.1.0/24"),
        (&b, &backend_b, "10.5.2.0/24"),
    ] {
        let set = peers(own, &all);
        let report = in_ns(ns, |nl| async move {
            Reconciler::new(nl).reconcile(&backend.desired(&set)).await
        });
        assert!(report.converged, "{report:?}");
    }
    // Not on-link, so the overlay is used despite DirectRouting.
    assert_eq!(
        route_of(&a, "10.5.2.0/24"),
        "10.5.2.0/24 via 10.5.2.0 dev flannel.1 proto 70 onlink"
    );
    let ping = a.try_exec("ping", &["-c2", "-W2", "-I", "10.5.1.1", "10.5.2.1"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // A full-size don't-fragment packet fits the 1450 MTU: 1450 - 20 (IP) - 8 (ICMP).
    let big = a.try_exec(
        "ping",
        &[
            "-c1", "-W2", "-M", "do", "-s", "1422", "-I", "10.5.1.1", "10.5.2.1",
        ],
    );
    assert!(
        big.status.success(),
        "{}",
        String::from_utf8_lossy(&big.stdout)
    );
}
