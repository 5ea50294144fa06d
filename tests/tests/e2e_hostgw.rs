//! End to end, host-gw: three hosts on one LAN, etcd over mutual TLS, the real agent on each host
//! and a pod behind a bridge on each. What a user would see: pings between pods, routes in
//! `ip route`, subnets kept across restarts.

use std::time::Duration;

use flanneld_tests::cluster::{wait_for, Cluster, Pod};

const CONFIG: &str = r#"{"Network":"10.10.0.0/16","Backend":{"Type":"host-gw"}}"#;

#[test]
fn hostgw_three_hosts_connect_repair_restart_and_forget_peers() {
    let mut c = Cluster::start(3, CONFIG, &[]);
    let subnets: Vec<String> = (0..3).map(|i| c.wait_subnet(i)).collect();
    let nets: Vec<String> = subnets.iter().map(|s| Cluster::network_of(s)).collect();
    assert_eq!(
        nets.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "each host has its own subnet: {nets:?}"
    );
    for (i, env) in (0..3).map(|i| (i, std::fs::read_to_string(c.subnet_env(i)).unwrap())) {
        assert_eq!(
            env,
            format!("FLANNEL_NETWORK=10.10.0.0/16\nFLANNEL_SUBNET={}\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n", subnets[i])
        );
    }

    // Every host routes every peer subnet via the peer's LAN address, tagged as ours.
    for i in 0..3 {
        for j in (0..3).filter(|j| *j != i) {
            let route = wait_for(
                &format!("route to host {j} on host {i}"),
                Duration::from_secs(10),
                || {
                    let r = c.route(i, &nets[j]);
                    r.contains(&format!("via {}", c.host_ip(j))).then_some(r)
                },
            );
            assert!(
                route.contains("dev eth0") && route.contains("proto 70"),
                "{route}"
            );
        }
    }

    let pods: Vec<Pod> = (0..3)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                a.ping(&b.ip),
                "pod on host {i} cannot ping pod on host {j} ({})",
                b.ip
            );
        }
    }
    c.wait_ready(0);
    assert_eq!(c.healthz(0, "/healthz"), 200);

    // A route deleted by hand comes back (netlink notification, or the resync).
    c.hosts[0].exec("ip", &["route", "del", &nets[1]]);
    wait_for(
        "deleted route to come back",
        Duration::from_secs(15),
        || {
            c.route(0, &nets[1])
                .contains(&format!("via {}", c.host_ip(1)))
                .then_some(())
        },
    );
    assert!(pods[0].ping(&pods[1].ip));

    // A route of ours replaced by an identical one of another protocol (`ip route replace`
    // reports only the new route) is adopted back on that notification, well before the 60 s
    // safety-net resync of host-gw.
    let untagged = format!("{} via {} dev eth0", nets[1], c.host_ip(1));
    c.hosts[0].sh(&format!("ip route replace {untagged} proto boot"));
    wait_for(
        "replaced route to be adopted",
        Duration::from_secs(20),
        || c.route(0, &nets[1]).contains("proto 70").then_some(()),
    );
    assert!(pods[0].ping(&pods[1].ip));

    // SIGTERM: exit 0, routes and subnet.env stay; a restart keeps the subnet and the routes
    // never disappear meanwhile.
    assert_eq!(
        c.stop_agent(2),
        Some(0),
        "clean exit on SIGTERM; log:\n{}",
        c.log(2)
    );
    assert!(c.subnet_env(2).exists());
    assert!(
        c.route(2, &nets[0]).contains("via"),
        "routes stay after shutdown"
    );
    assert!(
        pods[2].ping(&pods[0].ip),
        "data plane keeps working while the agent is down"
    );
    // While it is down, a peer vanishes (its tagged route stays behind) and someone adds a
    // route of their own.
    c.hosts[2].sh(&format!(
        "ip route add 10.10.250.0/24 via {} proto 70",
        c.host_ip(0)
    ));
    c.hosts[2].sh(&format!("ip route add 10.10.251.0/24 via {}", c.host_ip(0)));
    let monitor_log = c.dir.path().join("h2-route-monitor.log");
    let mut monitor = c.hosts[2]
        .command("ip")
        .args(["monitor", "route"])
        .stdout(std::fs::File::create(&monitor_log).unwrap())
        .spawn()
        .unwrap();
    c.start_agent(2);
    assert_eq!(c.wait_subnet(2), subnets[2], "restart keeps the subnet");
    assert!(pods[2].ping(&pods[0].ip));
    std::thread::sleep(Duration::from_millis(500));
    monitor.kill().unwrap();
    monitor.wait().unwrap();
    let changes = std::fs::read_to_string(&monitor_log).unwrap();
    assert!(
        !changes
            .lines()
            .any(|l| nets.iter().any(|n| l.contains(n.as_str()))),
        "the restart must not touch peer routes (no flap):\n{changes}"
    );
    // The restart removes the stale route of ours and keeps the foreign one.
    wait_for(
        "stale tagged route to be removed",
        Duration::from_secs(15),
        || c.route(2, "10.10.250.0/24").is_empty().then_some(()),
    );
    assert!(
        !c.route(2, "10.10.251.0/24").is_empty(),
        "foreign route must be kept"
    );

    // A peer that is gone for good: stop it, delete its lease; every other host drops its route.
    assert_eq!(c.stop_agent(2), Some(0));
    let key = format!("{}/subnets/{}", c.prefix, nets[2].replace('/', "-"));
    assert!(c.etcd.delete(&key), "lease {key} exists");
    for i in 0..2 {
        wait_for(
            &format!("host {i} to drop the route to the removed peer"),
            Duration::from_secs(10),
            || c.route(i, &nets[2]).is_empty().then_some(()),
        );
    }
    assert!(pods[0].ping(&pods[1].ip), "remaining hosts still connected");
}

#[test]
fn lease_json_in_etcd_is_what_go_flanneld_writes() {
    let mut c = Cluster::start(1, CONFIG, &[]);
    let subnet = c.wait_subnet(0);
    let key = format!(
        "{}/subnets/{}",
        c.prefix,
        Cluster::network_of(&subnet).replace('/', "-")
    );
    assert_eq!(
        c.etcd.get(&key).as_deref(),
        Some(r#"{"PublicIP":"192.168.100.11","PublicIPv6":null,"BackendType":"host-gw"}"#)
    );
    let (ttl, granted, _) = c.etcd.lease_ttl(&key).expect("lease has a TTL");
    assert_eq!(granted, 86400);
    assert!(ttl > 86000, "{ttl}");
}
