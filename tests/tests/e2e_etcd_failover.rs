//! End to end, how long a broken etcd member holds up the agents that watch through it (issue
//! 24): three hosts, a real 3-member etcd cluster, every agent given all three endpoints. Each
//! member in turn is cut off the network (its link down: nothing it sends arrives) or frozen
//! (SIGSTOP: its connections stay open, nothing answers), and a lease written through a surviving
//! member must be routed by every host within 10 s: a bound on what a user sees (the client
//! notices a silent connection within 7 s, docs/reliability.md).

use std::time::{Duration, Instant};

use flanneld_tests::cluster::{wait_for, Cluster};

const CONFIG: &str = r#"{"Network":"10.64.0.0/16","Backend":{"Type":"host-gw"}}"#;
/// The longest a lease written through a surviving member may take to reach every host.
const BOUND: Duration = Duration::from_secs(10);

/// How a member fails.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Its link goes down.
    Partition,
    /// Its process is stopped.
    Freeze,
}

fn set_fault(c: &mut Cluster, member: usize, fault: Fault, on: bool) {
    match fault {
        Fault::Partition => c.partition_etcd_member(member, !on),
        Fault::Freeze => c.etcd_member(member).freeze(on),
    }
}

/// Writes a peer lease for `10.64.<third>.0/24` through member `via` (once a leader answers)
/// and returns, per host, how long after the write it routed it.
fn time_to_route_everywhere(c: &mut Cluster, via: usize, third: u8) -> Vec<Duration> {
    let key = format!("{}/subnets/10.64.{third}.0-24", c.prefix);
    let value = r#"{"PublicIP":"192.168.100.99","PublicIPv6":null,"BackendType":"host-gw"}"#;
    wait_for("the write to succeed", Duration::from_secs(30), || {
        c.etcd_member(via).try_put(&key, value).then_some(())
    });
    let written = Instant::now();
    let dst = format!("10.64.{third}.0/24");
    let mut times = vec![None; c.hosts.len()];
    wait_for(
        &format!("every host to route {dst}"),
        Duration::from_secs(60),
        || {
            for (i, time) in times.iter_mut().enumerate() {
                if time.is_none() && c.route(i, &dst).contains("proto 70") {
                    *time = Some(written.elapsed());
                }
            }
            times.iter().copied().collect::<Option<Vec<Duration>>>()
        },
    )
}

/// Breaks each member in turn with `fault`, checks the bound for every host, and mends it.
fn each_member_broken_in_turn(fault: Fault, base: u8) {
    let mut c = Cluster::start_etcd_cluster(3, 3, CONFIG, &[]);
    for i in 0..3 {
        c.wait_subnet(i);
    }
    for member in 0..3 {
        set_fault(&mut c, member, fault, true);
        let times = time_to_route_everywhere(&mut c, (member + 1) % 3, base + member as u8);
        eprintln!("{fault:?} of member {member}: hosts routed the lease after {times:?}");
        for (i, took) in times.iter().enumerate() {
            assert!(
                *took <= BOUND,
                "{fault:?} of member {member}: host {i} routed the lease after {took:?}\n{}",
                c.log(i)
            );
        }
        set_fault(&mut c, member, fault, false);
        let probe = format!("{}/probe", c.prefix);
        wait_for(
            "the member to answer again",
            Duration::from_secs(30),
            || c.etcd_member(member).try_put(&probe, "x").then_some(()),
        );
    }
}

#[test]
fn a_partitioned_member_holds_no_agent_up_for_more_than_10_s() {
    each_member_broken_in_turn(Fault::Partition, 200);
}

#[test]
fn a_frozen_member_holds_no_agent_up_for_more_than_10_s() {
    each_member_broken_in_turn(Fault::Freeze, 210);
}
