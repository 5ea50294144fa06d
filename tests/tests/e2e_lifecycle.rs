//! End to end, agent lifecycle: waiting for a config with one log line per distinct problem,
//! readiness that follows the data plane both ways, and peers' bad keys that hurt nobody.

use std::time::Duration;

use flanneld_tests::cluster::{holds, wait_for, Cluster};

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Waits until the agent (etcd's only client) has sent etcd two more requests than
/// `since`: it has looked for the config again since it logged the problem.
fn wait_config_reread(c: &Cluster, since: u64) {
    wait_for("the config read again", Duration::from_secs(15), || {
        (c.etcd.unary_requests() >= since + 2).then_some(())
    });
}

#[test]
fn waits_for_a_valid_config_logging_each_problem_once() {
    let mut c = Cluster::start_unconfigured(1, &[]);
    wait_for("the missing-config error", Duration::from_secs(15), || {
        c.log(0)
            .contains("flannel config not found in etcd store")
            .then_some(())
    });
    wait_config_reread(&c, c.etcd.unary_requests());
    assert_eq!(
        count(&c.log(0), "Couldn't fetch network config"),
        1,
        "one line per distinct problem:\n{}",
        c.log(0)
    );
    assert_eq!(c.healthz(0, "/healthz"), 200, "alive while waiting");
    assert_eq!(c.healthz(0, "/readyz"), 503, "not ready while waiting");

    c.etcd.put(
        &c.config_key(),
        r#"{"Network":"10.40.0.0/16","SubnetLen":31,"Backend":{"Type":"host-gw"}}"#,
    );
    wait_for("the invalid-config error", Duration::from_secs(15), || {
        c.log(0)
            .contains("SubnetLen must be less than /31")
            .then_some(())
    });
    wait_config_reread(&c, c.etcd.unary_requests());
    assert_eq!(
        count(&c.log(0), "Couldn't fetch network config"),
        2,
        "{}",
        c.log(0)
    );

    c.etcd.put(
        &c.config_key(),
        r#"{"Network":"10.40.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    let subnet = c.wait_subnet(0);
    assert!(subnet.starts_with("10.40."), "{subnet}");
    c.wait_ready(0);
}

#[test]
fn readiness_follows_convergence_and_bad_peer_keys_remove_nothing() {
    let mut c = Cluster::start(
        1,
        r#"{"Network":"10.41.0.0/16","Backend":{"Type":"host-gw"}}"#,
        &[],
    );
    let own = Cluster::network_of(&c.wait_subnet(0));
    c.wait_ready(0);

    // Our own lease deleted behind our back: re-claimed with the same subnet, no exit.
    let own_key = format!("{}/subnets/{}", c.prefix, own.replace('/', "-"));
    let value = c.etcd.get(&own_key).expect("own lease");
    assert!(c.etcd.delete(&own_key));
    let back = wait_for("own lease re-claimed", Duration::from_secs(10), || {
        c.etcd.get(&own_key)
    });
    assert_eq!(back, value);
    assert!(
        c.agents[0].as_mut().expect("agent").is_running(),
        "the agent keeps running"
    );

    // A peer on our LAN: its route appears.
    let peer = format!("{}/subnets/10.41.250.0-24", c.prefix);
    c.etcd.put(
        &peer,
        r#"{"PublicIP":"192.168.100.99","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    wait_for("route to the LAN peer", Duration::from_secs(10), || {
        c.route(0, "10.41.250.0/24")
            .contains("via 192.168.100.99")
            .then_some(())
    });

    // Malformed keys and values are skipped; the peer's route stays.
    c.etcd.put(&format!("{}/subnets/garbage", c.prefix), "x");
    c.etcd
        .put(&format!("{}/subnets/10.41.251.0-24", c.prefix), "not json");
    wait_for("both bad keys seen", Duration::from_secs(15), || {
        (c.metric(0, "flannel_ignored_keys_total", &[]) >= 2.0).then_some(())
    });
    holds(
        "bad keys must not remove peers",
        Duration::from_secs(1),
        || c.route(0, "10.41.250.0/24").contains("via 192.168.100.99"),
    );
    assert_eq!(c.healthz(0, "/readyz"), 200);

    // A peer that is not on-link cannot be routed by host-gw: one warning naming the fix, and
    // /readyz turns 503 until the lease goes away.
    let far = format!("{}/subnets/10.41.252.0-24", c.prefix);
    c.etcd.put(
        &far,
        r#"{"PublicIP":"10.99.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    wait_for("not ready", Duration::from_secs(15), || {
        (c.healthz(0, "/readyz") == 503).then_some(())
    });
    let log = c.log(0);
    assert!(
        log.contains("10.99.0.1") && log.contains("vxlan"),
        "warning names the peer and the fix:\n{log}"
    );
    // The next full reconcile (the 10 s resync while not converged) meets the peer again.
    c.wait_reconcile_after(0, c.reconciles(0), Duration::from_secs(30));
    let warnings = c
        .log(0)
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("10.41.252.0/24"))
        .count();
    assert_eq!(
        warnings,
        1,
        "warned once, not on every resync:\n{}",
        c.log(0)
    );
    assert!(c.etcd.delete(&far));
    c.wait_ready(0);
}

#[test]
fn an_invalid_backend_at_start_up_is_waited_on_not_an_exit() {
    let mut c = Cluster::start(
        1,
        r#"{"Network":"10.43.0.0/16","Backend":{"Type":"bogus"}}"#,
        &[],
    );
    wait_for("the unknown-type error", Duration::from_secs(15), || {
        c.log(0)
            .contains("unknown backend type: \"bogus\"")
            .then_some(())
    });
    c.etcd.put(
        &c.config_key(),
        r#"{"Network":"10.43.0.0/16","Backend":{"Type":"vxlan","VNI":"seven"}}"#,
    );
    wait_for("the bad-VNI error", Duration::from_secs(15), || {
        c.log(0).contains("Backend key \"VNI\"").then_some(())
    });
    assert!(
        c.agents[0].as_mut().is_some_and(|a| a.is_running()),
        "still running, not a restart loop"
    );
    assert_eq!(count(&c.log(0), "unknown backend type"), 1, "{}", c.log(0));
    assert_eq!(c.healthz(0, "/readyz"), 503, "not ready while waiting");

    c.etcd.put(
        &c.config_key(),
        r#"{"Network":"10.43.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    assert!(c.wait_subnet(0).starts_with("10.43."));
    c.wait_ready(0);
}

#[test]
fn a_config_changed_while_running_is_reported_once_and_kept() {
    let mut c = Cluster::start(
        1,
        r#"{"Network":"10.44.0.0/16","Backend":{"Type":"host-gw"}}"#,
        &[],
    );
    let subnet = c.wait_subnet(0);
    c.etcd.put(
        &c.config_key(),
        r#"{"Network":"10.45.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    wait_for("the change to be reported", Duration::from_secs(30), || {
        c.log(0)
            .contains("Network 10.44.0.0/16 -> 10.45.0.0/16")
            .then_some(())
    });
    // Readiness is published on the control loop's next tick after the note.
    wait_for("the note in /readyz", Duration::from_secs(5), || {
        let body = c.hosts[0].exec("curl", &["-s", "-m", "2", "http://127.0.0.1:2401/readyz"]);
        body.contains("ready; note: the network config in etcd changed")
            .then_some(())
    });
    assert_eq!(c.healthz(0, "/readyz"), 200, "the agent keeps working");

    c.etcd.put(&c.config_key(), "{not json");
    wait_for(
        "the invalid config to be reported",
        Duration::from_secs(30),
        || c.log(0).contains("unusable now").then_some(()),
    );
    assert_eq!(count(&c.log(0), "Network 10.44.0.0/16 -> 10.45.0.0/16"), 1);
    assert_eq!(c.wait_subnet(0), subnet, "same subnet, same data plane");
}

#[test]
fn a_failed_subnet_env_write_is_retried_until_it_succeeds() {
    let mut c = Cluster::build(
        1,
        r#"{"Network":"10.46.0.0/16","Backend":{"Type":"host-gw"}}"#,
        &[],
    );
    // A regular file where subnet.env's directory should be: the write fails even for root.
    let dir = c.subnet_env(0).parent().expect("dir").to_path_buf();
    std::fs::write(&dir, "in the way").expect("blocker");
    c.start_agent(0);
    wait_for("the write failure", Duration::from_secs(15), || {
        c.log(0).contains("cannot write").then_some(())
    });
    assert_eq!(c.healthz(0, "/readyz"), 503, "not ready without subnet.env");

    std::fs::remove_file(&dir).expect("remove blocker");
    assert!(c.wait_subnet(0).starts_with("10.46."));
    c.wait_ready(0);
    assert_eq!(
        count(&c.log(0), "cannot write"),
        1,
        "logged once:\n{}",
        c.log(0)
    );
}

#[test]
fn a_reservation_is_reused_and_stays_without_a_ttl() {
    let mut c = Cluster::build(
        1,
        r#"{"Network":"10.47.0.0/16","Backend":{"Type":"host-gw"}}"#,
        &[],
    );
    // A reservation (flannel's Documentation/reservations.md): a lease key without a TTL.
    let key = format!("{}/subnets/10.47.7.0-24", c.prefix);
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
        c.host_ip(0)
    );
    c.etcd.put(&key, &value);
    c.start_agent(0);
    assert_eq!(
        c.wait_subnet(0),
        "10.47.7.1/24",
        "the reserved subnet is used"
    );
    assert!(
        c.log(0).contains("a reservation: kept without a TTL"),
        "{}",
        c.log(0)
    );
    assert_eq!(c.etcd.get(&key), Some(value));
    assert_eq!(c.etcd.lease_ttl(&key), None, "still no TTL");
    c.wait_ready(0);
}

#[test]
fn a_lease_taken_while_gone_moves_us_and_the_host_that_took_it_is_routed() {
    let mut c = Cluster::start(
        2,
        r#"{"Network":"10.48.0.0/16","Backend":{"Type":"host-gw"}}"#,
        &[],
    );
    let old = Cluster::network_of(&c.wait_subnet(0));
    c.wait_subnet(1);
    let key = format!("{}/subnets/{}", c.prefix, old.replace('/', "-"));
    let taker = r#"{"PublicIP":"192.168.100.99","PublicIPv6":null,"BackendType":"host-gw"}"#;
    // While agent 0 is frozen its lease is deleted and another host takes the subnet.
    let pid = c.agents[0].as_ref().and_then(|a| a.pid()).expect("pid");
    let signal = |sig| {
        // SAFETY: kill(2) of the agent process this test started.
        assert_eq!(
            unsafe { libc::kill(i32::try_from(pid).expect("pid"), sig) },
            0
        );
    };
    signal(libc::SIGSTOP);
    assert!(c.etcd.delete(&key));
    c.etcd.put(&key, taker);
    signal(libc::SIGCONT);

    let new = wait_for(
        "agent 0 to move to a new subnet",
        Duration::from_secs(30),
        || {
            flanneld_tests::cluster::flannel_subnet(&c.subnet_env(0))
                .map(|s| Cluster::network_of(&s))
                .filter(|s| *s != old)
        },
    );
    assert!(c.log(0).contains("SUBNET CHANGED"), "{}", c.log(0));
    assert_eq!(
        c.etcd.get(&key).as_deref(),
        Some(taker),
        "the taker's lease is left alone"
    );
    wait_for(
        "host 0 to route its old subnet to the host that took it",
        Duration::from_secs(15),
        || {
            c.route(0, &old)
                .contains("via 192.168.100.99")
                .then_some(())
        },
    );
    wait_for(
        "host 1 to route host 0's new subnet",
        Duration::from_secs(15),
        || {
            c.route(1, &new)
                .contains(&format!("via {}", c.host_ip(0)))
                .then_some(())
        },
    );
}
