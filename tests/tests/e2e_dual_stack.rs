//! End to end, dual stack (IPv4 + IPv6) with host-gw: hosts with an IPv4 and an IPv6 address
//! on one LAN, etcd over mutual TLS, the real agent on each host and a dual-stack pod behind a
//! bridge on each. What a user would see: full-size pings between pods over both families, the
//! pod's own address at the remote pod over both, the host's address for traffic leaving the
//! cluster over both, Go HEAD's lease format taken over whole.

use std::time::Duration;

use flanneld_tests::cluster::{env_value, wait_for, wait_seen_by, Cluster, Pod, Whoami};

const CONFIG: &str = r#"{"Network":"10.20.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:20::/48","Backend":{"Type":"host-gw"}}"#;

/// Host 1's lease as Go flanneld HEAD writes it for a dual-stack host-gw host.
const GO_HEAD_KEY: &str = "10.20.77.0-24&fd00:20:0:77::-64";
const GO_HEAD_VALUE: &str =
    r#"{"PublicIP":"192.168.100.12","PublicIPv6":"fd00:100::12","BackendType":"host-gw"}"#;

/// A host that runs no agent but holds a dual-stack lease written by Go HEAD.
const GO_PEER_KEY: &str = "10.20.99.0-24&fd00:20:0:99::-64";
const GO_PEER_VALUE: &str =
    r#"{"PublicIP":"192.168.100.60","PublicIPv6":"fd00:100::60","BackendType":"host-gw"}"#;

#[test]
fn dual_stack_hostgw_keeps_pod_addresses_over_both_families() {
    let leases = [(GO_HEAD_KEY, GO_HEAD_VALUE), (GO_PEER_KEY, GO_PEER_VALUE)];
    let (c, subnets, subnets6) = start_dual(CONFIG, &leases);

    // Go HEAD's dual lease of host 1 is reused whole, byte for byte, never narrowed to IPv4.
    assert_eq!(subnets[1], "10.20.77.1/24");
    assert_eq!(
        std::fs::read_to_string(c.subnet_env(1)).unwrap(),
        "FLANNEL_NETWORK=10.20.0.0/16\nFLANNEL_SUBNET=10.20.77.1/24\n\
         FLANNEL_IPV6_NETWORK=fd00:20::/48\nFLANNEL_IPV6_SUBNET=fd00:20:0:77::1/64\n\
         FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
    );
    assert_eq!(
        c.etcd.get(&format!("{}/subnets/{GO_HEAD_KEY}", c.prefix)),
        Some(GO_HEAD_VALUE.to_string())
    );
    assert_eq!(
        c.etcd.get(&format!("{}/subnets/10.20.77.0-24", c.prefix)),
        None
    );
    // Host 0 got a new dual lease with its PublicIPv6.
    let value0 = dual_lease(&c, &subnets[0], &subnets6[0]);
    assert!(
        value0.contains(r#""PublicIPv6":"fd00:100::11""#),
        "{value0}"
    );

    // Each family's peer subnet is routed via the peer's address of that family, tagged ours;
    // the Go HEAD peer's too.
    for (i, j) in [(0, 1), (1, 0)] {
        wait_route(&c, i, &network6_of(&subnets6[j]), &c.host_ip6(j));
        wait_route(&c, i, &Cluster::network_of(&subnets[j]), &c.host_ip(j));
    }
    wait_route(&c, 0, "fd00:20:0:99::/64", "fd00:100::60");
    wait_route(&c, 0, "10.20.99.0/24", "192.168.100.60");
    // A peer gone for good: both of its routes go.
    assert!(c
        .etcd
        .delete(&format!("{}/subnets/{GO_PEER_KEY}", c.prefix)));
    wait_for(
        "the removed peer's routes to go",
        Duration::from_secs(10),
        || {
            let gone = c.route(0, "fd00:20:0:99::/64").is_empty()
                && c.route(0, "10.20.99.0/24").is_empty();
            gone.then_some(())
        },
    );

    let (pods, pod_ip6) = dual_pods(&c, &subnets, &subnets6);
    assert_full_pings(&pods, &pod_ip6, 1500);
    let _server = assert_pod_sources(&pods, &pod_ip6);

    let _outside = assert_masqueraded_outside(&c, &pods[0]);

    // ip6tables holds the same chain, its jump first in POSTROUTING.
    let nat6 = c.hosts[0].exec("ip6tables-save", &["-t", "nat"]);
    let first = nat6
        .lines()
        .find(|l| l.starts_with("-A POSTROUTING"))
        .unwrap_or_default();
    assert!(first.contains("-j FLANNEL-POSTRTG"), "{nat6}");
    assert!(nat6.contains("-s fd00:20::/48 -d fd00:20::/48"), "{nat6}");
}

/// Waits until host `i` routes `dst` via `gateway` with our tag.
fn wait_route(c: &Cluster, i: usize, dst: &str, gateway: &str) {
    wait_for(
        &format!("host {i}: route {dst} via {gateway}"),
        Duration::from_secs(15),
        || {
            let route = c.route(i, dst);
            (route.contains(&format!("via {gateway}")) && route.contains("proto 70")).then_some(())
        },
    );
}

/// The value of the dual-stack lease of FLANNEL_SUBNET `subnet` and FLANNEL_IPV6_SUBNET
/// `subnet6`.
fn dual_lease(c: &Cluster, subnet: &str, subnet6: &str) -> String {
    c.etcd
        .get(&dual_key(c, subnet, subnet6))
        .expect("the dual-stack lease")
}

/// The etcd key of the dual-stack lease of FLANNEL_SUBNET `subnet` and FLANNEL_IPV6_SUBNET
/// `subnet6`.
fn dual_key(c: &Cluster, subnet: &str, subnet6: &str) -> String {
    format!(
        "{}/subnets/{}&{}",
        c.prefix,
        Cluster::network_of(subnet).replace('/', "-"),
        network6_of(subnet6).replace('/', "-")
    )
}

/// The subnet of a `FLANNEL_IPV6_SUBNET` value (`fd00:20:0:5::1/64` ⇒ `fd00:20:0:5::/64`).
fn network6_of(flannel_ipv6_subnet: &str) -> String {
    let net: ipnet::Ipv6Net = flannel_ipv6_subnet.parse().expect("IPv6 CIDR");
    net.trunc().to_string()
}

/// Two dual-stack hosts with `--ip-masq` running `config`, after `leases` (key, value) were
/// written; returns the cluster and each host's FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET.
fn start_dual(config: &str, leases: &[(&str, &str)]) -> (Cluster, Vec<String>, Vec<String>) {
    let mut c = Cluster::build(2, config, &["--ip-masq"]);
    c.add_ipv6();
    for (key, value) in leases {
        c.etcd.put(&format!("{}/subnets/{key}", c.prefix), value);
    }
    let (subnets, subnets6) = start_both(&mut c);
    (c, subnets, subnets6)
}

/// Starts both agents at once; returns each host's FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET.
fn start_both(c: &mut Cluster) -> (Vec<String>, Vec<String>) {
    for i in 0..2 {
        c.start_agent(i);
    }
    let subnets: Vec<String> = (0..2).map(|i| c.wait_subnet(i)).collect();
    let subnets6: Vec<String> = (0..2)
        .map(|i| env_value(&c.subnet_env(i), "FLANNEL_IPV6_SUBNET").expect("IPv6 subnet"))
        .collect();
    (subnets, subnets6)
}

/// A dual-stack pod on each host; returns the pods and their IPv6 addresses.
fn dual_pods(c: &Cluster, subnets: &[String], subnets6: &[String]) -> (Vec<Pod>, Vec<String>) {
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new(&c.hosts[i], &subnets[i], 2))
        .collect();
    let ip6 = (0..2)
        .map(|i| pods[i].add_ipv6(&c.hosts[i], &subnets6[i], 2))
        .collect();
    (pods, ip6)
}

/// Each pod pings the other over both families with don't-fragment packets that fill `mtu`.
/// Neighbour discovery on three hops may outlast one ping's timeout: the first may be lost.
fn assert_full_pings(pods: &[Pod], ip6: &[String], mtu: usize) {
    for (a, b) in [(0, 1), (1, 0)] {
        let full = |dst: &str, payload: usize| {
            wait_for(
                &format!("pod {a} to ping {dst} with {payload} bytes, DF"),
                Duration::from_secs(10),
                || pods[a].ping_full(dst, payload).then_some(()),
            )
        };
        full(&pods[b].ip, mtu - 28);
        full(&ip6[b], mtu - 48);
    }
}

/// Pod 1 serves; pod 0's requests arrive from pod 0's own IPv4 and IPv6 addresses.
fn assert_pod_sources(pods: &[Pod], ip6: &[String]) -> Whoami {
    let server = Whoami::start(&pods[1].ns);
    assert_eq!(wait_seen_by(&pods[0].ns, &pods[1].ip), pods[0].ip);
    assert_eq!(wait_seen_by(&pods[0].ns, &format!("[{}]", ip6[1])), ip6[0]);
    server
}

/// Pod 0's requests to a machine outside the cluster arrive from host 0's address, both
/// families.
fn assert_masqueraded_outside(c: &Cluster, pod: &Pod) -> Whoami {
    let ext = c.external("192.168.100.50");
    ext.sh("ip -6 addr add fd00:100::50/64 dev eth0 nodad");
    let server = Whoami::start(&ext);
    assert_eq!(wait_seen_by(&pod.ns, "192.168.100.50"), c.host_ip(0));
    assert_eq!(wait_seen_by(&pod.ns, "[fd00:100::50]"), c.host_ip6(0));
    server
}

#[test]
fn dual_stack_nftables_keeps_pod_addresses_despite_dockers_masquerade() {
    let config = r#"{"Network":"10.24.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:24::/48","EnableNFTables":true,"Backend":{"Type":"host-gw"}}"#;
    let (c, subnets, subnets6) = start_dual(config, &[]);
    // Docker's masquerade rule, for both families, at the head of nat POSTROUTING of host 0.
    let h0 = &c.hosts[0];
    let (own, own6) = (Cluster::network_of(&subnets[0]), network6_of(&subnets6[0]));
    h0.sh(&format!(
        "iptables-nft -t nat -I POSTROUTING -s {own} ! -o cni0 -j MASQUERADE"
    ));
    h0.sh(&format!(
        "ip6tables-nft -t nat -I POSTROUTING -s {own6} ! -o cni0 -j MASQUERADE"
    ));
    for (family, table) in [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")] {
        wait_for(
            &format!("nft table {table}"),
            Duration::from_secs(10),
            || {
                let out = h0.try_exec("nft", &["list", "table", family, table]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.contains(&format!("snat to {family} saddr"))
                    .then_some(())
            },
        );
    }
    let (pods, ip6) = dual_pods(&c, &subnets, &subnets6);
    assert_full_pings(&pods, &ip6, 1500);
    let _server = assert_pod_sources(&pods, &ip6);
    let _outside = assert_masqueraded_outside(&c, &pods[0]);
}

#[test]
fn dual_stack_vxlan_runs_a_device_per_family_and_heals_it() {
    let config = r#"{"Network":"10.21.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:21::/48","Backend":{"Type":"vxlan"}}"#;
    let (c, subnets, subnets6) = start_dual(config, &[]);
    // The IPv6 underlay costs 20 bytes more: FLANNEL_MTU fits both devices.
    assert_eq!(
        env_value(&c.subnet_env(0), "FLANNEL_MTU").as_deref(),
        Some("1430")
    );
    let dev6 = c.hosts[0].exec("ip", &["-d", "link", "show", "flannel-v6.1"]);
    assert!(
        dev6.contains("mtu 1430") && dev6.contains("local fd00:100::11"),
        "{dev6}"
    );
    let mac6 = dev6
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("MAC of flannel-v6.1")
        .to_string();
    let value0 = dual_lease(&c, &subnets[0], &subnets6[0]);
    assert!(
        value0.contains(&format!(
            r#""BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}"#
        )),
        "{value0}"
    );
    let peer6 = network6_of(&subnets6[1]);
    let gateway6 = peer6.trim_end_matches("/64");
    wait_route(&c, 0, &peer6, gateway6);
    assert!(c.route(0, &peer6).contains("dev flannel-v6.1"));

    let (pods, ip6) = dual_pods(&c, &subnets, &subnets6);
    assert_full_pings(&pods, &ip6, 1430);
    let _server = assert_pod_sources(&pods, &ip6);
    let _outside = assert_masqueraded_outside(&c, &pods[0]);

    // A deleted IPv6 route and neighbour come back.
    c.hosts[0].exec("ip", &["-6", "route", "del", &peer6]);
    c.hosts[0].exec(
        "ip",
        &["-6", "neigh", "del", gateway6, "dev", "flannel-v6.1"],
    );
    wait_route(&c, 0, &peer6, gateway6);
    assert_full_pings(&pods, &ip6, 1430);
}

#[test]
fn blackhole_routes_cover_our_subnet_in_both_families() {
    let mut c = Cluster::build(1, CONFIG, &["--ip-blackhole-route", "--iptables-resync=1"]);
    c.add_ipv6();
    c.start_agent(0);
    let subnet = Cluster::network_of(&c.wait_subnet(0));
    let subnet6 = network6_of(&env_value(&c.subnet_env(0), "FLANNEL_IPV6_SUBNET").unwrap());
    for (family, dst) in [("-4", &subnet), ("-6", &subnet6)] {
        wait_for(&format!("blackhole {dst}"), Duration::from_secs(10), || {
            let routes = c.hosts[0].exec("ip", &[family, "route", "show", "type", "blackhole"]);
            routes
                .lines()
                .any(|l| l.contains(dst.as_str()) && l.contains("proto 70"))
                .then_some(())
        });
    }
}

/// The hosts' `eth0` (`--iface=eth0`) has no IPv4 address: etcd is reached over another port.
#[test]
fn ipv6_only_host_gw_network_on_interfaces_without_ipv4() {
    ipv6_only("host-gw", 1500, true);
}

#[test]
fn ipv6_only_vxlan_network() {
    ipv6_only("vxlan", 1430, false);
}

/// An IPv6-only network (`EnableIPv4: false`) with `backend`: keys without an IPv4 half as Go
/// writes them, subnet.env with the IPv6 lines only, pods reaching each other with full-size
/// packets and their own addresses. With `no_ipv4`, the hosts' flannel interface has only IPv6.
fn ipv6_only(backend: &str, mtu: usize, no_ipv4: bool) {
    let config = format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:25::/48","Backend":{{"Type":"{backend}"}}}}"#
    );
    let mut c = Cluster::build(2, &config, &["--ip-masq"]);
    c.add_ipv6();
    if no_ipv4 {
        c.move_ipv4_off_eth0();
    }
    for i in 0..2 {
        c.start_agent(i);
    }
    let subnets6: Vec<String> = (0..2)
        .map(|i| {
            wait_for(
                &format!("host {i}'s subnet.env"),
                Duration::from_secs(15),
                || env_value(&c.subnet_env(i), "FLANNEL_IPV6_SUBNET"),
            )
        })
        .collect();
    let env = std::fs::read_to_string(c.subnet_env(0)).unwrap();
    assert_eq!(
        env,
        format!(
            "FLANNEL_IPV6_NETWORK=fd00:25::/48\nFLANNEL_IPV6_SUBNET={}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n",
            subnets6[0]
        )
    );
    let key = format!(
        "{}/subnets/0.0.0.0-0&{}",
        c.prefix,
        network6_of(&subnets6[0]).replace('/', "-")
    );
    let value = c.etcd.get(&key).expect("host 0's IPv6-only lease");
    assert!(
        value.starts_with(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:100::11""#),
        "{value}"
    );
    let peer6 = network6_of(&subnets6[1]);
    wait_for(
        &format!("route to {peer6}"),
        Duration::from_secs(15),
        || c.route(0, &peer6).contains("proto 70").then_some(()),
    );
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod::new_ipv6_only(&c.hosts[i], &subnets6[i], 2))
        .collect();
    for (a, b) in [(0, 1), (1, 0)] {
        wait_for(
            &format!("pod {a} to ping pod {b}"),
            Duration::from_secs(10),
            || pods[a].ping_full(&pods[b].ip, mtu - 48).then_some(()),
        );
    }
    let _server = Whoami::start(&pods[1].ns);
    assert_eq!(
        wait_seen_by(&pods[0].ns, &format!("[{}]", pods[1].ip)),
        pods[0].ip
    );
    if no_ipv4 {
        let log = c.log(0);
        let chosen = "--iface eth0: matched by name, using its address fd00:100::11";
        assert!(log.contains(chosen), "{log}");
    }
}

/// Two dual-stack hosts starting together in a network of two IPv4 and four IPv6 subnets: they
/// often choose the same half at once, under two different keys. Every round ends with
/// different subnets in both families and, on each host, the routes to the other's.
#[test]
fn hosts_starting_together_never_share_a_subnet() {
    let config = r#"{"Network":"10.22.0.0/16","SubnetMin":"10.22.1.0","SubnetMax":"10.22.2.0",
        "EnableIPv6":true,"IPv6Network":"fd00:22::/48",
        "IPv6SubnetMin":"fd00:22:0:1::","IPv6SubnetMax":"fd00:22:0:4::",
        "Backend":{"Type":"host-gw"}}"#;
    let mut c = Cluster::build(2, config, &[]);
    c.add_ipv6();
    for round in 0..4 {
        let (subnets, subnets6) = start_both(&mut c);
        let logs = format!("{}\n{}", c.log(0), c.log(1));
        assert_ne!(subnets[0], subnets[1], "round {round}:\n{logs}");
        assert_ne!(subnets6[0], subnets6[1], "round {round}:\n{logs}");
        for (i, j) in [(0, 1), (1, 0)] {
            wait_route(&c, i, &Cluster::network_of(&subnets[j]), &c.host_ip(j));
            wait_route(&c, i, &network6_of(&subnets6[j]), &c.host_ip6(j));
        }
        // Next round: both leases and subnet.env files go, so both hosts choose afresh.
        for i in 0..2 {
            c.stop_agent(i);
            let key = dual_key(&c, &subnets[i], &subnets6[i]);
            assert!(c.etcd.delete(&key), "{key}");
            std::fs::remove_file(c.subnet_env(i)).unwrap();
        }
    }
}
