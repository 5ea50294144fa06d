//! End to end against a real 3-member etcd cluster (each member in a namespace of its own, mutual
//! TLS), the agents given all three endpoints as production seeds are. Killing the leader,
//! partitioning a member and replacing a member by an empty one (it rejoins) cost the agents no
//! lease, no renewal and no watch event: a lease written during each fault reaches every agent.

use std::time::Duration;

use flanneld_tests::cluster::{wait_for, Cluster};

const CONFIG: &str = r#"{"Network":"10.63.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// Writes a peer lease for `10.63.<third>.0/24` through member `via` and waits until every host
/// routes it: the agents' watches follow the cluster.
fn peer_reaches_every_agent(c: &mut Cluster, via: usize, third: u8) {
    let key = format!("{}/subnets/10.63.{third}.0-24", c.prefix);
    let value = r#"{"PublicIP":"192.168.100.99","PublicIPv6":null,"BackendType":"host-gw"}"#;
    wait_for("the write to succeed", Duration::from_secs(30), || {
        c.etcd_member(via).try_put(&key, value).then_some(())
    });
    let dst = format!("10.63.{third}.0/24");
    for i in 0..c.hosts.len() {
        wait_for(
            &format!("host {i} to route {dst} (written through member {via})"),
            Duration::from_secs(45),
            || c.route(i, &dst).contains("proto 70").then_some(()),
        );
    }
}

/// Waits until every agent logged `text` about member `member`'s endpoint, and checks it did so
/// once: each change of a member is logged once.
fn member_logged(c: &Cluster, member: usize, text: &str) {
    let line = format!("etcd member https://192.168.100.{}:2379 {text}", 2 + member);
    for i in 0..c.hosts.len() {
        wait_for(
            &format!("host {i} to log {line:?}"),
            Duration::from_secs(30),
            || c.log(i).contains(&line).then_some(()),
        );
        let n = c.log(i).lines().filter(|l| l.contains(&line)).count();
        assert_eq!(n, 1, "host {i} logs {line:?} once:\n{}", c.log(i));
    }
}

/// Each host's lease key and the ID of the etcd lease behind it (a renewal or re-claim grants a
/// new one), read through member `via`.
fn own_leases(c: &mut Cluster, via: usize, keys: &[String]) -> Vec<Option<i64>> {
    let member = c.etcd_member(via);
    keys.iter()
        .map(|k| member.lease_ttl(k).map(|(_, _, id)| id))
        .collect()
}

#[test]
fn agents_ride_out_leader_loss_a_partition_and_a_rejoined_empty_member() {
    let mut c = Cluster::start_etcd_cluster(2, 3, CONFIG, &[]);
    let keys: Vec<String> = (0..2)
        .map(|i| {
            let net = Cluster::network_of(&c.wait_subnet(i));
            format!("{}/subnets/{}", c.prefix, net.replace('/', "-"))
        })
        .collect();
    let leases = own_leases(&mut c, 0, &keys);
    assert!(leases.iter().all(Option::is_some), "{leases:?}");

    // The leader dies; the others elect a new one.
    let leader = (0..3)
        .find(|i| c.etcd_member(*i).is_leader())
        .expect("a leader");
    c.etcd_member(leader).kill();
    peer_reaches_every_agent(&mut c, (leader + 1) % 3, 250);
    member_logged(&c, leader, "does not answer");
    c.etcd_member(leader).start_again();
    member_logged(&c, leader, "answers again");

    // A member is cut off the LAN.
    c.partition_etcd_member(1, false);
    peer_reaches_every_agent(&mut c, 2, 251);
    if leader != 1 {
        member_logged(&c, 1, "does not answer");
    }
    c.partition_etcd_member(1, true);

    // A member loses its disk and rejoins empty.
    c.etcd_members[1].rejoin_empty(&c.etcd);
    peer_reaches_every_agent(&mut c, 2, 252);

    assert_eq!(
        own_leases(&mut c, 2, &keys),
        leases,
        "no renewal, no re-claim"
    );
    for i in 0..2 {
        assert!(c.agents[i].as_mut().is_some_and(|a| a.is_running()));
        c.wait_ready(i);
        let log = c.log(i);
        assert!(!log.contains("re-claimed lease"), "host {i}:\n{log}");
        let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
        assert!(
            warnings <= 20,
            "host {i} does not spin ({warnings} warnings):\n{log}"
        );
    }
}

/// Idle agents ask etcd nothing: no periodic read of their key or the config and no status call
/// per member (issue 23). Their watch streams carry what they need, and the client's keepalive
/// (HTTP/2 pings, not requests) tells a live member from a dead one.
#[test]
fn idle_agents_send_three_members_at_most_one_request_a_minute_each() {
    let mut c = Cluster::start_etcd_cluster(2, 3, CONFIG, &[]);
    for i in 0..2 {
        c.wait_subnet(i);
        c.wait_ready(i);
    }
    let asked =
        |c: &mut Cluster| -> u64 { (0..3).map(|m| c.etcd_member(m).unary_requests()).sum() };
    // Past start-up (the first rule checks, the member watches settling).
    std::thread::sleep(Duration::from_secs(15));
    let before = asked(&mut c);
    std::thread::sleep(Duration::from_secs(60));
    let during = asked(&mut c) - before;
    assert!(
        during <= 2,
        "two idle agents sent {during} requests in a minute (before: 12 a minute each, plus a \
         status call per member every 10 s)"
    );
}
