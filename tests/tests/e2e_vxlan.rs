//! End to end, vxlan (issue 3): hosts 0 and 1 on LAN A, host 2 on LAN B behind a router (no
//! layer 2 between the LANs), etcd over mutual TLS on LAN A, the real agent on every host and a
//! pod behind `cni0` on each. What a user sees: `ip -d link`, `ip neigh`, `bridge fdb` and
//! `ip route` on each host, pings and HTTP source addresses between pods, the lease in etcd.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flanneld_tests::cluster::{env_value, holds, wait_for, wait_seen_by, Cluster, Pod, Whoami};

const VXLAN: &str = r#"{"Network":"10.30.0.0/16","Backend":{"Type":"vxlan"}}"#;
const DIRECT: &str =
    r#"{"Network":"10.31.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
/// The LAN A hosts; the remaining host of the cluster is on LAN B.
const ON_LAN_A: usize = 2;
/// The vxlan device for the default VNI.
const DEV: &str = "flannel.1";
/// How long a repair may take: notifications make it immediate, the 10 s resync is the backstop.
const REPAIR: Duration = Duration::from_secs(5);

/// A host as its peers must see it.
#[derive(Clone, Debug)]
struct Host {
    /// LAN address (the lease's PublicIP).
    ip: String,
    /// `FLANNEL_SUBNET`, e.g. `10.30.5.1/24`.
    flannel_subnet: String,
    /// The lease subnet, e.g. `10.30.5.0/24`.
    net: String,
    /// The MAC of `flannel.1` as `ip -d link` shows it.
    mac: String,
}

impl Host {
    /// The subnet's network address, the next hop of the overlay route (`10.30.5.0`).
    fn net_addr(&self) -> &str {
        self.net.split_once('/').expect("CIDR").0
    }
}

/// Waits for every host's subnet.env and reads its device.
fn hosts(c: &mut Cluster) -> Vec<Host> {
    (0..c.hosts.len())
        .map(|i| {
            let flannel_subnet = c.wait_subnet(i);
            Host {
                ip: c.host_ip(i),
                net: Cluster::network_of(&flannel_subnet),
                flannel_subnet,
                mac: vtep_mac(c, i),
            }
        })
        .collect()
}

/// `ip -d link show flannel.1` on host `i`.
fn link(c: &Cluster, i: usize) -> String {
    c.hosts[i].exec("ip", &["-d", "link", "show", DEV])
}

/// The `link/ether` address of flannel.1 on host `i`.
fn vtep_mac(c: &Cluster, i: usize) -> String {
    let link = link(c, i);
    let mut words = link.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no MAC in {link}"))
        .to_string()
}

/// Whether host `i` has flannel.1.
fn has_device(c: &Cluster, i: usize) -> bool {
    c.hosts[i]
        .try_exec("ip", &["link", "show", DEV])
        .status
        .success()
}

/// The interface index of flannel.1 on host `i` (changes only when the device is recreated).
fn ifindex(c: &Cluster, i: usize) -> String {
    let link = link(c, i);
    link.split_once(':').expect("ip link line").0.to_string()
}

/// The etcd key of a lease subnet.
fn lease_key(c: &Cluster, net: &str) -> String {
    format!("{}/subnets/{}", c.prefix, net.replace('/', "-"))
}

/// The VtepMAC `h`'s lease in etcd publishes.
fn published_mac(c: &Cluster, h: &Host) -> Option<String> {
    let lease: serde_json::Value =
        serde_json::from_str(&c.etcd.get(&lease_key(c, &h.net))?).ok()?;
    lease["BackendData"]["VtepMAC"].as_str().map(str::to_string)
}

/// FLANNEL_MTU of host `i`.
fn flannel_mtu(c: &Cluster, i: usize) -> u32 {
    env_value(&c.subnet_env(i), "FLANNEL_MTU")
        .and_then(|m| m.parse().ok())
        .expect("FLANNEL_MTU in subnet.env")
}

/// The peer entries one host shows: `ip neigh` and `bridge fdb` of flannel.1, and our routes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Programmed {
    neigh: BTreeSet<String>,
    fdb: BTreeSet<String>,
    routes: BTreeSet<String>,
}

/// Lines of `program args...` on host `i`, whitespace-normalised.
fn lines(c: &Cluster, i: usize, program: &str, args: &[&str]) -> BTreeSet<String> {
    c.hosts[i]
        .exec(program, args)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// What host `i` has programmed now.
fn programmed(c: &Cluster, i: usize) -> Programmed {
    Programmed {
        neigh: lines(c, i, "ip", &["neigh", "show", "dev", DEV]),
        fdb: lines(c, i, "bridge", &["fdb", "show", "dev", DEV]),
        routes: lines(c, i, "ip", &["route", "show", "proto", "70"]),
    }
}

/// What Go flanneld programs on a host for `peers`: the overlay entries (neighbour, FDB entry,
/// onlink route via flannel.1), or just a route via the LAN address for a peer in `direct`.
fn expected(peers: &[&Host], direct: &[&Host]) -> Programmed {
    let mut want = Programmed::default();
    for p in peers {
        if direct.iter().any(|d| d.ip == p.ip) {
            want.routes
                .insert(format!("{} via {} dev eth0", p.net, p.ip));
            continue;
        }
        let addr = p.net_addr();
        want.neigh
            .insert(format!("{addr} lladdr {} PERMANENT", p.mac));
        want.fdb
            .insert(format!("{} dst {} self permanent", p.mac, p.ip));
        want.routes
            .insert(format!("{} via {addr} dev {DEV} onlink", p.net));
    }
    want
}

/// How many times host `i`'s agents re-ran backend setup because of a kernel notification.
fn setups(c: &Cluster, i: usize) -> usize {
    c.log(i).matches("re-running backend setup").count()
}

/// Waits until host `i` shows exactly `want`; on timeout panics with what it shows and its log.
fn wait_programmed(c: &Cluster, i: usize, want: &Programmed, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = programmed(c, i);
        if now == *want {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "host {i} after {timeout:?}:\n{now:#?}\nwant:\n{want:#?}\nlog:\n{}",
                c.log(i)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every host of the cluster shows the entries for every other member of `hosts` (which may
/// list peers beyond the cluster's hosts): overlay entries, or with DirectRouting a direct route
/// for peers on its own LAN.
fn wait_all_programmed(c: &Cluster, hosts: &[Host], direct_routing: bool) {
    for i in 0..c.hosts.len() {
        let peers: Vec<&Host> = hosts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, h)| h)
            .collect();
        let on_my_lan: Vec<&Host> = if direct_routing {
            peers
                .iter()
                .copied()
                .filter(|p| same_lan(&p.ip, &hosts[i].ip))
                .collect()
        } else {
            Vec::new()
        };
        wait_programmed(c, i, &expected(&peers, &on_my_lan), Duration::from_secs(15));
    }
}

/// Whether two LAN addresses are on the same /24.
fn same_lan(a: &str, b: &str) -> bool {
    a.rsplit_once('.').map(|x| x.0) == b.rsplit_once('.').map(|x| x.0)
}

/// One ping from `pod` to `dst` with extra ping flags; true if a reply came back.
fn ping(pod: &Pod, dst: &str, extra: &[&str]) -> bool {
    let mut args = vec!["-c1", "-W2"];
    args.extend_from_slice(extra);
    args.push(dst);
    pod.ns.try_exec("ping", &args).status.success()
}

/// Every pod pings every other pod, also with a don't-fragment packet that fills FLANNEL_MTU
/// (`mtu` − 28 bytes of ICMP payload); every pod's HTTP request to every other pod arrives from
/// the pod's own address (no masquerading inside the cluster network).
fn assert_pods_connected(pods: &[Pod], mtu: u32) {
    let full = (mtu - 28).to_string();
    let _servers: Vec<Whoami> = pods.iter().map(|p| Whoami::start(&p.ns)).collect();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            wait_for(
                &format!("pod {i} to ping pod {j} ({})", b.ip),
                Duration::from_secs(5),
                || ping(a, &b.ip, &[]).then_some(()),
            );
            assert!(
                ping(a, &b.ip, &["-M", "do", "-s", &full]),
                "pod {i} cannot reach pod {j} with a {mtu}-byte don't-fragment packet"
            );
            assert_eq!(
                wait_seen_by(&a.ns, &b.ip),
                a.ip,
                "pod {j}'s server sees pod {i}'s own address"
            );
        }
    }
}

#[test]
fn vxlan_across_two_lans_connects_pods_and_converges_after_faults() {
    let mut c = Cluster::start_two_lans(ON_LAN_A, 1, VXLAN, &["--ip-masq"]);
    let hosts = hosts(&mut c);
    let nets: BTreeSet<&str> = hosts.iter().map(|h| h.net.as_str()).collect();
    assert_eq!(nets.len(), 3, "each host has its own subnet: {hosts:?}");

    for (i, h) in hosts.iter().enumerate() {
        // subnet.env: FLANNEL_MTU is the underlay's 1500 minus the 50 bytes of VXLAN overhead.
        let env = std::fs::read_to_string(c.subnet_env(i)).unwrap();
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.30.0.0/16\nFLANNEL_SUBNET={}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
                h.flannel_subnet
            )
        );
        // The device as `ip -d link` shows it.
        let link = link(&c, i);
        for want in [
            "mtu 1450 ".to_string(),
            " vxlan id 1 ".to_string(),
            format!(" local {} ", h.ip),
            " dev eth0 ".to_string(),
            " dstport 8472 ".to_string(),
            " nolearning ".to_string(),
        ] {
            assert!(
                link.contains(&want),
                "host {i}: {want:?} missing in\n{link}"
            );
        }
        assert!(link.contains(",UP,"), "host {i}: device down\n{link}");
        let mac_first = u8::from_str_radix(&h.mac[..2], 16).unwrap();
        assert_eq!(mac_first & 3, 2, "locally administered unicast: {}", h.mac);
        // Its address is the subnet's network address as a /32.
        let addrs = c.hosts[i].exec("ip", &["-4", "-o", "addr", "show", "dev", DEV]);
        assert!(
            addrs.contains(&format!("inet {}/32 ", h.net_addr())) && addrs.lines().count() == 1,
            "host {i}: {addrs}"
        );
        // The lease in etcd, byte for byte as Go flanneld writes it.
        assert_eq!(
            c.etcd.get(&lease_key(&c, &h.net)),
            Some(format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                h.ip, h.mac
            )),
            "lease of host {i}"
        );
    }
    let mtu = flannel_mtu(&c, 0);

    wait_all_programmed(&c, &hosts, false);
    let pods: Vec<Pod> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Pod::new(&c.hosts[i], &h.flannel_subnet, 2))
        .collect();
    assert_pods_connected(&pods, mtu);
    // One byte more than FLANNEL_MTU does not fit through flannel.1 with DF set.
    assert!(
        !ping(
            &pods[0],
            &pods[2].ip,
            &["-M", "do", "-s", &(mtu - 27).to_string()]
        ),
        "FLANNEL_MTU {mtu} is the overlay's path MTU"
    );

    // The device deleted by hand comes back with the same MAC and every peer's entries.
    c.hosts[0].exec("ip", &["link", "del", DEV]);
    let peers_of_0 = [&hosts[1], &hosts[2]];
    wait_for("flannel.1 to come back", REPAIR, || {
        has_device(&c, 0).then_some(())
    });
    wait_programmed(&c, 0, &expected(&peers_of_0, &[]), REPAIR);
    assert_eq!(
        vtep_mac(&c, 0),
        hosts[0].mac,
        "the recreated device keeps the VtepMAC"
    );
    assert!(link(&c, 0).contains(",UP,"), "{}", link(&c, 0));
    for (j, pod) in pods.iter().enumerate().skip(1) {
        wait_for(&format!("pod {j} to reach pod 0 again"), REPAIR, || {
            ping(pod, &pods[0].ip, &[]).then_some(())
        });
    }
    assert_eq!(
        setups(&c, 0),
        1,
        "one setup repairs it: the notifications of its own writes need no second one; log:\n{}",
        c.log(0)
    );

    // An agent restart keeps the device (same index), its MAC (in the kernel and in etcd) and
    // the subnet.
    let index = ifindex(&c, 0);
    assert_eq!(c.stop_agent(0), Some(0), "log:\n{}", c.log(0));
    std::fs::remove_file(c.subnet_env(0)).unwrap();
    c.start_agent(0);
    assert_eq!(
        c.wait_subnet(0),
        hosts[0].flannel_subnet,
        "restart keeps the subnet"
    );
    assert_eq!(ifindex(&c, 0), index, "restart reuses the device");
    assert_eq!(vtep_mac(&c, 0), hosts[0].mac, "restart keeps the MAC");
    assert_eq!(published_mac(&c, &hosts[0]), Some(hosts[0].mac.clone()));
    wait_programmed(&c, 0, &expected(&peers_of_0, &[]), REPAIR);
    assert!(
        ping(&pods[2], &pods[0].ip, &[]),
        "pod 2 -> pod 0 after the restart"
    );

    // A MAC changed by hand is set back to the published VtepMAC.
    c.hosts[0].exec("ip", &["link", "set", DEV, "address", "02:00:00:00:00:99"]);
    wait_for("the published MAC to be restored", REPAIR, || {
        (vtep_mac(&c, 0) == hosts[0].mac).then_some(())
    });
    holds(
        "one set-up repaired the MAC",
        Duration::from_millis(500),
        || setups(&c, 0) == 2,
    );

    // The device deleted while the agent is down: the restarted agent creates a new one with a
    // new MAC and publishes it; the peers replace their entries (the old FDB entry goes too).
    assert_eq!(c.stop_agent(0), Some(0), "log:\n{}", c.log(0));
    c.hosts[0].exec("ip", &["link", "del", DEV]);
    c.start_agent(0);
    let new_mac = wait_for("flannel.1 to be recreated", REPAIR, || {
        has_device(&c, 0).then(|| vtep_mac(&c, 0))
    });
    assert_ne!(new_mac, hosts[0].mac);
    let mut hosts = hosts;
    hosts[0].mac = new_mac;
    wait_for("the new VtepMAC in etcd", REPAIR, || {
        (published_mac(&c, &hosts[0]).as_ref() == Some(&hosts[0].mac)).then_some(())
    });
    wait_all_programmed(&c, &hosts, false);
    assert!(
        ping(&pods[2], &pods[0].ip, &[]),
        "pod 2 -> pod 0 with the new MAC"
    );

    // A peer gone for good: stop it, delete its lease; the others drop its neighbour, FDB entry
    // and route and still reach each other.
    assert_eq!(c.stop_agent(2), Some(0), "log:\n{}", c.log(2));
    assert!(c.etcd.delete(&lease_key(&c, &hosts[2].net)));
    wait_programmed(&c, 0, &expected(&[&hosts[1]], &[]), REPAIR);
    wait_programmed(&c, 1, &expected(&[&hosts[0]], &[]), REPAIR);
    assert!(ping(&pods[0], &pods[1].ip, &[]));
    assert!(ping(&pods[1], &pods[0].ip, &[]));
}

#[test]
fn vxlan_direct_routing_routes_lan_peers_directly_and_others_through_the_overlay() {
    let mut c = Cluster::start_two_lans(ON_LAN_A, 1, DIRECT, &["--ip-masq"]);
    let hosts = hosts(&mut c);
    wait_all_programmed(&c, &hosts, true);

    // What `ip route` shows on a LAN A host: the other LAN A host's subnet via its LAN address,
    // the LAN B host's subnet through the overlay.
    assert_eq!(
        c.route(0, &hosts[1].net),
        format!("{} via {} dev eth0 proto 70", hosts[1].net, hosts[1].ip)
    );
    assert_eq!(
        c.route(0, &hosts[2].net),
        format!(
            "{} via {} dev {DEV} proto 70 onlink",
            hosts[2].net,
            hosts[2].net_addr()
        )
    );
    let mtu = flannel_mtu(&c, 0);
    assert_eq!(mtu, 1450, "underlay MTU 1500 - 50");

    let pods: Vec<Pod> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Pod::new(&c.hosts[i], &h.flannel_subnet, 2))
        .collect();
    assert_pods_connected(&pods, mtu);

    // A peer lease as flanneld v0.11 writes it (no VNI, no PublicIPv6), for a host on LAN B:
    // accepted, routed directly from LAN B and through the overlay from LAN A; gone with its key.
    let old = Host {
        ip: "192.168.101.50".into(),
        flannel_subnet: "10.31.250.1/24".into(),
        net: "10.31.250.0/24".into(),
        mac: "02:aa:bb:cc:dd:ee".into(),
    };
    c.etcd.put(
        &lease_key(&c, &old.net),
        &format!(
            r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VtepMAC":"{}"}}}}"#,
            old.ip, old.mac
        ),
    );
    let mut with_old = hosts.clone();
    with_old.push(old);
    wait_all_programmed(&c, &with_old, true);
    assert!(c.etcd.delete(&lease_key(&c, &with_old[3].net)));
    wait_all_programmed(&c, &hosts, true);
}
