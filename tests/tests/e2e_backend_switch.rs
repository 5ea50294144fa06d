//! End to end, seed 001's backend switch (issue 25) on the three-host lab: hosts 0 and 1 on one
//! LAN, host 2 behind a router. The config is changed, then each agent is restarted 2 s after the
//! other, while a pod on host 0 pings a pod on host 1 twenty times a second. While the leases
//! name both backends, same-LAN peers keep their direct routes (docs/configuration.md, "Switching
//! the backend"), so the pings go on; the host behind the router is reached again once every host
//! runs the new backend.

use std::process::{Child, Stdio};
use std::time::Duration;

use flanneld_tests::cluster::{wait_for, Cluster, Pod};

const HOST_GW: &str = r#"{"Network":"10.66.0.0/16","Backend":{"Type":"host-gw"}}"#;
const VXLAN_DR: &str =
    r#"{"Network":"10.66.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
/// How many pings may be lost between same-LAN hosts during the switch.
const MAY_LOSE: u32 = 2;

/// `ping -i 0.05` from `from` to `to` for `count` packets, in the background.
fn ping_loop(from: &Pod, to: &Pod, count: u32) -> Child {
    from.ns
        .command("ping")
        .args([
            "-n",
            "-q",
            "-i",
            "0.05",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            &to.ip,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ping")
}

/// The (transmitted, received) counts of a finished ping loop.
fn ping_counts(child: Child) -> (u32, u32) {
    let out = child.wait_with_output().expect("ping finished");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text}"));
    let number = |word: &str| -> u32 {
        let before = line.split(word).next().unwrap_or_default();
        let n = before
            .trim_end()
            .rsplit([' ', ','])
            .next()
            .unwrap_or_default();
        n.parse()
            .unwrap_or_else(|_| panic!("no {word} count in {line}"))
    };
    (number("packets transmitted"), number("received"))
}

/// Switches the lab from `from` to `to` by seed 001's procedure and returns the pings sent and
/// answered between the same-LAN pods meanwhile. The pod behind the router is reached before
/// and after over vxlan (host-gw cannot reach across a router).
fn switch_with_restarts(from: &str, to: &str) -> (u32, u32) {
    let over_router = |config: &str| config.contains("vxlan");
    let mut c = Cluster::start_two_lans(2, 1, from, &[]);
    // Readiness is not waited on: a host-gw host stays unready while it cannot route the host
    // behind the router. The pings are what counts.
    let subnets: Vec<String> = (0..3).map(|i| c.wait_subnet(i)).collect();
    let pods: Vec<Pod> = (0..3)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    wait_for(
        "the same-LAN pods to reach each other",
        Duration::from_secs(15),
        || pods[0].ping(&pods[1].ip).then_some(()),
    );
    if over_router(from) {
        wait_for("the pod behind the router", Duration::from_secs(15), || {
            pods[0].ping(&pods[2].ip).then_some(())
        });
    }

    let pinger = ping_loop(&pods[0], &pods[1], 240);
    c.etcd.put(&c.config_key(), to);
    for (i, subnet) in subnets.iter().enumerate() {
        c.stop_agent(i);
        c.start_agent(i);
        assert_eq!(&c.wait_subnet(i), subnet, "host {i} keeps its subnet");
        // The operator's pace: the next host 2 s later.
        std::thread::sleep(Duration::from_secs(2));
    }
    let counts = ping_counts(pinger);
    if over_router(to) {
        wait_for(
            "the pod behind the router, over vxlan",
            Duration::from_secs(15),
            || pods[0].ping(&pods[2].ip).then_some(()),
        );
    }
    assert!(pods[1].ping(&pods[0].ip), "and back");
    counts
}

#[test]
fn host_gw_to_vxlan_with_direct_routing_by_restarts_loses_no_same_lan_ping() {
    let (sent, received) = switch_with_restarts(HOST_GW, VXLAN_DR);
    eprintln!(
        "host-gw -> vxlan+DirectRouting: {} of {sent} pings lost",
        sent - received
    );
    assert!(
        sent - received <= MAY_LOSE,
        "{} of {sent} pings lost",
        sent - received
    );
}

#[test]
fn vxlan_with_direct_routing_to_host_gw_by_restarts_loses_no_same_lan_ping() {
    let (sent, received) = switch_with_restarts(VXLAN_DR, HOST_GW);
    eprintln!(
        "vxlan+DirectRouting -> host-gw: {} of {sent} pings lost",
        sent - received
    );
    assert!(
        sent - received <= MAY_LOSE,
        "{} of {sent} pings lost",
        sent - received
    );
}
