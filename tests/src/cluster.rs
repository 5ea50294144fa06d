//! Hosts running the agent, and pods behind a bridge on each host, for end-to-end tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// The `flanneld` binary under test: `$FLANNELD_BIN`, else next to the test executable's
/// `deps/` folder (the cargo target dir of the same profile).
pub fn flanneld_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FLANNELD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("flanneld");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p flanneld` (or set FLANNELD_BIN)",
        bin.display()
    );
    bin
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that `invariant` stays true for `hold`, checked every 100 ms (failing at the first
/// time it is false). "Nothing more happens" means something only after the agent has seen the
/// event: prove that first (a `wait_for` on a log line or on [`Cluster::metric`], for example
/// the next reconcile), then hold.
pub fn holds(what: &str, hold: Duration, mut invariant: impl FnMut() -> bool) {
    let deadline = Instant::now() + hold;
    loop {
        assert!(invariant(), "{what}: no longer true");
        if Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running agent process inside a host namespace; killed on drop.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
    started: std::time::SystemTime,
}

impl Agent {
    /// Starts `flanneld args...` inside `host`, logging to `log`.
    pub fn start(host: &Netns, args: &[String], log: &Path) -> Agent {
        Agent::start_with_env(host, args, log, &[])
    }

    /// [`Agent::start`] with extra environment variables (e.g. a `PATH` with wrapped tools).
    pub fn start_with_env(
        host: &Netns,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Agent {
        let bin = flanneld_bin().to_str().expect("utf-8 path").to_string();
        Agent::spawn(host, &[bin], args, log, env)
    }

    /// Starts `launcher... args...` inside `host`: a `flanneld` that is not the build under
    /// test, e.g. `chroot <root> /opt/flannel/flanneld` for a released binary in another root.
    pub fn start_via(host: &Netns, launcher: &[String], args: &[String], log: &Path) -> Agent {
        Agent::spawn(host, launcher, args, log, &[])
    }

    fn spawn(
        host: &Netns,
        launcher: &[String],
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Agent {
        let (program, launcher_args) = launcher.split_first().expect("a program to run");
        let started = std::time::SystemTime::now();
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        let err = out.try_clone().expect("agent log");
        let child = host
            .command(program)
            .args(launcher_args)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn flanneld");
        Agent {
            child: Some(child),
            log: log.to_path_buf(),
            started,
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) of our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// The agent's process ID while it runs (`ip netns exec` execs it in place).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// How many of an agent's last log lines a failing test prints.
const LOG_TAIL_ON_FAILURE: usize = 100;

impl Drop for Agent {
    /// Stops the agent; when the test is failing, prints the end of its log (the directory
    /// holding it is removed with the test, and the log is what says why).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
            eprintln!(
                "--- the end of {} ---\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// Routes LAN `to` (`a.b.c`, a /24) from `ns` on LAN `from` via the router of
/// [`Cluster::start_two_lans`].
fn route_to_other_lan(ns: &Netns, to: &str, from: &str) {
    ns.sh(&format!("ip route add {to}.0/24 via {from}.{ROUTER}"));
}

/// Reads `FLANNEL_SUBNET` (e.g. `10.10.5.1/24`) from a subnet.env file, if written.
pub fn flannel_subnet(subnet_env: &Path) -> Option<String> {
    env_value(subnet_env, "FLANNEL_SUBNET")
}

/// Reads one `KEY=value` from a subnet.env file.
pub fn env_value(subnet_env: &Path, key: &str) -> Option<String> {
    let text = fs::read_to_string(subnet_env).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(str::to_string)
}

/// A pod: a namespace behind bridge `cni0` of its host, addressed from the host's FLANNEL_SUBNET.
pub struct Pod {
    /// The pod's namespace.
    pub ns: Netns,
    /// The pod's address.
    pub ip: String,
}

impl Pod {
    /// Creates bridge `cni0` on `host` with the gateway address from `flannel_subnet`
    /// (`a.b.c.1/len`) and a pod at `a.b.c.<n>` behind it.
    pub fn new(host: &Netns, flannel_subnet: &str, n: u8) -> Pod {
        let (gw, len) = flannel_subnet
            .split_once('/')
            .expect("FLANNEL_SUBNET is a CIDR");
        let base = gw.rsplit_once('.').expect("IPv4").0;
        let ip = format!("{base}.{n}");
        let ns = Pod::plug(host, n);
        host.sh(&format!(
            "ip -4 addr show dev cni0 | grep -q ' {flannel_subnet} ' || ip addr add {flannel_subnet} dev cni0"
        ));
        ns.sh(&format!(
            "ip addr add {ip}/{len} dev eth0 && ip route add default via {gw}"
        ));
        Pod { ns, ip }
    }

    /// A pod with an IPv6 address only (an IPv6-only network): `<prefix>::<n>` behind `cni0`,
    /// which gets FLANNEL_IPV6_SUBNET.
    pub fn new_ipv6_only(host: &Netns, flannel_ipv6_subnet: &str, n: u8) -> Pod {
        let ns = Pod::plug(host, n);
        let mut pod = Pod {
            ns,
            ip: String::new(),
        };
        pod.ip = pod.add_ipv6(host, flannel_ipv6_subnet, n);
        pod
    }

    /// A pod namespace whose `eth0` is plugged into bridge `cni0` of `host` (created, up).
    fn plug(host: &Netns, n: u8) -> Netns {
        let ns = Netns::new("pod");
        host.sh("ip link show cni0 >/dev/null 2>&1 || { ip link add cni0 type bridge && ip link set cni0 up; }");
        let hostside = format!("vp{n}");
        host.link_to(&hostside, &ns, "eth0");
        host.sh(&format!("ip link set {hostside} master cni0"));
        ns
    }

    /// Gives the pod an IPv6 address too, from `flannel_ipv6_subnet` (FLANNEL_IPV6_SUBNET,
    /// `<prefix>::1/len`, which goes on `cni0`): `<prefix>::<n>`, with a default route via the
    /// bridge. Returns the address.
    pub fn add_ipv6(&self, host: &Netns, flannel_ipv6_subnet: &str, n: u8) -> String {
        let (gw, len) = flannel_ipv6_subnet
            .split_once('/')
            .expect("FLANNEL_IPV6_SUBNET is a CIDR");
        let ip = format!("{}{n:x}", gw.strip_suffix('1').expect("<prefix>::1"));
        host.sh(&format!(
            "ip -6 addr show dev cni0 | grep -q '{gw}/' || ip -6 addr add {flannel_ipv6_subnet} dev cni0 nodad"
        ));
        self.ns.sh(&format!(
            "ip -6 addr add {ip}/{len} dev eth0 nodad && ip -6 route add default via {gw}"
        ));
        ip
    }

    /// Pings `dst` (IPv4 or IPv6) from the pod with full-size packets that must not be
    /// fragmented (`payload` bytes, e.g. MTU − 28 for IPv4, MTU − 48 for IPv6); true if a reply
    /// came back.
    pub fn ping_full(&self, dst: &str, payload: usize) -> bool {
        let size = payload.to_string();
        self.ns
            .try_exec("ping", &["-c1", "-W1", "-M", "do", "-s", &size, dst])
            .status
            .success()
    }

    /// Pings `dst` from the pod; true if a reply came back.
    pub fn ping(&self, dst: &str) -> bool {
        self.ns
            .try_exec("ping", &["-c1", "-W1", dst])
            .status
            .success()
    }
}

/// The port [`Whoami`] listens on.
pub const WHOAMI_PORT: u16 = 8080;

/// `contrib/whoami.py` inside a namespace: answers every GET on [`WHOAMI_PORT`] with the client
/// address it saw. Killed on drop.
pub struct Whoami(Child);

impl Whoami {
    /// Starts the server inside `ns` and waits until it answers.
    pub fn start(ns: &Netns) -> Whoami {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/whoami.py");
        let child = ns
            .command("python3")
            .arg(&script)
            .arg(WHOAMI_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start contrib/whoami.py");
        let server = Whoami(child);
        wait_for("whoami to listen", Duration::from_secs(10), || {
            seen_by(ns, "127.0.0.1")
        });
        server
    }
}

impl Drop for Whoami {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The client address the [`Whoami`] server at `target` saw for one GET from `from` (a fresh
/// connection), or `None` if the request failed within 2 s.
pub fn seen_by(from: &Netns, target: &str) -> Option<String> {
    let url = format!("http://{target}:{WHOAMI_PORT}/");
    let out = from.try_exec("curl", &["-s", "--max-time", "2", &url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Like [`seen_by`], retrying for up to 15 s while servers start and routes converge.
pub fn wait_seen_by(from: &Netns, target: &str) -> String {
    wait_for(
        &format!("an answer from {target}"),
        Duration::from_secs(15),
        || seen_by(from, target),
    )
}

/// The first LAN's prefix: etcd is `.2`, the hosts of [`Cluster::start`] are `.11`, `.12`, …
const LAN_A: &str = "192.168.100";
/// The second LAN's prefix ([`Cluster::start_two_lans`]).
const LAN_B: &str = "192.168.101";
/// The router's last octet on either LAN.
const ROUTER: u8 = 1;

/// Hosts running the agent and the etcd they share. The hosts sit on one LAN
/// (`192.168.100.0/24`, hosts from `.11`, etcd at `.2`), or with [`Cluster::start_two_lans`]
/// on two LANs joined by a router.
pub struct Cluster {
    /// The hosts, in order.
    pub hosts: Vec<Netns>,
    /// The agents, one per host (`None` while stopped).
    pub agents: Vec<Option<Agent>>,
    /// The etcd server every agent uses (mutual TLS); with [`Cluster::start_etcd_cluster`] the
    /// first member of the etcd cluster.
    pub etcd: crate::etcd::EtcdServer,
    /// The other members of a multi-member etcd cluster ([`Cluster::start_etcd_cluster`]).
    pub etcd_members: Vec<crate::etcd::EtcdServer>,
    /// The key prefix of this cluster.
    pub prefix: String,
    /// Work directory: subnet.env files and agent logs.
    pub dir: tempfile::TempDir,
    switch: crate::netns::Switch,
    /// etcd runs inside them (one per member), at `192.168.100.2`, `.3`, ...
    etcd_ns: Vec<Netns>,
    extra_args: Vec<String>,
    /// Each host's LAN address, by host index.
    host_ips: Vec<String>,
    lan_b: Option<LanB>,
}

/// The second LAN of [`Cluster::start_two_lans`]: `192.168.101.0/24` on its own switch, joined
/// to the first LAN only through a router namespace (`.1` on both LANs).
struct LanB {
    switch: crate::netns::Switch,
    /// Kept alive: it forwards between the LANs.
    _router: Netns,
}

impl Cluster {
    /// Builds `n` hosts and an etcd (TLS, v2 API enabled, inside its own namespace) on one
    /// switch, writes `config` at `<prefix>/config` (v3) and starts the agent on every host with
    /// `extra_args`.
    pub fn start(n: usize, config: &str, extra_args: &[&str]) -> Cluster {
        Cluster::launch(Cluster::prepare(n, Some(config), extra_args))
    }

    /// Like [`Cluster::start`], but etcd is a cluster of `members` members (each in a namespace
    /// of its own at `192.168.100.2`, `.3`, ...; mutual TLS) and every agent is given all of
    /// their endpoints, as production seeds are.
    pub fn start_etcd_cluster(
        n: usize,
        members: usize,
        config: &str,
        extra_args: &[&str],
    ) -> Cluster {
        let mut cluster = Cluster::prepare_with(n, members, Some(config), extra_args);
        for i in 0..cluster.hosts.len() {
            cluster.start_agent(i);
        }
        cluster
    }

    /// Etcd member `i` (0 is [`Cluster::etcd`]).
    pub fn etcd_member(&mut self, i: usize) -> &mut crate::etcd::EtcdServer {
        match i {
            0 => &mut self.etcd,
            _ => &mut self.etcd_members[i - 1],
        }
    }

    /// Cuts etcd member `i` off the LAN (`up == false`: its link goes down) or plugs it back.
    pub fn partition_etcd_member(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.etcd_ns[i].exec("ip", &["link", "set", "eth0", state]);
    }

    /// Like [`Cluster::start`], but `config` is written to the etcd v2 keyspace with
    /// `ETCDCTL_API=2 etcdctl set`, as in a flanneld v0.11 cluster: the agents find it there
    /// (`--etcd-api=auto`, unless `extra_args` says otherwise) and keep their leases there.
    pub fn start_v2(n: usize, config: &str, extra_args: &[&str]) -> Cluster {
        let cluster = Cluster::prepare(n, None, extra_args);
        cluster.etcd.v2_set(&cluster.config_key(), config, None);
        Cluster::launch(cluster)
    }

    /// Like [`Cluster::start`], but without writing any network config: the agents start and
    /// wait for one.
    pub fn start_unconfigured(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::launch(Cluster::prepare(n, None, extra_args))
    }

    /// Like [`Cluster::start`], but starts no agent: for tests that prepare the hosts first
    /// (iptables rules, a subnet.env of a previous run), then call [`Cluster::start_agent`].
    pub fn build(n: usize, config: &str, extra_args: &[&str]) -> Cluster {
        Cluster::prepare(n, Some(config), extra_args)
    }

    /// Like [`Cluster::start`], but with `on_a` hosts on the first LAN (with etcd) and `on_b` hosts
    /// on a second LAN, `192.168.101.0/24`, that reaches the first one only through a router
    /// namespace (`192.168.100.1` / `192.168.101.1`): hosts on different LANs share no layer 2,
    /// as in a vxlan cluster spanning routed segments. Hosts `0..on_a` are `192.168.100.11…`,
    /// hosts `on_a..` are `192.168.101.11…`; every host and etcd route the other LAN via the
    /// router.
    pub fn start_two_lans(on_a: usize, on_b: usize, config: &str, extra_args: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare(on_a, Some(config), extra_args);
        cluster.add_lan_b();
        for k in 0..on_b {
            cluster.add_host_b(&format!("{LAN_B}.{}", 11 + k));
        }
        Cluster::launch(cluster)
    }

    /// Creates the second LAN and the router, and routes the first LAN's hosts and etcd to it.
    fn add_lan_b(&mut self) {
        let switch = crate::netns::Switch::new("lanb");
        let router = Netns::new("router");
        self.switch
            .plug(&router, "lana", &format!("{LAN_A}.{ROUTER}/24"));
        switch.plug(&router, "lanb", &format!("{LAN_B}.{ROUTER}/24"));
        router.sh("sysctl -qw net.ipv4.ip_forward=1");
        for ns in self.hosts.iter().chain(&self.etcd_ns) {
            route_to_other_lan(ns, LAN_B, LAN_A);
        }
        self.lan_b = Some(LanB {
            switch,
            _router: router,
        });
    }

    /// Adds a host with `ip` on the second LAN of [`Cluster::start_two_lans`] (forwarding on,
    /// the first LAN routed via the router); returns its index.
    pub fn add_host_b(&mut self, ip: &str) -> usize {
        let host = Netns::new("host");
        let lan_b = self.lan_b.as_ref().expect("a cluster with two LANs");
        lan_b.switch.plug(&host, "eth0", &format!("{ip}/24"));
        route_to_other_lan(&host, LAN_A, LAN_B);
        self.push_host(host, ip)
    }

    /// The network config key of this cluster.
    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn launch(mut cluster: Cluster) -> Cluster {
        for i in 0..cluster.hosts.len() {
            cluster.start_agent(i);
        }
        cluster
    }

    fn prepare(n: usize, config: Option<&str>, extra_args: &[&str]) -> Cluster {
        Cluster::prepare_with(n, 1, config, extra_args)
    }

    fn prepare_with(
        n: usize,
        members: usize,
        config: Option<&str>,
        extra_args: &[&str],
    ) -> Cluster {
        let switch = crate::netns::Switch::new("lan");
        let etcd_ns: Vec<Netns> = (0..members).map(|_| Netns::new("etcd")).collect();
        let mut places = Vec::new();
        for (i, ns) in etcd_ns.iter().enumerate() {
            let ip =
                std::net::Ipv4Addr::new(192, 168, 100, 2 + u8::try_from(i).expect("few members"));
            switch.plug(ns, "eth0", &format!("{ip}/24"));
            places.push((ip, ns.name().to_string()));
        }
        let mut etcd_members = if members == 1 {
            vec![crate::etcd::EtcdServer::start_with(crate::etcd::EtcdSpec {
                tls: true,
                ip: places[0].0,
                netns: Some(places[0].1.clone()),
                enable_v2: true,
                ..crate::etcd::EtcdSpec::default()
            })]
        } else {
            crate::etcd::EtcdServer::start_members(&places, true)
        };
        let etcd = etcd_members.remove(0);
        let prefix = crate::etcd::EtcdServer::unique_prefix();
        if let Some(config) = config {
            etcd.put(&format!("{prefix}/config"), config);
        }
        let mut cluster = Cluster {
            hosts: Vec::new(),
            agents: Vec::new(),
            etcd,
            prefix,
            dir: tempfile::tempdir().expect("tempdir"),
            switch,
            etcd_ns,
            etcd_members,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            host_ips: Vec::new(),
            lan_b: None,
        };
        for i in 0..n {
            cluster.add_host(&format!("{LAN_A}.{}", 11 + i));
        }
        cluster
    }

    /// Adds a host with `ip` on the (first) LAN (forwarding on); returns its index.
    pub fn add_host(&mut self, ip: &str) -> usize {
        let host = Netns::new("host");
        self.switch.plug(&host, "eth0", &format!("{ip}/24"));
        if self.lan_b.is_some() {
            route_to_other_lan(&host, LAN_B, LAN_A);
        }
        self.push_host(host, ip)
    }

    fn push_host(&mut self, host: Netns, ip: &str) -> usize {
        host.sh("sysctl -qw net.ipv4.ip_forward=1");
        self.hosts.push(host);
        self.host_ips.push(ip.to_string());
        self.agents.push(None);
        self.hosts.len() - 1
    }

    /// Gives every host an IPv6 address on the LAN (`fd00:100::<11+i>/64`, see
    /// [`Cluster::host_ip6`]) and IPv6 forwarding, for a dual-stack network; call before the
    /// agents start.
    pub fn add_ipv6(&self) {
        for i in 0..self.hosts.len() {
            self.hosts[i].sh(&format!(
                "sysctl -qw net.ipv6.conf.all.forwarding=1 && ip -6 addr add {}/64 dev eth0 nodad",
                self.host_ip6(i)
            ));
        }
    }

    /// Makes every host's `eth0` IPv6-only: its IPv4 LAN address moves to a second port on the
    /// LAN (`mgmt0`), which keeps reaching etcd. Call after [`Cluster::add_ipv6`], before the
    /// agents start.
    pub fn move_ipv4_off_eth0(&self) {
        for (host, ip) in self.hosts.iter().zip(&self.host_ips) {
            host.sh(&format!("ip addr del {ip}/24 dev eth0"));
            self.switch.plug(host, "mgmt0", &format!("{ip}/24"));
        }
    }

    /// Host `i`'s IPv6 LAN address after [`Cluster::add_ipv6`].
    pub fn host_ip6(&self, i: usize) -> String {
        format!("fd00:100::{}", 11 + i)
    }

    /// A machine outside the cluster: a namespace on the LAN at `ip` (e.g. `192.168.100.50`)
    /// running no agent. It reaches pods only through routes the test adds (`ip route add
    /// <pod subnet> via <host>`).
    pub fn external(&self, ip: &str) -> Netns {
        let ns = Netns::new("ext");
        self.switch.plug(&ns, "eth0", &format!("{ip}/24"));
        ns
    }

    /// Makes `machine` route each pod subnet of `subnets` (FLANNEL_SUBNET values, host `i`'s at
    /// index `i`) via its host, as a router of the LAN would.
    pub fn route_pods_from(&self, machine: &Netns, subnets: &[String]) {
        for (i, s) in subnets.iter().enumerate() {
            let subnet = Cluster::network_of(s);
            machine.exec("ip", &["route", "add", &subnet, "via", &self.host_ip(i)]);
        }
    }

    /// The host's address on its LAN.
    pub fn host_ip(&self, i: usize) -> String {
        self.host_ips[i].clone()
    }

    /// The subnet.env path of host `i`.
    pub fn subnet_env(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}/subnet.env"))
    }

    /// The flags the agent on host `i` runs with.
    pub fn agent_args(&self, i: usize) -> Vec<String> {
        let tls = self.etcd.tls().expect("the cluster etcd uses TLS");
        let mut args = vec![
            format!("--etcd-endpoints={}", self.etcd_endpoints()),
            format!("-etcd-prefix={}", self.prefix),
            format!("--etcd-cafile={}", tls.ca.display()),
            format!("--etcd-certfile={}", tls.client_cert.display()),
            format!("--etcd-keyfile={}", tls.client_key.display()),
            "--iface=eth0".to_string(),
            format!("--public-ip={}", self.host_ip(i)),
            format!("--subnet-file={}", self.subnet_env(i).display()),
            "--healthz-ip=127.0.0.1".to_string(),
            "--healthz-port=2401".to_string(),
            "-v=2".to_string(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Every etcd member's client URL, comma separated.
    pub fn etcd_endpoints(&self) -> String {
        std::iter::once(&self.etcd)
            .chain(&self.etcd_members)
            .map(|m| m.endpoint().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts (or restarts) the agent on host `i`.
    pub fn start_agent(&mut self, i: usize) {
        let log = self.dir.path().join(format!("h{i}.log"));
        let agent = Agent::start(&self.hosts[i], &self.agent_args(i), &log);
        self.agents[i] = Some(agent);
    }

    /// Starts the agent on host `i` as `launcher... <agent flags>` (see [`Agent::start_via`]).
    pub fn start_agent_via(&mut self, i: usize, launcher: &[String]) {
        let log = self.dir.path().join(format!("h{i}.log"));
        let agent = Agent::start_via(&self.hosts[i], launcher, &self.agent_args(i), &log);
        self.agents[i] = Some(agent);
    }

    /// Stops the agent on host `i` with SIGTERM; returns its exit code.
    pub fn stop_agent(&mut self, i: usize) -> Option<i32> {
        self.agents[i].as_mut().and_then(Agent::stop)
    }

    /// Waits until host `i`'s running agent has written subnet.env (a file left by an earlier run
    /// does not count) and returns its FLANNEL_SUBNET.
    pub fn wait_subnet(&mut self, i: usize) -> String {
        let path = self.subnet_env(i);
        let log_hint = self.dir.path().join(format!("h{i}.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let started = self.agents[i].as_ref().map(|a| a.started);
        loop {
            let written_by_agent = fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| started.is_none_or(|s| t >= s));
            if let Some(s) = flannel_subnet(&path).filter(|_| written_by_agent) {
                return s;
            }
            let running = self.agents[i].as_mut().is_some_and(Agent::is_running);
            if !running || Instant::now() > deadline {
                panic!(
                    "host {i} wrote no subnet.env (agent running: {running}); log:\n{}",
                    fs::read_to_string(&log_hint).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log of host `i`'s agent(s).
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.dir.path().join(format!("h{i}.log"))).unwrap_or_default()
    }

    /// The lease subnet of a `FLANNEL_SUBNET` value (`10.1.2.1/24` ⇒ `10.1.2.0/24`).
    pub fn network_of(flannel_subnet: &str) -> String {
        let (ip, len) = flannel_subnet.split_once('/').expect("CIDR");
        format!("{}.0/{len}", ip.rsplit_once('.').expect("IPv4").0)
    }

    /// `ip route show <dst>` on host `i`.
    pub fn route(&self, i: usize, dst: &str) -> String {
        let family = if dst.contains(':') { "-6" } else { "-4" };
        self.hosts[i]
            .exec("ip", &[family, "route", "show", dst])
            .trim()
            .to_string()
    }

    /// Waits (up to 30 s) until host `i`'s `/readyz` answers 200.
    pub fn wait_ready(&self, i: usize) {
        wait_for(&format!("host {i} ready"), Duration::from_secs(30), || {
            (self.healthz(i, "/readyz") == 200).then_some(())
        });
    }

    /// `/metrics` of host `i`, parsed.
    pub fn scrape(&self, i: usize) -> prometheus_parse::Scrape {
        let url = "http://127.0.0.1:2401/metrics";
        let text = self.hosts[i].exec("curl", &["-s", "-m", "2", url]);
        assert!(text.ends_with("# EOF\n"), "a complete exposition:\n{text}");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text")
    }

    /// The sum of host `i`'s samples `name` whose labels include `labels`; 0 when none.
    pub fn metric(&self, i: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.scrape(i), name, labels)
    }

    /// How many full reconciles host `i` has run, whatever their cause: waiting for one more
    /// proves the agent has looked at the state since.
    pub fn reconciles(&self, i: usize) -> f64 {
        self.metric(i, "flannel_reconcile_runs_total", &[])
    }

    /// Waits until host `i` has run a full reconcile after the one counted in `since`.
    pub fn wait_reconcile_after(&self, i: usize, since: f64, timeout: Duration) {
        wait_for(&format!("a reconcile on host {i}"), timeout, || {
            (self.reconciles(i) > since).then_some(())
        });
    }

    /// GET `http://127.0.0.1:2401<path>` inside host `i`; returns the HTTP status code.
    pub fn healthz(&self, i: usize, path: &str) -> u16 {
        let out = self.hosts[i].try_exec(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "2",
                &format!("http://127.0.0.1:2401{path}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

/// The sum of the samples `name` in `scrape` whose labels include `labels`; 0 when none.
pub fn metric_value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    let matching = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    matching
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
