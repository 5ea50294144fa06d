//! End to end, `--route-style=nexthop`: host-gw routes that point to nexthop objects. What a
//! user sees: `ip route` shows `nhid <id> via <peer>`, `ip nexthop` one object per peer tagged
//! `proto 70`, pods ping across hosts, an object deleted by hand or flushed by a link flap comes
//! back, a removed peer's route and object go, and switching back to classic routes leaves no
//! object behind.

use std::net::Ipv4Addr;
use std::time::Duration;

use flanneld_tests::cluster::{wait_for, Agent, Cluster, Pod};

const CONFIG: &str = r#"{"Network":"10.12.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// The nexthop id of a peer: its IPv4 address as a number.
fn nexthop_id(ip: &str) -> u32 {
    u32::from(ip.parse::<Ipv4Addr>().expect("IPv4"))
}

#[test]
fn nexthop_routes_connect_hosts_are_repaired_and_collected() {
    let mut c = Cluster::start(3, CONFIG, &["--route-style=nexthop"]);
    let subnets: Vec<String> = (0..3).map(|i| c.wait_subnet(i)).collect();
    let nets: Vec<String> = subnets.iter().map(|s| Cluster::network_of(s)).collect();
    let id = nexthop_id(&c.host_ip(1));
    let route = wait_for("route via a nexthop", Duration::from_secs(10), || {
        let r = c.route(0, &nets[1]);
        r.contains(&format!("nhid {id}")).then_some(r)
    });
    assert!(
        route.contains(&format!("via {}", c.host_ip(1))) && route.contains("proto 70"),
        "{route}"
    );
    let object = c.hosts[0].exec("ip", &["nexthop", "show", "id", &id.to_string()]);
    assert!(
        object.contains(&format!("via {} dev eth0", c.host_ip(1))) && object.contains("proto 70"),
        "{object}"
    );
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    assert!(pods[0].ping(&pods[1].ip) && pods[1].ping(&pods[0].ip));
    c.wait_ready(0);

    // Deleting the object takes its route with it (no route notification); the object's own
    // notification makes the agent put both back at once.
    let to_peer = (nets[1].as_str(), id);
    rewritten_after(&c, to_peer, Duration::from_secs(5), || {
        c.hosts[0].exec("ip", &["nexthop", "del", "id", &id.to_string()]);
    });
    assert!(pods[0].ping(&pods[1].ip));

    // The kernel flushes a device's objects, with their routes, when it goes down; the agent
    // re-creates them once the link is up again.
    rewritten_after(&c, to_peer, Duration::from_secs(25), || {
        c.hosts[0].sh("ip link set eth0 down && ip link set eth0 up");
    });
    assert!(pods[0].ping(&pods[1].ip));

    // A peer gone for good: its route and its object go.
    let gone = nexthop_id(&c.host_ip(2));
    assert_eq!(c.stop_agent(2), Some(0));
    let key = format!("{}/subnets/{}", c.prefix, nets[2].replace('/', "-"));
    assert!(c.etcd.delete(&key), "lease {key} exists");
    wait_for(
        "route and object of the removed peer gone",
        Duration::from_secs(10),
        || {
            let objects = c.hosts[0].exec("ip", &["nexthop", "show"]);
            (c.route(0, &nets[2]).is_empty() && !objects.contains(&format!("id {gone} ")))
                .then_some(())
        },
    );

    // Back to classic routes: replaced in place (no flap to nothing), objects collected.
    assert_eq!(c.stop_agent(0), Some(0));
    let mut args = c.agent_args(0);
    args.push("--route-style=classic".into());
    let log = c.dir.path().join("h0-classic.log");
    c.agents[0] = Some(Agent::start(&c.hosts[0], &args, &log));
    wait_for(
        "classic route and no object",
        Duration::from_secs(15),
        || {
            let route = c.route(0, &nets[1]);
            let objects = c.hosts[0].exec("ip", &["nexthop", "show"]);
            (!route.contains("nhid") && route.contains("proto 70") && objects.trim().is_empty())
                .then_some(())
        },
    );
    assert!(pods[0].ping(&pods[1].ip));
}

/// Runs `break_it` on host 0, then waits until the route to `net` points to object `id` again
/// and the agent logged a new write (so a step that changed nothing cannot pass).
fn rewritten_after(c: &Cluster, (net, id): (&str, u32), within: Duration, break_it: impl FnOnce()) {
    let writes = || c.log(0).matches("data plane: ").count();
    let before = writes();
    break_it();
    wait_for("object and route written again", within, || {
        let back = c.route(0, net).contains(&format!("nhid {id}"));
        (back && writes() > before).then_some(())
    });
}
