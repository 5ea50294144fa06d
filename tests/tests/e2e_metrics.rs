//! End to end, `/metrics` (issue 13): scraped from a host's health port and parsed with a
//! Prometheus text parser; the counters move when a peer is added, when a route deleted by hand
//! is repaired, and when etcd stops.

use std::time::Duration;

use flanneld_tests::cluster::{metric_value as value, wait_for, Cluster};

const CONFIG: &str = r#"{"Network":"10.46.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// Waits until `metric` (with `labels`) on host `i` passes `check`; returns its value.
fn wait_metric(
    c: &Cluster,
    i: usize,
    metric: &str,
    labels: &[(&str, &str)],
    check: impl Fn(f64) -> bool,
) -> f64 {
    wait_for(
        &format!("{metric}{labels:?} on host {i}"),
        Duration::from_secs(30),
        || {
            let v = value(&c.scrape(i), metric, labels);
            check(v).then_some(v)
        },
    )
}

#[test]
fn metrics_parse_and_move_with_peers_repairs_and_etcd() {
    let mut c = Cluster::start(2, CONFIG, &["--ip-masq", "--iptables-resync=1"]);
    let subnets = [c.wait_subnet(0), c.wait_subnet(1)];
    c.wait_ready(0);
    let first = c.scrape(0);
    let version = concat!("v", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        value(&first, "flannel_build_info", &[("version", version)]),
        1.0
    );
    let own = Cluster::network_of(&subnets[0]);
    assert_eq!(
        value(&first, "flannel_lease_info", &[("subnet", &own)]),
        1.0
    );
    assert!(value(&first, "flannel_lease_expires_in_seconds", &[]) > 3600.0);
    assert!(
        value(
            &first,
            "flannel_etcd_requests_total",
            &[("op", "list_leases")]
        ) >= 1.0
    );
    assert!(
        value(
            &first,
            "flannel_reconcile_runs_total",
            &[("cause", "start")]
        ) >= 1.0
    );
    wait_metric(&c, 0, "flannel_peers", &[("state", "known")], |v| v == 1.0);
    wait_metric(&c, 0, "flannel_netfilter_checks_total", &[], |v| v >= 2.0);
    let route_adds = [("kind", "route"), ("op", "add")];
    let adds = value(&c.scrape(0), "flannel_reconcile_changes_total", &route_adds);
    assert!(adds >= 1.0, "the first peer's route");

    // A peer joins: one more known and programmed peer, one more route written.
    let third = c.add_host("192.168.100.13");
    c.start_agent(third);
    let new_subnet = Cluster::network_of(&c.wait_subnet(third));
    wait_metric(&c, 0, "flannel_peers", &[("state", "programmed")], |v| {
        v == 2.0
    });
    wait_metric(
        &c,
        0,
        "flannel_peers_by_backend",
        &[("backend", "host-gw")],
        |v| v == 2.0,
    );
    let after_join = wait_metric(&c, 0, "flannel_reconcile_changes_total", &route_adds, |v| {
        v > adds
    });

    // A route deleted by hand: the kernel reports it and a reconcile puts it back.
    let kernel_runs = value(
        &c.scrape(0),
        "flannel_reconcile_runs_total",
        &[("cause", "kernel")],
    );
    c.hosts[0].exec("ip", &["route", "del", &new_subnet]);
    wait_metric(&c, 0, "flannel_reconcile_changes_total", &route_adds, |v| {
        v > after_join
    });
    wait_metric(
        &c,
        0,
        "flannel_reconcile_runs_total",
        &[("cause", "kernel")],
        |v| v > kernel_runs,
    );
    assert!(c.route(0, &new_subnet).contains("proto 70"), "repaired");

    // etcd stops: requests fail, and the time since its last answer grows.
    let errors = value(&c.scrape(0), "flannel_etcd_errors_total", &[]);
    c.etcd.kill();
    wait_metric(&c, 0, "flannel_etcd_errors_total", &[], |v| v > errors);
    wait_metric(&c, 0, "flannel_etcd_last_contact_age_seconds", &[], |v| {
        v > 10.0
    });
}
