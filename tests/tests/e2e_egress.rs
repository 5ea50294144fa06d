//! End to end, the egress policy (issue 10): two host-gw hosts with `--ip-masq` and
//! `--ip-masq-config`, pods behind `cni0`, and whoami servers on the hosts' LAN:
//!
//! * a "corporate" machine (192.168.100.70) that routes the pod subnets back via the hosts,
//!   inside `nonMasqueradeCIDRs` 192.168.100.0/25;
//! * an "exception" machine (192.168.100.50) that also routes pods, inside `masqueradeCIDRs`
//!   192.168.100.48/28;
//! * an "internet" machine (192.168.100.200), outside both lists, with no route to any pod;
//! * host 1 itself (192.168.100.12, a node IP inside the listed range).
//!
//! What a user sees: the source address each server reports, `iptables-save` and `flanneld
//! explain`.

use std::fs;
use std::path::Path;
use std::time::Duration;

use flanneld_tests::cluster::{flanneld_bin, wait_for, wait_seen_by, Cluster, Pod, Whoami};
use flanneld_tests::netns::Netns;

const CONFIG: &str = r#"{"Network":"10.21.0.0/16","Backend":{"Type":"host-gw"}}"#;
const CORPORATE: &str = "192.168.100.70";
const EXCEPTION: &str = "192.168.100.50";
const INTERNET: &str = "192.168.100.200";
// resyncInterval is an hour: edits within the test reach the agent only through inotify.
const POLICY: &str = "nonMasqueradeCIDRs: [192.168.100.0/25]\nmasqueradeCIDRs: [192.168.100.48/28]\nresyncInterval: 1h\n";
const WITHOUT_EXCEPTION: &str = "nonMasqueradeCIDRs: [192.168.100.0/25]\nresyncInterval: 1h\n";
const BROKEN: &str = "nonMasqueradeCIDRs: [192.168.100.5/24]\n";
/// Our jump in nat POSTROUTING, as `iptables-save` prints it.
const MASQ_JUMP: &str = r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#;

/// A machine on the LAN with a whoami server; with `routes_pods`, it routes each pod subnet
/// back via its host.
fn machine(c: &Cluster, ip: &str, subnets: &[String], routes_pods: bool) -> (Netns, Whoami) {
    let ns = c.external(ip);
    if routes_pods {
        c.route_pods_from(&ns, subnets);
    }
    let server = Whoami::start(&ns);
    (ns, server)
}

/// Writes the policy file the way editors and ConfigMaps do: a new file renamed over the old.
fn write_policy(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// The `-A POSTROUTING` lines of host `i`'s nat table.
fn postrouting(c: &Cluster, i: usize) -> Vec<String> {
    c.hosts[i]
        .exec("iptables-nft-save", &["-t", "nat"])
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING "))
        .map(str::to_string)
        .collect()
}

/// Runs `flanneld explain <pod> <dst> --json` on host `i`; returns the exit code and the JSON.
fn explain(
    c: &Cluster,
    i: usize,
    pod: &str,
    dst: &str,
    policy: &Path,
) -> (Option<i32>, serde_json::Value) {
    let subnet_file = format!("--subnet-file={}", c.subnet_env(i).display());
    let policy = format!("--ip-masq-config={}", policy.display());
    let bin = flanneld_bin();
    let args = [
        "explain",
        pod,
        dst,
        "--json",
        &subnet_file,
        &policy,
        "--iptables-backend=nft",
    ];
    let out = c.hosts[i].try_exec(bin.to_str().unwrap(), &args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

#[test]
fn the_egress_policy_decides_pod_source_addresses_and_follows_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("ip-masq-agent");
    fs::write(&policy, POLICY).unwrap();
    let flag = format!("--ip-masq-config={}", policy.display());
    let mut c = Cluster::build(2, CONFIG, &["--ip-masq", &flag, "--iptables-resync=1"]);
    c.start_agent(0);
    c.start_agent(1);
    let subnets = [c.wait_subnet(0), c.wait_subnet(1)];
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let _pod_servers: Vec<Whoami> = pods.iter().map(|p| Whoami::start(&p.ns)).collect();
    let (_corp, _corp_server) = machine(&c, CORPORATE, &subnets, true);
    let (_exc, _exc_server) = machine(&c, EXCEPTION, &subnets, true);
    let (_net, _net_server) = machine(&c, INTERNET, &subnets, false);
    let _node_server = Whoami::start(&c.hosts[1]);
    let pod = &pods[0];
    let host0 = c.host_ip(0);

    // The policy as written: corporate and node IPs keep the pod address, the exception and the
    // internet see the host's; pod to pod is untouched.
    assert_eq!(wait_seen_by(&pod.ns, CORPORATE), pod.ip);
    assert_eq!(wait_seen_by(&pod.ns, &c.host_ip(1)), pod.ip);
    assert_eq!(wait_seen_by(&pod.ns, EXCEPTION), host0);
    assert_eq!(wait_seen_by(&pod.ns, INTERNET), host0);
    assert_eq!(wait_seen_by(&pod.ns, &pods[1].ip), pod.ip);

    // The exception is removed from the file: applied without a restart.
    write_policy(&policy, WITHOUT_EXCEPTION);
    wait_for(
        "the exception machine to see the pod address",
        Duration::from_secs(10),
        || {
            (flanneld_tests::cluster::seen_by(&pod.ns, EXCEPTION).as_deref()
                == Some(pod.ip.as_str()))
            .then_some(())
        },
    );

    // A broken file: one error naming the key, the policy in force is kept, and the rules
    // still heal after a flush.
    write_policy(&policy, BROKEN);
    wait_for(
        "the agent to reject the broken file",
        Duration::from_secs(10),
        || {
            c.log(0)
                .contains("key nonMasqueradeCIDRs, value \"192.168.100.5/24\"")
                .then_some(())
        },
    );
    c.hosts[0].exec("iptables-nft", &["-t", "nat", "-F"]);
    wait_for(
        "host 0's egress rules back",
        Duration::from_secs(10),
        || {
            let nat = c.hosts[0].exec("iptables-nft-save", &["-t", "nat"]);
            (nat.contains(MASQ_JUMP) && nat.contains("flanneld egress: nonMasqueradeCIDRs"))
                .then_some(())
        },
    );
    assert_eq!(
        wait_seen_by(&pod.ns, EXCEPTION),
        pod.ip,
        "the last good policy"
    );
    assert_eq!(wait_seen_by(&pod.ns, INTERNET), host0);
    let log = c.log(0);
    assert_eq!(
        log.matches("key nonMasqueradeCIDRs, value").count(),
        1,
        "reported once; log:\n{log}"
    );

    // Fixing the file applies it: the exception is back.
    write_policy(&policy, POLICY);
    wait_for(
        "the exception machine to see the host address again",
        Duration::from_secs(10),
        || {
            (flanneld_tests::cluster::seen_by(&pod.ns, EXCEPTION).as_deref()
                == Some(host0.as_str()))
            .then_some(())
        },
    );

    // explain: with docker's rule inserted ahead of our jump (agent stopped, so it stays there),
    // docker's rule decides and the live rules disagree with the policy.
    c.stop_agent(0);
    let docker = [
        "-t",
        "nat",
        "-I",
        "POSTROUTING",
        "-s",
        &Cluster::network_of(&subnets[0]),
        "!",
        "-o",
        "cni0",
        "-j",
        "MASQUERADE",
    ];
    c.hosts[0].exec("iptables-nft", &docker);
    let (code, answer) = explain(&c, 0, &pod.ip, CORPORATE, &policy);
    assert_eq!(code, Some(1), "{answer:#}");
    assert_eq!(answer["decided_by"]["chain"], "POSTROUTING", "{answer:#}");
    assert_eq!(answer["decided_by"]["position"], 1, "{answer:#}");
    assert!(answer["decided_by"]["rule"]
        .as_str()
        .unwrap()
        .contains("! -o cni0 -j MASQUERADE"));
    assert_eq!(
        (answer["rewritten"].clone(), answer["agrees"].clone()),
        (true.into(), false.into())
    );

    // The agent comes back; docker restarts and inserts its rule again; after the next resync
    // our jump is first and our egress rule decides.
    c.start_agent(0);
    c.wait_ready(0);
    c.hosts[0].exec("iptables-nft", &docker);
    wait_for("our jump first again", Duration::from_secs(10), || {
        (postrouting(&c, 0).first().map(String::as_str) == Some(MASQ_JUMP)).then_some(())
    });
    let (code, answer) = explain(&c, 0, &pod.ip, CORPORATE, &policy);
    assert_eq!(code, Some(0), "{answer:#}");
    assert_eq!(
        answer["decided_by"]["chain"], "FLANNEL-POSTRTG",
        "{answer:#}"
    );
    assert!(answer["decided_by"]["rule"]
        .as_str()
        .unwrap()
        .contains("flanneld egress: nonMasqueradeCIDRs"));
    assert_eq!(answer["source_after"], pod.ip.as_str());
    assert_eq!(wait_seen_by(&pod.ns, CORPORATE), pod.ip);
}
