//! Soak (not in the default run): 200 fake peer leases churned (added, changed, deleted, and given
//! hostile values) for `SOAK_SECONDS` (default 600) against 3 real agents on vxlan. At the end every
//! host's kernel state must equal what the valid leases want, exactly, and no agent may have grown
//! in memory or file descriptors since the first minute. Run it with
//!
//! ```sh
//! cargo build -p flanneld && cargo test -p flanneld-tests --test soak -- --ignored --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flanneld_tests::cluster::{wait_for, Cluster};

const CONFIG: &str = r#"{"Network":"10.64.0.0/15","Backend":{"Type":"vxlan"}}"#;
const SLOTS: u8 = 200;

/// What a fake peer's key holds now.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    Absent,
    /// A valid vxlan lease: PublicIP last octet and VtepMAC version.
    Valid {
        ip: u8,
        version: u8,
    },
    /// A hostile value (loopback/multicast PublicIP, multicast VtepMAC): never programmed.
    Hostile(u8),
}

fn subnet(slot: u8) -> String {
    format!("10.65.{slot}.0/24")
}

fn mac(slot: u8, version: u8) -> String {
    format!("02:00:00:00:{slot:02x}:{version:02x}")
}

fn value(slot: u8, state: Slot) -> Option<String> {
    let lease = |ip: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    match state {
        Slot::Absent => None,
        Slot::Valid { ip, version } => {
            Some(lease(&format!("192.168.100.{ip}"), &mac(slot, version)))
        }
        Slot::Hostile(kind) => Some(match kind % 3 {
            0 => lease("127.0.0.1", &mac(slot, 0)),
            1 => lease("224.0.0.1", &mac(slot, 0)),
            _ => lease("192.168.100.200", "01:00:5e:00:00:01"),
        }),
    }
}

/// A small deterministic generator (xorshift), so a failing soak can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u8 {
        u8::try_from(self.next() % n).unwrap_or(0)
    }
}

/// The agent's resident memory (kB) and open file descriptors.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// The fake peers' objects on host `i`: routes, neighbours and FDB entries in 10.65.0.0/16.
fn kernel_state(
    c: &Cluster,
    i: usize,
) -> (
    BTreeSet<String>,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
) {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = c.hosts[i].exec(args[0], &args[1..]);
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
    };
    let fake = |s: &str| s.starts_with("10.65.");
    let routes = json(&["ip", "-j", "route", "show", "proto", "70"]);
    let routes = (routes.as_array().into_iter().flatten())
        .filter_map(|r| r["dst"].as_str().map(str::to_string))
        .filter(|d| fake(d))
        .collect();
    let neigh = json(&["ip", "-j", "neigh", "show", "dev", "flannel.1"]);
    let neigh = (neigh.as_array().into_iter().flatten())
        .filter_map(|n| {
            Some((
                n["dst"].as_str()?.to_string(),
                n["lladdr"].as_str()?.to_string(),
            ))
        })
        .filter(|(d, _)| fake(d))
        .collect();
    let fdb = json(&["bridge", "-j", "fdb", "show", "dev", "flannel.1"]);
    let fdb = (fdb.as_array().into_iter().flatten())
        .filter_map(|f| {
            Some((
                f["mac"].as_str()?.to_string(),
                f["dst"].as_str()?.to_string(),
            ))
        })
        .filter(|(m, _)| m.starts_with("02:00:00:00:") || m.starts_with("01:"))
        .collect();
    (routes, neigh, fdb)
}

/// What the valid slots want on every host.
fn wanted(
    slots: &[Slot],
) -> (
    BTreeSet<String>,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
) {
    let mut want = (BTreeSet::new(), BTreeMap::new(), BTreeMap::new());
    for (slot, state) in (0..SLOTS).zip(slots) {
        if let Slot::Valid { ip, version } = *state {
            want.0.insert(subnet(slot));
            want.1.insert(format!("10.65.{slot}.0"), mac(slot, version));
            want.2
                .insert(mac(slot, version), format!("192.168.100.{ip}"));
        }
    }
    want
}

#[test]
#[ignore = "soak: 10 minutes by default (SOAK_SECONDS); run with --ignored, see docs/reliability.md"]
fn soak_200_churning_peers_with_hostile_values_against_3_agents() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut c = Cluster::start(3, CONFIG, &["-v=0"]);
    for i in 0..3 {
        c.wait_subnet(i);
    }
    let pids: Vec<u32> = (0..3)
        .map(|i| c.agents[i].as_ref().and_then(|a| a.pid()).expect("pid"))
        .collect();
    let mut slots = vec![Slot::Absent; usize::from(SLOTS)];
    let mut rng = Rng(0x5eed_f1a2_0e11_d000);
    let (start, mut ops, mut samples) = (Instant::now(), 0u64, Vec::new());
    let mut next_sample = start + Duration::from_secs(60);
    while start.elapsed() < Duration::from_secs(seconds) {
        let slot = rng.below(u64::from(SLOTS));
        let state = match rng.below(10) {
            0..=4 => Slot::Valid {
                ip: 100 + rng.below(100),
                version: rng.below(256),
            },
            5..=7 => Slot::Absent,
            kind => Slot::Hostile(kind),
        };
        let key = format!("{}/subnets/{}", c.prefix, subnet(slot).replace('/', "-"));
        match value(slot, state) {
            Some(v) => c.etcd.put(&key, &v),
            None => {
                c.etcd.delete(&key);
            }
        }
        slots[usize::from(slot)] = state;
        ops += 1;
        if Instant::now() >= next_sample {
            let sample: Vec<(u64, usize)> = pids.iter().map(|p| footprint(*p)).collect();
            println!(
                "{:>4}s {ops:>6} writes; RSS kB / fds per agent: {sample:?}",
                start.elapsed().as_secs()
            );
            samples.push(sample);
            next_sample += Duration::from_secs(60);
        }
    }
    let want = wanted(&slots);
    for i in 0..3 {
        wait_for(
            &format!("host {i} to match the leases exactly"),
            Duration::from_secs(60),
            || (kernel_state(&c, i) == want).then_some(()),
        );
        assert!(
            c.agents[i].as_mut().is_some_and(|a| a.is_running()),
            "agent {i} alive"
        );
    }
    let last: Vec<(u64, usize)> = pids.iter().map(|p| footprint(*p)).collect();
    println!(
        "end: {ops} writes, {} valid peers; RSS kB / fds: {last:?}",
        want.0.len()
    );
    if let Some(first) = samples.first() {
        for (i, ((rss0, fds0), (rss1, fds1))) in first.iter().zip(&last).enumerate() {
            assert!(
                rss1 <= &(rss0 + 2048),
                "agent {i} grew from {rss0} kB to {rss1} kB"
            );
            assert!(
                // One transient socket (a netlink dump, an etcd request) may be open at a sample.
                *fds1 <= fds0 + 1,
                "agent {i} holds more descriptors: {fds0} -> {fds1}"
            );
        }
    }
}
