//! End to end in the etcd v2 keyspace (a flanneld v0.11 cluster): the config written with
//! `ETCDCTL_API=2 etcdctl set`, three hosts running our agent (host-gw, and vxlan), and a fourth
//! host emulating an unmodified flanneld v0.11 agent — its lease written in v0.11's exact format
//! with `etcdctl` v2 and its routes (and for vxlan its device, neighbours and FDB entries) added by
//! hand as v0.11 programs them, since no Go binary can be built here. Pods on every host reach
//! pods on every other host with their own source addresses.

use std::time::Duration;

use flanneld_tests::cluster::{wait_for, wait_seen_by, Cluster, Pod, Whoami};

const HOSTGW: &str = r#"{"Network":"10.40.0.0/16","Backend":{"Type":"host-gw"}}"#;
const VXLAN: &str = r#"{"Network":"10.41.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// The LAN address of the emulated v0.11 host.
const OLD_IP: &str = "192.168.100.20";
/// The VtepMAC of the emulated v0.11 host's flannel.1.
const OLD_MAC: &str = "02:0b:11:00:00:01";

/// One of our agents' hosts as its peers see it.
struct Peer {
    ip: String,
    flannel_subnet: String,
    net: String,
    /// The v2 lease value.
    lease: serde_json::Value,
}

/// Waits for the agents' subnets and reads their leases from the v2 keyspace; checks nothing
/// was written to the v3 keyspace.
fn peers(c: &mut Cluster) -> Vec<Peer> {
    let peers: Vec<Peer> = (0..c.hosts.len())
        .map(|i| {
            let flannel_subnet = c.wait_subnet(i);
            let net = Cluster::network_of(&flannel_subnet);
            let key = lease_key(c, &net);
            let node = c.etcd.v2_get(&key).unwrap_or_else(|| panic!("{key} in v2"));
            let ttl = node["ttl"].as_i64().unwrap_or_default();
            assert!(ttl > 86000, "{key}: v2 TTL {ttl}");
            let lease = serde_json::from_str(node["value"].as_str().unwrap()).unwrap();
            Peer {
                ip: c.host_ip(i),
                flannel_subnet,
                net,
                lease,
            }
        })
        .collect();
    let v3 = c
        .etcd
        .etcdctl(&["get", "--prefix", "--keys-only", &c.prefix]);
    assert!(v3.trim().is_empty(), "nothing in the v3 keyspace: {v3}");
    for i in 0..c.hosts.len() {
        let log = c.log(i);
        assert!(
            log.contains("using the etcd v2 keyspace") || log.contains(", API v2"),
            "host {i} logs the keyspace it uses:\n{}",
            c.log(i)
        );
    }
    peers
}

fn lease_key(c: &Cluster, net: &str) -> String {
    format!("{}/subnets/{}", c.prefix, net.replace('/', "-"))
}

/// The subnet's network address (`10.41.5.0/24` ⇒ `10.41.5.0`).
fn net_addr(net: &str) -> &str {
    net.split_once('/').expect("CIDR").0
}

/// Adds the emulated v0.11 host at [`OLD_IP`] with subnet `net`: its lease written with
/// `ETCDCTL_API=2 etcdctl set --ttl 86400` exactly as v0.11 writes `value`. Returns its index.
fn add_v011_host(c: &mut Cluster, net: &str, value: &str) -> usize {
    let old = c.add_host(OLD_IP);
    c.etcd.v2_set(&lease_key(c, net), value, Some(86400));
    old
}

/// Every pod pings every other pod, and every HTTP request arrives from the pod's own address.
fn assert_pods_connected(pods: &[Pod]) {
    let _servers: Vec<Whoami> = pods.iter().map(|p| Whoami::start(&p.ns)).collect();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            wait_for(
                &format!("pod {i} to ping pod {j} ({})", b.ip),
                Duration::from_secs(10),
                || a.ping(&b.ip).then_some(()),
            );
            assert_eq!(
                wait_seen_by(&a.ns, &b.ip),
                a.ip,
                "pod {j} sees pod {i}'s address"
            );
        }
    }
}

#[test]
fn hostgw_in_the_v2_keyspace_beside_a_v011_host() {
    let mut c = Cluster::start_v2(3, HOSTGW, &[]);
    let peers = peers(&mut c);
    for p in &peers {
        assert_eq!(
            p.lease,
            serde_json::json!({"PublicIP": p.ip, "BackendType": "host-gw"}),
            "the lease as v0.11 writes it"
        );
    }

    // The v0.11 host: lease in v0.11 format, routes to every peer via its LAN address (what
    // v0.11's host-gw adds).
    let old_net = "10.40.250.0/24";
    let old = add_v011_host(
        &mut c,
        old_net,
        &format!(r#"{{"PublicIP":"{OLD_IP}","BackendType":"host-gw"}}"#),
    );
    for p in &peers {
        c.hosts[old].exec("ip", &["route", "add", &p.net, "via", &p.ip, "dev", "eth0"]);
    }
    for i in 0..peers.len() {
        wait_for(
            &format!("host {i} to route the v0.11 host's subnet"),
            Duration::from_secs(15),
            || {
                c.route(i, old_net)
                    .contains(&format!("via {OLD_IP} dev eth0"))
                    .then_some(())
            },
        );
    }

    let mut pods: Vec<Pod> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| Pod::new(&c.hosts[i], &p.flannel_subnet, 2))
        .collect();
    pods.push(Pod::new(&c.hosts[old], "10.40.250.1/24", 2));
    assert_pods_connected(&pods);

    // The v0.11 host goes away (its lease deleted): every agent drops its route.
    assert!(c.etcd.v2_delete(&lease_key(&c, old_net)));
    for i in 0..peers.len() {
        wait_for(
            &format!("host {i} to drop the v0.11 host's route"),
            Duration::from_secs(15),
            || c.route(i, old_net).is_empty().then_some(()),
        );
    }
}

#[test]
fn vxlan_in_the_v2_keyspace_beside_a_v011_host() {
    let mut c = Cluster::start_v2(3, VXLAN, &["--etcd-api=v2"]);
    let peers = peers(&mut c);
    for (i, p) in peers.iter().enumerate() {
        let mac = c.hosts[i]
            .exec("cat", &["/sys/class/net/flannel.1/address"])
            .trim()
            .to_string();
        assert_eq!(
            p.lease,
            serde_json::json!({"PublicIP": p.ip, "BackendType": "vxlan", "BackendData": {"VtepMAC": mac}}),
            "the lease as v0.11 writes it (no VNI, no PublicIPv6)"
        );
    }

    // The v0.11 host: flannel.1 as v0.11 creates it, its lease, and per peer the neighbour, FDB
    // entry and onlink route v0.11 programs.
    let old_net = "10.41.250.0/24";
    let old = add_v011_host(
        &mut c,
        old_net,
        &format!(
            r#"{{"PublicIP":"{OLD_IP}","BackendType":"vxlan","BackendData":{{"VtepMAC":"{OLD_MAC}"}}}}"#
        ),
    );
    c.hosts[old].sh(&format!(
        "ip link add flannel.1 address {OLD_MAC} mtu 1450 type vxlan id 1 local {OLD_IP} dev eth0 \
         dstport 8472 nolearning && ip addr add {}/32 dev flannel.1 && ip link set flannel.1 up",
        net_addr(old_net)
    ));
    for p in &peers {
        let mac = p.lease["BackendData"]["VtepMAC"].as_str().unwrap();
        let gw = net_addr(&p.net);
        c.hosts[old].sh(&format!(
            "ip neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent && \
             bridge fdb replace {mac} dev flannel.1 dst {} self permanent && \
             ip route replace {} via {gw} dev flannel.1 onlink",
            p.ip, p.net
        ));
    }
    for i in 0..peers.len() {
        wait_for(
            &format!("host {i} to program the v0.11 host"),
            Duration::from_secs(15),
            || {
                let route = c
                    .route(i, old_net)
                    .contains(&format!("via {} dev flannel.1", net_addr(old_net)));
                let fdb = c.hosts[i]
                    .exec("bridge", &["fdb", "show", "dev", "flannel.1"])
                    .contains(&format!("{OLD_MAC} dst {OLD_IP}"));
                (route && fdb).then_some(())
            },
        );
    }

    let mut pods: Vec<Pod> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| Pod::new(&c.hosts[i], &p.flannel_subnet, 2))
        .collect();
    pods.push(Pod::new(&c.hosts[old], "10.41.250.1/24", 2));
    assert_pods_connected(&pods);
}
