//! End to end: leases written into etcd by a broken or hostile machine. Each class (a subnet
//! outside the Network, one covering a host's own LAN or everything, one of the wrong length, one
//! overlapping a host's subnet, a PublicIP of loopback, multicast or 0.0.0.0, a multicast VtepMAC)
//! is rejected before it reaches the kernel: every host still reaches etcd, every pod still
//! reaches every pod, readiness stays 200, and each rejection is logged once with its key.

use std::time::Duration;

use flanneld_tests::cluster::{wait_for, Cluster, Pod};

/// A fake peer on the first LAN (no machine answers there; only its leases exist).
const FAKE_PEER: &str = "192.168.100.99";

fn hostgw(ip: &str) -> String {
    format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#)
}

fn vxlan(ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// The `<A.B.C.D>-<len>` key of the first half (a /25) of a host's /24 subnet.
fn half_of(flannel_subnet: &str) -> String {
    let net = Cluster::network_of(flannel_subnet);
    format!("{}-25", net.split_once('/').expect("CIDR").0)
}

/// Writes `leases` (key suffix, value), then a valid control lease for `control` last, and waits
/// until every host routes the control subnet: the agents have seen every hostile lease by then.
fn write_then_control(c: &Cluster, leases: &[(String, String)], control: (&str, String)) {
    for (key, value) in leases {
        c.etcd.put(&format!("{}/subnets/{key}", c.prefix), value);
    }
    let (key, value) = control;
    c.etcd.put(&format!("{}/subnets/{key}", c.prefix), &value);
    let dst = key.replace('-', "/");
    for i in 0..c.hosts.len() {
        wait_for(
            &format!("host {i} to route the control lease {key}"),
            Duration::from_secs(15),
            || c.route(i, &dst).contains("proto 70").then_some(()),
        );
    }
}

/// Checks what must survive any lease: the LAN, etcd, pod-to-pod traffic, readiness, and one log
/// line per rejected key; and that no route of ours leads anywhere but the expected subnets.
fn assert_unharmed(c: &Cluster, pods: &[Pod], rejected: &[String], allowed: &[String]) {
    for (i, host) in c.hosts.iter().enumerate() {
        let ping = host.try_exec("ping", &["-c1", "-W2", "192.168.100.2"]);
        assert!(ping.status.success(), "host {i} lost etcd's LAN address");
        let ours = host.exec("ip", &["route", "show", "proto", "70"]);
        for line in ours.lines() {
            let dst = line.split_whitespace().next().unwrap_or_default();
            assert!(
                allowed.iter().any(|a| a == dst),
                "host {i} routes {dst} (not a valid lease's subnet):\n{ours}"
            );
        }
        assert!(
            !host
                .exec("ip", &["route", "show", "default"])
                .contains("proto 70"),
            "host {i}: no default route of ours"
        );
        assert_eq!(c.healthz(i, "/readyz"), 200, "host {i} stays ready");
        let log = c.log(i);
        for key in rejected {
            let n = log
                .lines()
                .filter(|l| l.contains(&format!("ignoring the lease {key}:")))
                .count();
            assert_eq!(n, 1, "host {i}: one line for {key}:\n{log}");
        }
    }
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(a.ping(&b.ip), "pod {i} cannot reach pod {j} ({})", b.ip);
        }
    }
}

#[test]
fn hostgw_hostile_leases_harm_no_host() {
    let mut c = Cluster::start(
        2,
        r#"{"Network":"10.60.0.0/16","Backend":{"Type":"host-gw"}}"#,
        &[],
    );
    let subnets: Vec<String> = (0..2).map(|i| c.wait_subnet(i)).collect();
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let hostile = [
        ("192.168.100.0-24".to_string(), hostgw(FAKE_PEER)),
        ("0.0.0.0-0".to_string(), hostgw(FAKE_PEER)),
        ("10.60.0.0-16".to_string(), hostgw(FAKE_PEER)),
        (half_of(&subnets[0]), hostgw(FAKE_PEER)),
        ("10.60.250.0-24".to_string(), hostgw("127.0.0.1")),
        ("10.60.251.0-24".to_string(), hostgw("224.0.0.1")),
        ("10.60.252.0-24".to_string(), hostgw("0.0.0.0")),
    ];
    write_then_control(&c, &hostile, ("10.60.240.0-24", hostgw(FAKE_PEER)));
    let mut allowed: Vec<String> = subnets.iter().map(|s| Cluster::network_of(s)).collect();
    allowed.push("10.60.240.0/24".into());
    let keys: Vec<String> = hostile.iter().map(|(k, _)| k.clone()).collect();
    // Host 0's own half-subnet lease is rejected there and on host 1 alike.
    assert_unharmed(&c, &pods, &keys, &allowed);

    // A restarted agent programs none of them either.
    c.stop_agent(1);
    c.start_agent(1);
    c.wait_ready(1);
    assert_unharmed(&c, &pods, &[], &allowed);
}

#[test]
fn vxlan_hostile_leases_harm_no_host_on_either_lan() {
    // Host 1 sits on the second LAN (192.168.101.0/24), behind the router.
    let mut c = Cluster::start_two_lans(
        1,
        1,
        r#"{"Network":"10.61.0.0/16","Backend":{"Type":"vxlan"}}"#,
        &[],
    );
    let subnets: Vec<String> = (0..2).map(|i| c.wait_subnet(i)).collect();
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let mac = "02:42:0a:3d:00:99";
    let hostile = [
        ("192.168.101.0-24".to_string(), vxlan(FAKE_PEER, mac)),
        ("192.168.100.0-24".to_string(), vxlan(FAKE_PEER, mac)),
        ("0.0.0.0-0".to_string(), vxlan(FAKE_PEER, mac)),
        ("10.61.0.0-16".to_string(), vxlan(FAKE_PEER, mac)),
        ("10.61.250.0-24".to_string(), vxlan("127.0.0.1", mac)),
        ("10.61.251.0-24".to_string(), vxlan("224.0.0.1", mac)),
    ];
    write_then_control(
        &c,
        &hostile,
        ("10.61.240.0-24", vxlan(FAKE_PEER, "02:42:0a:3d:00:98")),
    );
    let mut allowed: Vec<String> = subnets.iter().map(|s| Cluster::network_of(s)).collect();
    allowed.push("10.61.240.0/24".into());
    let keys: Vec<String> = hostile.iter().map(|(k, _)| k.clone()).collect();
    assert_unharmed(&c, &pods, &keys, &allowed);
    for (i, host) in c.hosts.iter().enumerate() {
        let fdb = host.exec("bridge", &["fdb", "show", "dev", "flannel.1"]);
        assert!(
            !fdb.contains("dst 127.0.0.1") && !fdb.contains("dst 224.0.0.1"),
            "host {i}: {fdb}"
        );
    }

    // A multicast VtepMAC is skipped by the vxlan backend: nothing is programmed for it.
    let key = format!("{}/subnets/10.61.241.0-24", c.prefix);
    c.etcd.put(&key, &vxlan(FAKE_PEER, "01:00:5e:00:00:01"));
    wait_for(
        "the multicast VtepMAC to be reported",
        Duration::from_secs(15),
        || {
            c.log(0)
                .contains("01:00:5e:00:00:01 is not a unicast MAC")
                .then_some(())
        },
    );
    assert!(c.route(0, "10.61.241.0/24").is_empty());
    assert_unharmed(&c, &pods, &[], &allowed);
}
