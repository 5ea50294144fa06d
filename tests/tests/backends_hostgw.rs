//! host-gw backend and reconciler against the real kernel, in a network namespace.

use backends::{Backend, Reconciler, RouteStyle};
use flanneld_tests::dataplane::{
    backend_config, eth0, gone, host_with_eth0, in_ns, own_lease, peer, peers, route_of, v4_network,
};
use serde_json::json;

const OWN: &str = "10.5.1.0/24";

#[test]
fn hostgw_routes_are_reconciled_like_ip_route_shows_them() {
    let host = &host_with_eth0("hgw", "192.168.50.1/24");
    in_ns(host, |nl| async move {
        let cfg = backend_config(json!({"Type": "host-gw"}));
        let mut backend = Backend::new(
            &cfg,
            eth0("192.168.50.1"),
            Some("192.168.50.1".parse().unwrap()),
            None,
        )
        .unwrap();
        let attrs = backend.init(&nl).await.unwrap();
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.168.50.1","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        assert_eq!(backend.mtu(), 1500);
        let public = "192.168.50.1".parse().unwrap();
        let network = v4_network("10.5.0.0/16");
        backend
            .configure(&nl, &own_lease(OWN, public), network)
            .await
            .unwrap();
        let mut rec = Reconciler::new(nl);

        let mut set = peers(
            OWN,
            &[
                peer("10.5.2.0/24", "192.168.50.2", "host-gw", None),
                peer("10.5.3.0/24", "192.168.50.3", "host-gw", None),
                peer("10.5.8.0/24", "192.168.50.8", "vxlan", None),
                peer("10.5.10.0/24", "172.16.0.10", "vxlan", None),
            ],
        );
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.added, report.converged), (3, true), "{report:?}");
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 192.168.50.2 dev eth0 proto 70"
        );
        assert_eq!(
            route_of(host, "10.5.3.0/24"),
            "10.5.3.0/24 via 192.168.50.3 dev eth0 proto 70"
        );
        // During a switch a vxlan peer on this LAN is routed directly; one elsewhere cannot be.
        assert_eq!(
            route_of(host, "10.5.8.0/24"),
            "10.5.8.0/24 via 192.168.50.8 dev eth0 proto 70"
        );
        assert_eq!(
            route_of(host, "10.5.10.0/24"),
            "",
            "a vxlan peer off this LAN is not routed by host-gw"
        );

        // Idempotent: nothing to do, nothing written.
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.writes(), report.converged), (0, true), "{report:?}");

        // A deleted route comes back.
        host.sh("ip route del 10.5.2.0/24");
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.added, report.converged), (1, true), "{report:?}");
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 192.168.50.2 dev eth0 proto 70"
        );

        // A wrong route of ours is replaced.
        host.sh("ip route replace 10.5.3.0/24 via 192.168.50.99 dev eth0 proto 70");
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.replaced, report.converged), (1, true), "{report:?}");
        assert_eq!(
            route_of(host, "10.5.3.0/24"),
            "10.5.3.0/24 via 192.168.50.3 dev eth0 proto 70"
        );

        // A stale tagged route goes; an untagged foreign one stays, and so does a tagged one
        // outside our cluster network (another flanneld-rs instance's).
        host.sh("ip route add 10.5.9.0/24 via 192.168.50.9 dev eth0 proto 70");
        host.sh("ip route add 10.77.0.0/16 via 192.168.50.254 dev eth0");
        host.sh("ip route add 10.6.9.0/24 via 192.168.50.9 dev eth0 proto 70");
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.deleted, report.converged), (1, true), "{report:?}");
        assert_eq!(route_of(host, "10.5.9.0/24"), "");
        assert_eq!(
            route_of(host, "10.77.0.0/16"),
            "10.77.0.0/16 via 192.168.50.254 dev eth0"
        );
        assert_eq!(
            route_of(host, "10.6.9.0/24"),
            "10.6.9.0/24 via 192.168.50.9 dev eth0 proto 70"
        );

        // An identical route left by Go flanneld (proto boot) is adopted.
        host.sh("ip route add 10.5.4.0/24 via 192.168.50.4 dev eth0 proto boot");
        set.apply(&peer("10.5.4.0/24", "192.168.50.4", "host-gw", None));
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!(
            (report.replaced, report.added, report.converged),
            (1, 0, true),
            "{report:?}"
        );
        assert_eq!(
            route_of(host, "10.5.4.0/24"),
            "10.5.4.0/24 via 192.168.50.4 dev eth0 proto 70"
        );

        // A different untagged route in the way is never touched, and named in the error.
        host.sh("ip route add 10.5.6.0/24 via 192.168.50.66 dev eth0");
        set.apply(&peer("10.5.6.0/24", "192.168.50.6", "host-gw", None));
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert!(!report.converged);
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert!(
            report.errors[0]
                .message
                .contains("ip route del 10.5.6.0/24"),
            "{report:?}"
        );
        assert_eq!(
            route_of(host, "10.5.6.0/24"),
            "10.5.6.0/24 via 192.168.50.66 dev eth0"
        );
        host.sh("ip route del 10.5.6.0/24");
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert!(report.converged, "{report:?}");

        // A removed peer loses its route.
        set.apply(&gone("10.5.3.0/24"));
        let report = rec.reconcile(&backend.desired(&set)).await;
        assert_eq!((report.deleted, report.converged), (1, true), "{report:?}");
        assert_eq!(route_of(host, "10.5.3.0/24"), "");
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 192.168.50.2 dev eth0 proto 70"
        );
    });
}

#[test]
fn hostgw_peer_not_on_link_is_reported_with_the_fix() {
    let host = &host_with_eth0("hgwu", "192.168.51.1/24");
    in_ns(host, |nl| async move {
        let cfg = backend_config(json!({"Type": "host-gw"}));
        let mut backend = Backend::new(
            &cfg,
            eth0("192.168.51.1"),
            Some("192.168.51.1".parse().unwrap()),
            None,
        )
        .unwrap();
        backend.init(&nl).await.unwrap();
        let mut rec = Reconciler::new(nl);
        let set = peers(
            OWN,
            &[
                peer("10.5.2.0/24", "192.168.51.2", "host-gw", None),
                peer("10.5.5.0/24", "10.99.0.5", "host-gw", None),
            ],
        );
        for _ in 0..2 {
            let report = rec.reconcile(&backend.desired(&set)).await;
            assert!(!report.converged, "{report:?}");
            assert_eq!(report.errors.len(), 1, "{report:?}");
            let msg = &report.errors[0].message;
            assert!(
                msg.contains("10.5.5.0/24") && msg.contains("10.99.0.5"),
                "{msg}"
            );
            assert!(
                msg.contains("not on-link") && msg.contains("DirectRouting"),
                "{msg}"
            );
        }
        assert_eq!(
            route_of(host, "10.5.2.0/24"),
            "10.5.2.0/24 via 192.168.51.2 dev eth0 proto 70"
        );
        assert_eq!(route_of(host, "10.5.5.0/24"), "");
    });
}

#[test]
fn unknown_types_and_nat_are_refused_with_clear_errors() {
    let err = Backend::new(
        &backend_config(json!({"Type": "udp"})),
        eth0("192.168.52.1"),
        Some("192.168.52.1".parse().unwrap()),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"udp\"") && err.contains("host-gw") && err.contains("vxlan"),
        "{err}"
    );
    let err = Backend::new(
        &backend_config(json!({"Type": "host-gw"})),
        eth0("192.168.52.1"),
        Some("1.2.3.4".parse().unwrap()),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("your PublicIP differs from interface IP"),
        "{err}"
    );
}

/// A host-gw backend on eth0 with address `ip`, initialised, installing routes in `style`.
async fn hostgw_on_eth0(nl: &backends::Netlink, ip: &str, style: RouteStyle) -> Backend {
    let cfg = backend_config(json!({"Type": "host-gw"}));
    let public = Some(ip.parse().unwrap());
    let mut backend = Backend::new(&cfg, eth0(ip), public, None)
        .unwrap()
        .with_route_style(style);
    backend.init(nl).await.unwrap();
    backend
}

/// Subscribes to notifications, then programs `set` with `backend`; proves that our own writes
/// (protocol 70) were dropped by the socket filters and returns the subscription.
async fn subscribed_then_programmed(
    nl: backends::Netlink,
    backend: &Backend,
    set: &subnet::PeerSet,
) -> backends::Notifications {
    let mut notes = backends::Notifications::subscribe(false).unwrap();
    let report = Reconciler::new(nl).reconcile(&backend.desired(set)).await;
    assert!(report.converged, "{report:?}");
    assert_eq!(drain(&mut notes).await, vec![]);
    notes
}

/// Notifications until none came for 300 ms.
async fn drain(notes: &mut backends::Notifications) -> Vec<backends::Notification> {
    let mut seen = Vec::new();
    while let Ok(Some(n)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), notes.next()).await
    {
        seen.push(n);
    }
    seen
}

#[test]
fn route_notifications_report_removals_of_ours_and_routes_of_others_not_our_own_adds() {
    use backends::Notification;
    let host = &host_with_eth0("hgn", "192.168.52.1/24");
    in_ns(host, |nl| async move {
        let backend = hostgw_on_eth0(&nl, "192.168.52.1", RouteStyle::Classic).await;
        let set = peers(
            OWN,
            &[
                peer("10.5.2.0/24", "192.168.52.2", "host-gw", None),
                peer("10.5.3.0/24", "192.168.52.3", "host-gw", None),
            ],
        );
        let mut notes = subscribed_then_programmed(nl, &backend, &set).await;

        // `ip route replace` with another protocol reports only the new route.
        host.sh("ip route replace 10.5.2.0/24 via 192.168.52.9 dev eth0");
        host.sh("ip route del 10.5.3.0/24");
        let dst = |s: &str| s.parse().unwrap();
        assert_eq!(
            drain(&mut notes).await,
            vec![
                Notification::ForeignRoute {
                    dst: dst("10.5.2.0/24")
                },
                Notification::RouteRemoved {
                    dst: dst("10.5.3.0/24")
                },
            ]
        );
        let replaced = Notification::ForeignRoute {
            dst: dst("10.5.2.0/24"),
        };
        assert_eq!(backend.reaction(&replaced), backends::Reaction::Reconcile);
    });
}

#[test]
fn nexthop_notifications_report_removed_objects_of_ours_and_objects_of_others() {
    use backends::Notification;
    let host = &host_with_eth0("hgx", "192.168.53.1/24");
    in_ns(host, |nl| async move {
        let backend = hostgw_on_eth0(&nl, "192.168.53.1", RouteStyle::Nexthop).await;
        let set = peers(OWN, &[peer("10.5.2.0/24", "192.168.53.2", "host-gw", None)]);
        let mut notes = subscribed_then_programmed(nl, &backend, &set).await;

        // Deleting the object takes its route without a route notification: the object's
        // removal is what reports it.
        let id = u32::from("192.168.53.2".parse::<std::net::Ipv4Addr>().unwrap());
        host.sh(&format!("ip nexthop del id {id}"));
        host.sh("ip nexthop add id 99 via 192.168.53.9 dev eth0");
        assert_eq!(
            drain(&mut notes).await,
            vec![
                Notification::NexthopChanged { id },
                Notification::NexthopChanged { id: 99 },
            ]
        );
        let removed = Notification::NexthopChanged { id };
        assert_eq!(backend.reaction(&removed), backends::Reaction::Reconcile);
    });
}
