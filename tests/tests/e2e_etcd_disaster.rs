//! End to end, etcd disasters: an etcd restored empty (data directory lost, config written again)
//! heals without touching any agent, and `/readyz` tells the truth over an etcd outage.

use std::time::Duration;

use flanneld_tests::cluster::{wait_for, Cluster, Pod};

const CONFIG: &str = r#"{"Network":"10.62.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// The etcd key of host `i`'s lease (from its subnet.env).
fn lease_key(c: &Cluster, flannel_subnet: &str) -> String {
    let net = Cluster::network_of(flannel_subnet);
    format!("{}/subnets/{}", c.prefix, net.replace('/', "-"))
}

fn assert_pods_connected(pods: &[Pod]) {
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(a.ping(&b.ip), "pod {i} cannot reach pod {j} ({})", b.ip);
        }
    }
}

#[test]
fn etcd_restored_empty_heals_with_the_same_subnets_and_no_agent_restart() {
    let mut c = Cluster::start(3, CONFIG, &[]);
    let subnets: Vec<String> = (0..3).map(|i| c.wait_subnet(i)).collect();
    let pods: Vec<Pod> = (0..3)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let keys: Vec<String> = subnets.iter().map(|s| lease_key(&c, s)).collect();
    let values: Vec<String> = keys.iter().map(|k| c.etcd.get(k).expect("lease")).collect();
    for i in 0..3 {
        c.wait_ready(i);
    }
    assert_pods_connected(&pods);

    // Every route change on every host, from before the disaster until after the new peer below.
    let monitors: Vec<(std::process::Child, std::path::PathBuf)> = (0..3)
        .map(|i| {
            let log = c.dir.path().join(format!("h{i}-route-monitor.log"));
            let child = c.hosts[i]
                .command("ip")
                .args(["monitor", "route"])
                .stdout(std::fs::File::create(&log).expect("monitor log"))
                .spawn()
                .expect("ip monitor");
            (child, log)
        })
        .collect();

    // The disk is lost; the operator starts an empty etcd and writes the config again.
    let revision = c.etcd.revision();
    c.etcd.restart_empty();
    assert_eq!(c.etcd.get(&c.config_key()), None, "etcd is empty");
    assert!(c.etcd.revision() < revision, "a new store starts over");
    c.etcd.put(&c.config_key(), CONFIG);

    for (key, value) in keys.iter().zip(&values) {
        wait_for(
            &format!("{key} re-created"),
            Duration::from_secs(30),
            || (c.etcd.get(key).as_ref() == Some(value)).then_some(()),
        );
    }
    for i in 0..3 {
        assert!(
            c.agents[i].as_mut().is_some_and(|a| a.is_running()),
            "agent {i} kept running"
        );
        let log = c.log(i);
        assert!(log.contains("re-claimed lease"), "host {i}:\n{log}");
        assert!(
            log.contains("it was restored or replaced"),
            "host {i}:\n{log}"
        );
        // Routes to every peer were kept throughout: a restart of no agent wrote them again.
        for (j, subnet) in subnets.iter().enumerate().filter(|(j, _)| *j != i) {
            let route = c.route(i, &Cluster::network_of(subnet));
            assert!(route.contains(&format!("via {}", c.host_ip(j))), "{route}");
        }
        c.wait_ready(i);
    }
    assert_pods_connected(&pods);
    // Each host saw its peers' leases again: a new peer lease is routed as before.
    c.etcd.put(
        &format!("{}/subnets/10.62.250.0-24", c.prefix),
        r#"{"PublicIP":"192.168.100.99","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    for i in 0..3 {
        wait_for("the new peer routed", Duration::from_secs(15), || {
            c.route(i, "10.62.250.0/24")
                .contains("proto 70")
                .then_some(())
        });
    }
    // No peer lost its route while the leases were being re-created (the grace period).
    let nets: Vec<String> = subnets.iter().map(|s| Cluster::network_of(s)).collect();
    for (i, (mut child, log)) in monitors.into_iter().enumerate() {
        child.kill().expect("stop ip monitor");
        child.wait().expect("reap ip monitor");
        let changes = std::fs::read_to_string(&log).expect("monitor log");
        assert!(
            changes.lines().any(|l| l.contains("10.62.250.0/24")),
            "host {i}: the monitor saw the new peer:\n{changes}"
        );
        let deleted =
            |l: &&str| l.starts_with("Deleted") && nets.iter().any(|n| l.contains(n.as_str()));
        assert!(
            !changes.lines().any(|l| deleted(&l)),
            "host {i}: a peer route was deleted during the restore:\n{changes}"
        );
    }
}

#[test]
fn readiness_turns_unready_without_etcd_and_back_keeping_the_data_plane() {
    let mut c = Cluster::start(2, CONFIG, &[]);
    let subnets: Vec<String> = (0..2).map(|i| c.wait_subnet(i)).collect();
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    c.wait_ready(0);

    c.etcd.kill();
    let body = wait_for("/readyz to report etcd", Duration::from_secs(60), || {
        let out = c.hosts[0].try_exec("curl", &["-s", "-m", "2", "http://127.0.0.1:2401/readyz"]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        body.contains("no answer from etcd").then_some(body)
    });
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(c.healthz(0, "/healthz"), 200, "alive all along");
    assert_pods_connected(&pods);

    c.etcd.start_again();
    c.wait_ready(0);
    assert_pods_connected(&pods);
}

#[test]
fn a_v2_keyspace_restored_empty_heals_too() {
    let mut c = Cluster::start_v2(2, CONFIG, &[]);
    let subnets: Vec<String> = (0..2).map(|i| c.wait_subnet(i)).collect();
    let before = c.etcd.v2_values(&format!("{}/subnets", c.prefix));
    assert_eq!(before.len(), 2, "{before:?}");

    c.etcd.restart_empty();
    c.etcd.v2_set(&c.config_key(), CONFIG, None);
    wait_for("both v2 leases re-created", Duration::from_secs(30), || {
        (c.etcd.v2_values(&format!("{}/subnets", c.prefix)) == before).then_some(())
    });
    // A new peer is seen again: the watches left the old index behind.
    c.etcd.v2_set(
        &format!("{}/subnets/10.62.250.0-24", c.prefix),
        r#"{"PublicIP":"192.168.100.99","BackendType":"host-gw"}"#,
        Some(600),
    );
    for i in 0..2 {
        wait_for("the new v2 peer routed", Duration::from_secs(15), || {
            c.route(i, "10.62.250.0/24")
                .contains("proto 70")
                .then_some(())
        });
        let other = Cluster::network_of(&subnets[1 - i]);
        assert!(c.route(i, &other).contains("proto 70"), "peer route kept");
    }
}
