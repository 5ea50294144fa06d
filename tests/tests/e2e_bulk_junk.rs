//! End to end, what a careless or hostile writer can put under `<prefix>/subnets/` (issue 24):
//! 6000 keys that are not usable leases, 1000 of them with 64 KiB values, must not keep an agent
//! from its lease or fill the log; nor must 20,000 valid leases.

use std::time::{Duration, Instant};

use flanneld_tests::cluster::Cluster;

const CONFIG: &str = r#"{"Network":"10.16.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// The log lines the agent writes for keys it does not use.
const KEY_LINES: [&str; 4] = [
    "skipping a key under the subnets prefix",
    "ignoring a lease update",
    "ignoring the lease",
    "more keys under the subnets prefix",
];

/// 1000 keys of each kind of junk.
fn junk(subnets: &str) -> Vec<(String, String)> {
    let lease = r#"{"PublicIP":"192.168.100.99","BackendType":"host-gw"}"#;
    let big = format!(
        r#"{{"PublicIP":"192.168.100.98","Pad":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    let mut kvs = Vec::new();
    for i in 0..1000u32 {
        let (a, b) = (i / 250, i % 250);
        kvs.push((format!("{subnets}/junk-{i}"), lease.to_string()));
        kvs.push((
            format!("{subnets}/10.{}.{b}.0-24", 99 + a),
            "{not json".to_string(),
        ));
        kvs.push((
            format!("{subnets}/172.{}.{b}.0-24", 20 + a),
            lease.to_string(),
        ));
        let (c, d) = (100 + i / 16, i % 16 * 16);
        kvs.push((format!("{subnets}/10.16.{c}.{d}-28"), lease.to_string()));
        kvs.push((
            format!("{subnets}/10.16.5.0-24/nested-{i}"),
            lease.to_string(),
        ));
        kvs.push((format!("{subnets}/10.{}.{b}.0-24", 110 + a), big.clone()));
    }
    kvs
}

/// Lines of `log` about keys the agent does not use.
fn key_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| KEY_LINES.iter().any(|text| l.contains(text)))
        .count()
}

/// The sum of `flannel_ignored_keys_total` on host `i`.
fn ignored_total(c: &Cluster, i: usize) -> f64 {
    let metrics = c.hosts[i].exec("curl", &["-s", "http://127.0.0.1:2401/metrics"]);
    metrics
        .lines()
        .filter(|l| l.starts_with("flannel_ignored_keys_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn six_thousand_junk_keys_neither_stop_a_restart_nor_flood_the_log() {
    let mut c = Cluster::start(2, CONFIG, &[]);
    let subnets: Vec<String> = (0..2).map(|i| c.wait_subnet(i)).collect();
    c.wait_ready(1);
    c.etcd.put_many(junk(&format!("{}/subnets", c.prefix)));

    // The running agents keep their routes and stay ready.
    let peer = Cluster::network_of(&subnets[0]);
    assert!(c.route(1, &peer).contains("via"), "{}", c.route(1, &peer));
    c.wait_ready(0);

    // A restart lists everything again: the lease and subnet.env come within seconds.
    c.stop_agent(1);
    let restarted = Instant::now();
    c.start_agent(1);
    let again = c.wait_subnet(1);
    let took = restarted.elapsed();
    assert_eq!(again, subnets[1], "the same subnet, from its PublicIP");
    assert!(took < Duration::from_secs(10), "subnet.env after {took:?}");
    c.wait_ready(1);
    assert!(c.route(1, &peer).contains("via"), "{}", c.route(1, &peer));

    // Every ignored key is counted, few are logged: at most the first 20 by name and a
    // summary, per process (two processes ran on host 1).
    assert!(ignored_total(&c, 1) >= 5000.0, "{}", ignored_total(&c, 1));
    let lines = key_lines(&c.log(1));
    assert!(
        lines <= 2 * (subnet::NAMED_KEYS + 2),
        "{lines} log lines about keys:\n{}",
        c.log(1)
    );
}

#[test]
fn a_start_beside_20000_leases_gets_its_subnet_within_seconds() {
    let config = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}"#;
    let mut c = Cluster::build(1, config, &[]);
    let leases = (0..20_000u32).map(|i| {
        let key = format!("{}/subnets/10.{}.{}.0-24", c.prefix, 1 + i / 256, i % 256);
        let gateway = 100 + i % 100;
        let value = format!(r#"{{"PublicIP":"192.168.100.{gateway}","BackendType":"host-gw"}}"#);
        (key, value)
    });
    c.etcd.put_many(leases.collect());
    let started = Instant::now();
    c.start_agent(0);
    c.wait_subnet(0);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "subnet.env after {took:?}");
}
