//! End to end, seed 001's backend switch (issue 25) on the three-host lab: hosts 0 and 1 on one
//! LAN, host 2 behind a router, a pod on host 0 pinging a pod on host 1 twenty times a second.
//! By restarts (the seed's procedure): the config is changed, then each agent is restarted 2 s
//! after the other; while the leases name both backends, same-LAN peers keep their direct routes
//! (docs/configuration.md, "Switching the backend"), so the pings go on. Live: the config is
//! changed and nothing else; each agent switches in place, make-before-break. Either way the host
//! behind the router is reached over vxlan once every host runs it.

use std::process::{Child, Stdio};
use std::time::Duration;
use std::time::Instant;

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

/// Stops a ping loop (SIGINT: it prints its summary) and returns its counts.
fn stop_pinging(child: Child) -> (u32, u32) {
    // SAFETY: kill(2) of our own child process (`ip netns exec` execs ping in place).
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    ping_counts(child)
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

/// The lab on `config`: three hosts (the last behind the router), a pod on each, the same-LAN
/// pods (and over vxlan the one behind the router) reaching each other. Readiness is not waited
/// on: a host-gw host stays unready while it cannot route the host behind the router.
struct Lab {
    c: Cluster,
    subnets: Vec<String>,
    pods: Vec<Pod>,
}

impl Lab {
    fn start(config: &str) -> Lab {
        let mut c = Cluster::start_two_lans(2, 1, config, &[]);
        let subnets: Vec<String> = (0..3).map(|i| c.wait_subnet(i)).collect();
        let pods: Vec<Pod> = (0..3)
            .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
            .collect();
        let lab = Lab { c, subnets, pods };
        lab.reaches(1, "the same-LAN pod");
        if over_router(config) {
            lab.reaches(2, "the pod behind the router");
        }
        lab
    }

    /// Waits until the pod on host 0 reaches the one on host `i`.
    fn reaches(&self, i: usize, what: &str) {
        wait_for(what, Duration::from_secs(15), || {
            self.pods[0].ping(&self.pods[i].ip).then_some(())
        });
    }
}

/// Whether `config` reaches across the router (vxlan; host-gw needs one LAN).
fn over_router(config: &str) -> bool {
    config.contains("vxlan")
}

/// Switches the lab from `from` to `to` by seed 001's procedure and returns the pings sent and
/// answered between the same-LAN pods meanwhile.
fn switch_with_restarts(from: &str, to: &str) -> (u32, u32) {
    let Lab {
        mut c,
        subnets,
        pods,
    } = Lab::start(from);
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
    let lab = Lab { c, subnets, pods };
    if over_router(to) {
        lab.reaches(2, "the pod behind the router, over vxlan");
    }
    assert!(lab.pods[1].ping(&lab.pods[0].ip), "and back");
    counts
}

/// Switches the lab from `from` to `to` by changing the config only, and returns the pings sent
/// and answered between the same-LAN pods meanwhile, and how long the last agent took to switch.
fn switch_live(from: &str, to: &str) -> ((u32, u32), Duration) {
    let mut lab = Lab::start(from);
    let pinger = ping_loop(&lab.pods[0], &lab.pods[1], 100_000);
    let changed = Instant::now();
    lab.c.etcd.put(&lab.c.config_key(), to);
    for i in 0..3 {
        wait_for(
            &format!("host {i} to switch in place"),
            Duration::from_secs(40),
            || {
                lab.c
                    .log(i)
                    .contains("backend switched in place")
                    .then_some(())
            },
        );
    }
    let took = changed.elapsed();
    leases_say(&mut lab, if over_router(to) { "vxlan" } else { "host-gw" });
    if over_router(to) {
        lab.reaches(2, "the pod behind the router, over vxlan");
    }
    // A second more of pings after the last switch, then the count.
    std::thread::sleep(Duration::from_secs(1));
    let counts = stop_pinging(pinger);
    check_after_switch(&lab.c, to);
    (counts, took)
}

/// Waits until every host's lease names `backend`, published by the agent that is still
/// running (no restart).
fn leases_say(lab: &mut Lab, backend: &str) {
    let c = &mut lab.c;
    for (i, subnet) in lab.subnets.iter().enumerate() {
        let key = format!(
            "{}/subnets/{}",
            c.prefix,
            Cluster::network_of(subnet).replace('/', "-")
        );
        let says = format!(r#""BackendType":"{backend}""#);
        wait_for(
            &format!("host {i}'s lease to say {backend}"),
            Duration::from_secs(15),
            || c.etcd.get(&key)?.contains(&says).then_some(()),
        );
        assert!(
            c.agents[i].as_mut().is_some_and(|a| a.is_running()),
            "no restart"
        );
    }
}

/// What each host shows after a live switch to `to`: subnet.env's MTU, the vxlan device, and
/// (to vxlan) the MTU note on /readyz and the doctor's finding for the pod created before.
fn check_after_switch(c: &Cluster, to: &str) {
    for i in 0..3 {
        let mtu = || flanneld_tests::cluster::env_value(&c.subnet_env(i), "FLANNEL_MTU");
        let device = c.hosts[i]
            .try_exec("ip", &["link", "show", "flannel.1"])
            .status
            .success();
        if !over_router(to) {
            assert_eq!(mtu().as_deref(), Some("1500"), "host {i}");
            assert!(!device, "host {i}: flannel.1 removed after the switch");
            continue;
        }
        wait_for("FLANNEL_MTU 1450", Duration::from_secs(10), || {
            (mtu().as_deref() == Some("1450")).then_some(())
        });
        assert!(device, "host {i} has flannel.1");
        let body = c.hosts[i].exec("curl", &["-s", "http://127.0.0.1:2401/readyz"]);
        assert!(body.contains("keep MTU 1500"), "host {i} /readyz: {body}");
        let bin = flanneld_tests::cluster::flanneld_bin();
        let doctor = c.hosts[i].try_exec(bin.to_str().unwrap(), &["doctor"]);
        let said = String::from_utf8_lossy(&doctor.stdout);
        assert!(
            said.contains("pod-mtu-above-backend") && said.contains("vp2"),
            "host {i}: {said}"
        );
    }
}

/// Says how many pings `how` lost and holds it to [`MAY_LOSE`].
fn at_most_may_lose(how: &str, (sent, received): (u32, u32)) {
    let lost = sent - received;
    eprintln!("{how}: {lost} of {sent} pings lost");
    assert!(lost <= MAY_LOSE, "{how}: {lost} of {sent} pings lost");
}

#[test]
fn host_gw_to_vxlan_with_direct_routing_by_restarts_loses_no_same_lan_ping() {
    let counts = switch_with_restarts(HOST_GW, VXLAN_DR);
    at_most_may_lose("host-gw -> vxlan+DirectRouting", counts);
}

#[test]
fn vxlan_with_direct_routing_to_host_gw_by_restarts_loses_no_same_lan_ping() {
    let counts = switch_with_restarts(VXLAN_DR, HOST_GW);
    at_most_may_lose("vxlan+DirectRouting -> host-gw", counts);
}

#[test]
fn a_live_switch_from_host_gw_to_vxlan_with_direct_routing_loses_no_same_lan_ping() {
    let (counts, took) = switch_live(HOST_GW, VXLAN_DR);
    at_most_may_lose(
        &format!("live host-gw -> vxlan+DirectRouting (every host switched after {took:?})"),
        counts,
    );
}

#[test]
fn a_live_switch_from_vxlan_with_direct_routing_to_host_gw_loses_no_same_lan_ping() {
    let (counts, took) = switch_live(VXLAN_DR, HOST_GW);
    at_most_may_lose(
        &format!("live vxlan+DirectRouting -> host-gw (every host switched after {took:?})"),
        counts,
    );
}
