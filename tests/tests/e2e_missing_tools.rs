//! End to end, a host without the tools a feature needs (issue 27, docs/install.md): the agent
//! names what is missing and the package that brings it, and stops rather than run without the
//! rules it was asked for.

use std::time::Duration;

use flanneld_tests::cluster::{wait_for, Agent, Cluster};

const CONFIG: &str = r#"{"Network":"10.15.0.0/16","Backend":{"Type":"host-gw"}}"#;

#[test]
fn without_iptables_the_agent_stops_naming_the_program_and_its_package() {
    let mut c = Cluster::build(1, CONFIG, &["--ip-masq"]);
    // A PATH with `ip` (which `ip netns exec` needs) and nothing else: no iptables binaries.
    let bin = c.dir.path().join("bin-without-iptables");
    std::fs::create_dir_all(&bin).unwrap();
    let ip = flanneld_tests::netns::run("sh", &["-c", "command -v ip"]);
    std::os::unix::fs::symlink(ip.trim(), bin.join("ip")).unwrap();
    let log = c.dir.path().join("h0.log");
    let path = bin.to_str().unwrap();
    let agent = Agent::start_with_env(&c.hosts[0], &c.agent_args(0), &log, &[("PATH", path)]);
    c.agents[0] = Some(agent);
    // It stops (supervisor or systemd restarts it) rather than run without the rules asked for.
    wait_for("the agent to stop", Duration::from_secs(30), || {
        let running = c.agents[0].as_mut().is_some_and(Agent::is_running);
        (!running).then_some(())
    });
    let log = c.log(0);
    assert!(
        log.contains("cannot run `iptables-restore")
            && log.contains("(iptables-restore is not installed: install the iptables package)"),
        "the missing program and its package are named:\n{log}"
    );
    assert!(
        !c.subnet_env(0).exists(),
        "no subnet.env: CNI must not start pods on a host without the masquerade"
    );
}
