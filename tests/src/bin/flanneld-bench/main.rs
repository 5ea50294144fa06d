//! `flanneld-bench`: the performance benchmarks of issue 5, run against the real agent binary,
//! real etcd and real kernel state in network namespaces (root required).
//!
//! ```text
//! cargo build --release -p flanneld
//! cargo run --release -p flanneld-tests --bin flanneld-bench -- [--quick] [--runs N]
//!     [--out FILE] [--logs DIR] [--only cold,propagation,churn,idle,iperf]
//!     [--go GO_FLANNELD [--ours-v2]] [--go-v3 GO_FLANNELD_V0_20] [--nexthop]
//! ```
//!
//! The agent is `$FLANNELD_BIN`, else `flanneld` next to this binary (`target/release/`). With
//! `--go`, a Go flanneld v0.11 binary runs beside it: etcd serves the v2 API too, Go's config
//! and leases are written in the v2 keyspace (ours stay in v3), the two agents alternate run by
//! run in the cold start, propagation and idle sections, and a side-by-side table with the
//! ratios (Go ÷ ours) ends the report; `--ours-v2` adds our agent on the v2 keyspace, the same
//! etcd path as Go's, to the alternation; `--nexthop` adds our agent with
//! `--route-style=nexthop`, and the cold start then also has a 10000-peer case (ours only). etcd
//! (plain HTTP, data on tmpfs unless `TMPDIR` says otherwise) runs in its own namespace on a
//! bridge; every agent run gets a fresh host namespace plugged into that bridge. Kernel state is
//! observed passively through netlink notifications ([`kernel::KernelWatch`]), so measuring does
//! not load the agent. Results are printed as markdown (and written to `--out`).

mod kernel;
mod probe;
mod v2;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flanneld_tests::cluster::{self, Cluster, Pod};
use flanneld_tests::etcd::{EtcdServer, EtcdSpec};
use flanneld_tests::netns::{Netns, Switch};
use futures::StreamExt;
use kernel::{ip_target, mac_target, KernelWatch, Object, Target};
use probe::WatchProbe;
use v2::V2Conn;

/// etcd's address on the benchmark LAN (192.168.0.0/16; peers' PublicIPs are 192.168.1.1 on).
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// Concurrent etcd writes when loading or churning leases.
const WRITE_DEPTH: usize = 64;
/// Longest wait for the agent to converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// etcd's client port.
const ETCD_PORT: u16 = 2379;

/// Command-line options.
struct Opts {
    quick: bool,
    runs: usize,
    out: Option<PathBuf>,
    only: Vec<String>,
    logs: Option<PathBuf>,
    /// A Go flanneld v0.11 binary to measure beside ours (v2 keyspace).
    go: Option<PathBuf>,
    /// A Go flanneld v0.20.2 binary to measure beside ours (v3 keyspace, as ours).
    go_v3: Option<PathBuf>,
    /// Also run ours on the v2 keyspace (where Go v0.11 runs).
    ours_v2: bool,
    /// Also run ours with `--route-style=nexthop`.
    nexthop: bool,
    /// Another build of ours (an earlier commit) to measure beside this one.
    baseline: Option<PathBuf>,
    /// The cold-start cases to run (`host-gw:1`, `vxlan:1000`); all when empty.
    cases: Vec<String>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut opts = Opts {
            quick: false,
            runs: 5,
            out: None,
            only: Vec::new(),
            logs: None,
            go: None,
            go_v3: None,
            ours_v2: false,
            nexthop: false,
            baseline: None,
            cases: Vec::new(),
        };
        let mut runs = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => opts.quick = true,
                "--runs" => runs = Some(args.next().context("--runs N")?.parse()?),
                "--out" => opts.out = Some(args.next().context("--out FILE")?.into()),
                "--logs" => opts.logs = Some(args.next().context("--logs DIR")?.into()),
                "--go" => opts.go = Some(args.next().context("--go GO_FLANNELD")?.into()),
                "--go-v3" => opts.go_v3 = Some(args.next().context("--go-v3 GO_FLANNELD")?.into()),
                "--ours-v2" => opts.ours_v2 = true,
                "--nexthop" => opts.nexthop = true,
                "--baseline" => opts.baseline = Some(args.next().context("--baseline BIN")?.into()),
                "--cases" => {
                    let list = args.next().context("--cases LIST")?;
                    opts.cases = list.split(',').map(str::to_string).collect()
                }
                "--only" => {
                    opts.only = args
                        .next()
                        .context("--only LIST")?
                        .split(',')
                        .map(str::to_string)
                        .collect()
                }
                "-h" | "--help" => {
                    println!("flanneld-bench [--quick] [--runs N] [--out FILE] [--logs DIR] [--only cold,propagation,churn,idle,iperf] [--go GO_FLANNELD [--ours-v2]] [--go-v3 GO_FLANNELD_V0_20] [--nexthop] [--baseline EARLIER_FLANNELD] [--cases host-gw:1,vxlan:1000]");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (see --help)"),
            }
        }
        opts.runs = runs.unwrap_or(if opts.quick { 1 } else { 5 });
        Ok(opts)
    }

    fn wants(&self, bench: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == bench)
    }

    /// Whether `--cases` leaves the cold-start case of `kind` with `n` peers in.
    fn wants_case(&self, kind: Kind, n: usize) -> bool {
        let case = format!("{}:{n}", kind.name());
        self.cases.is_empty() || self.cases.contains(&case)
    }

    /// Full size, or the `--quick` size.
    fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Which data plane the agent programs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    HostGw,
    Vxlan,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::HostGw => "host-gw",
            Kind::Vxlan => "vxlan",
        }
    }
}

/// Which etcd keyspace an agent reads: v3 (ours) or v2 (Go flanneld v0.11).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keyspace {
    V3,
    V2,
}

/// An agent binary under test.
#[derive(Clone)]
struct Agent {
    /// How the report names it.
    name: &'static str,
    bin: PathBuf,
    keyspace: Keyspace,
    /// Flags of this variant, before each section's own.
    args: &'static [&'static str],
    /// Go flanneld (the side-by-side reference).
    go: bool,
}

/// Peer `i`: subnet `10.(1+i/256).(i%256).0/24`.
fn peer_subnet(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1 + (i / 256) as u8, (i % 256) as u8, 0)
}

/// Host address `i` on the benchmark LAN: `192.168.(1+i/250%250).(1+i%250)`.
fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1 + ((i / 250) % 250) as u8, 1 + (i % 250) as u8)
}

fn peer_mac(i: usize) -> [u8; 6] {
    [2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// One peer lease: which peer, and which of its host addresses it publishes.
#[derive(Clone, Copy)]
struct Peer {
    index: usize,
    address: usize,
}

impl Peer {
    fn new(index: usize) -> Peer {
        Peer {
            index,
            address: index,
        }
    }

    fn key(self, prefix: &str) -> String {
        format!("{prefix}/subnets/{}-24", peer_subnet(self.index))
    }

    fn value(self, kind: Kind) -> String {
        let ip = peer_ip(self.address);
        match kind {
            Kind::HostGw => format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#),
            Kind::Vxlan => {
                let m = peer_mac(self.index);
                format!(
                    r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}"}}}}"#,
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )
            }
        }
    }

    /// The kernel objects the agent should hold for this peer.
    fn objects(self, kind: Kind, out: &mut HashMap<Object, Target>) {
        let subnet = peer_subnet(self.index);
        let route = Object::Route(subnet, 24);
        match kind {
            Kind::HostGw => {
                out.insert(route, ip_target(peer_ip(self.address)));
            }
            Kind::Vxlan => {
                let mac = peer_mac(self.index);
                out.insert(route, ip_target(subnet));
                out.insert(Object::Neighbour(subnet), mac_target(mac));
                out.insert(Object::Fdb(mac), ip_target(peer_ip(self.address)));
            }
        }
    }
}

/// Enters network namespace `name` for the rest of this thread's life.
fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns with a valid namespace fd only changes this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// CPU time of a process in seconds: (own, own + waited-for children).
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("/proc/pid/stat")?.1;
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    if f.len() < 4 {
        bail!("short /proc/{pid}/stat");
    }
    Ok(((f[0] + f[1]) / tick, (f[0] + f[1] + f[2] + f[3]) / tick))
}

/// A `VmXXX:` value of /proc/pid/status in MiB.
fn vm_mib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// What a process's memory costs, in MiB: private (anonymous, `RssAnon`: what it alone holds),
/// file-backed (`RssFile`: mostly its binary's and libraries' pages, shared and reclaimable) and
/// its proportional share of everything (`Pss` of smaps_rollup).
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    private: f64,
    file: f64,
    pss: f64,
}

impl Memory {
    fn of(pid: u32) -> Result<Memory> {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let pss_kb: f64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("Pss in /proc/{pid}/smaps_rollup"))?;
        Ok(Memory {
            private: vm_mib(pid, "RssAnon:")?,
            file: vm_mib(pid, "RssFile:")?,
            pss: pss_kb / 1024.0,
        })
    }
}

/// The agent process; killed (by PID) on drop.
struct AgentProc {
    child: Child,
    started: Instant,
}

impl AgentProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentProc {
    /// SIGTERM (a clean exit lets wrappers such as valgrind write their reports), SIGKILL
    /// after 10 s.
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd in its namespace on a bridge, and the client the benchmark writes leases with.
struct Lab {
    switch: Switch,
    etcd_ns: Netns,
    etcd: EtcdServer,
    rt: tokio::runtime::Runtime,
    client: etcd_client::Client,
    /// The v2 connection for the Go runs (`--go`).
    v2: Option<RefCell<V2Conn>>,
    /// Per-run directories (subnet.env, flanneld.log); kept when `--logs` names it.
    work: PathBuf,
    /// The namespace this thread was in before entering etcd's, re-entered on drop (a process
    /// inside a namespace being deleted is killed with it).
    home: File,
    _temp: Option<tempfile::TempDir>,
    hosts: usize,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SAFETY: setns back into the namespace this thread came from.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// One agent in a fresh host namespace, with its kernel observer.
struct Run {
    agent: AgentProc,
    watch: KernelWatch,
    subnet_env: PathBuf,
    prefix: String,
    keyspace: Keyspace,
    /// Declared last: the namespace goes after the agent and the observer.
    _host: Netns,
}

impl Lab {
    /// etcd on the bridge; with `v2` it serves the v2 API too.
    fn start(logs: Option<&Path>, v2: bool) -> Result<Lab> {
        let (work, temp) = match logs {
            Some(dir) => (dir.to_path_buf(), None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let switch = Switch::new("blan");
        let etcd_ns = Netns::new("betcd");
        switch.plug(&etcd_ns, "eth0", &format!("{ETCD_IP}/16"));
        let etcd = EtcdServer::start_with(EtcdSpec {
            tls: false,
            ip: ETCD_IP,
            netns: Some(etcd_ns.name().to_string()),
            enable_v2: v2,
            ..EtcdSpec::default()
        });
        // The etcd client (and the /metrics reader) live in etcd's namespace.
        let home = File::open("/proc/thread-self/ns/net")?;
        enter_netns(etcd_ns.name())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(etcd_client::Client::connect([etcd.endpoint()], None))?;
        let v2 = if v2 {
            Some(RefCell::new(V2Conn::connect(etcd_addr())?))
        } else {
            None
        };
        Ok(Lab {
            switch,
            etcd_ns,
            etcd,
            rt,
            client,
            v2,
            work,
            home,
            _temp: temp,
            hosts: 0,
        })
    }

    /// The v2 connection; an error without `--go`.
    fn v2(&self) -> Result<std::cell::RefMut<'_, V2Conn>> {
        Ok(self
            .v2
            .as_ref()
            .context("etcd v2 not enabled")?
            .borrow_mut())
    }

    /// Writes `(key, value)` pairs with [`WRITE_DEPTH`] requests in flight; returns how long
    /// etcd took.
    fn put_all(&self, keyspace: Keyspace, kvs: Vec<(String, String)>) -> Result<Duration> {
        if keyspace == Keyspace::V2 {
            return put_all_v2(kvs);
        }
        let kv = self.client.kv_client();
        let start = Instant::now();
        self.rt.block_on(async {
            let mut puts = futures::stream::iter(kvs)
                .map(|(k, v)| {
                    let mut kv = kv.clone();
                    async move { kv.put(k, v, None).await }
                })
                .buffer_unordered(WRITE_DEPTH);
            while let Some(r) = puts.next().await {
                r?;
            }
            anyhow::Ok(())
        })?;
        Ok(start.elapsed())
    }

    fn put(&self, keyspace: Keyspace, key: String, value: String) -> Result<()> {
        if keyspace == Keyspace::V2 {
            return self.v2()?.set(&key, &value);
        }
        let mut kv = self.client.kv_client();
        self.rt.block_on(kv.put(key, value, None))?;
        Ok(())
    }

    fn delete(&self, keyspace: Keyspace, key: &str) -> Result<()> {
        if keyspace == Keyspace::V2 {
            return self.v2()?.delete(key, false);
        }
        let mut kv = self.client.kv_client();
        self.rt.block_on(kv.delete(key, None))?;
        Ok(())
    }

    fn delete_prefix(&self, keyspace: Keyspace, prefix: &str) -> Result<()> {
        if keyspace == Keyspace::V2 {
            return self.v2()?.delete(prefix, true);
        }
        let mut kv = self.client.kv_client();
        let opts = etcd_client::DeleteOptions::new().with_prefix();
        self.rt
            .block_on(kv.delete(format!("{prefix}/"), Some(opts)))?;
        Ok(())
    }

    /// A fresh prefix with the config for `kind` and peers `0..n`.
    fn load(&self, keyspace: Keyspace, kind: Kind, n: usize) -> Result<String> {
        let prefix = EtcdServer::unique_prefix();
        let config = format!(
            r#"{{"Network":"10.0.0.0/8","Backend":{{"Type":"{}"}}}}"#,
            kind.name()
        );
        self.put(keyspace, format!("{prefix}/config"), config)?;
        let leases = (0..n)
            .map(|i| (Peer::new(i).key(&prefix), Peer::new(i).value(kind)))
            .collect();
        self.put_all(keyspace, leases)?;
        Ok(prefix)
    }

    /// A fresh host namespace on the LAN with its observer expecting peers `0..n`, then the
    /// agent started in it.
    fn start_agent(
        &mut self,
        agent: &Agent,
        kind: Kind,
        n: usize,
        prefix: &str,
        extra: &[&str],
    ) -> Result<Run> {
        self.hosts += 1;
        // A new address each run, and no stale ARP entry in etcd's namespace for it.
        let host_ip = Ipv4Addr::new(192, 168, 0, 10 + (self.hosts % 240) as u8);
        self.etcd_ns.sh("ip neigh flush all");
        let host = Netns::new("bhost");
        self.switch.plug(&host, "eth0", &format!("{host_ip}/16"));
        let watch = KernelWatch::start(host.name())?;
        let mut expected = HashMap::new();
        for i in 0..n {
            Peer::new(i).objects(kind, &mut expected);
        }
        watch.expect(expected);
        let dir = self.work.join(format!("run{}", self.hosts));
        std::fs::create_dir_all(&dir)?;
        let subnet_env = dir.join("subnet.env");
        let log = File::create(dir.join("flanneld.log"))?;
        let mut cmd = Command::new(&agent.bin);
        cmd.arg(format!("--etcd-endpoints={}", self.etcd.endpoint()))
            .arg(format!("--etcd-prefix={prefix}"))
            .arg("--iface=eth0")
            .arg(format!("--subnet-file={}", subnet_env.display()))
            .args(agent.args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let (child, started) = spawn_in(&host, cmd)?;
        Ok(Run {
            agent: AgentProc { child, started },
            watch,
            subnet_env,
            prefix: prefix.to_string(),
            keyspace: agent.keyspace,
            _host: host,
        })
    }

    /// Runs the agent against `n` peers until it is ready; returns the run and its start-up
    /// times.
    fn ready_agent(
        &mut self,
        agent: &Agent,
        kind: Kind,
        n: usize,
        extra: &[&str],
    ) -> Result<(Run, Startup)> {
        let prefix = self.load(agent.keyspace, kind, n)?;
        let mut run = self.start_agent(agent, kind, n, &prefix, extra)?;
        let t0 = run.agent.started;
        let deadline = t0 + CONVERGE_TIMEOUT;
        let env_at = loop {
            if run.subnet_env.exists() {
                break Instant::now();
            }
            if let Ok(Some(status)) = run.agent.child.try_wait() {
                bail!("flanneld exited ({status}) before writing subnet.env");
            }
            if Instant::now() > deadline {
                bail!("no subnet.env after {CONVERGE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let matched_at = run.watch.wait_matched(CONVERGE_TIMEOUT)?;
        let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
        Ok((
            run,
            Startup {
                env_ms: ms(env_at),
                kernel_ms: ms(matched_at),
            },
        ))
    }

    fn finish(&self, run: Run) -> Result<()> {
        let (prefix, keyspace) = (run.prefix.clone(), run.keyspace);
        drop(run);
        self.delete_prefix(keyspace, &prefix)
    }

    /// The sum of etcd's `grpc_server_msg_received_total` (every unary request and every
    /// message on a stream).
    fn etcd_requests(&self) -> Result<f64> {
        let mut s = TcpStream::connect(etcd_addr())?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }
}

fn etcd_addr() -> SocketAddr {
    SocketAddr::from((ETCD_IP, ETCD_PORT))
}

/// [`Lab::put_all`] in the v2 keyspace: [`WRITE_DEPTH`] connections, one thread each, opened
/// from this thread (in etcd's namespace).
fn put_all_v2(kvs: Vec<(String, String)>) -> Result<Duration> {
    let conns = (0..WRITE_DEPTH)
        .map(|_| V2Conn::connect(etcd_addr()))
        .collect::<Result<Vec<_>>>()?;
    let per_conn = kvs.len().div_ceil(WRITE_DEPTH).max(1);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let writers: Vec<_> = conns
            .into_iter()
            .zip(kvs.chunks(per_conn))
            .map(|(mut conn, chunk)| {
                scope.spawn(move || chunk.iter().try_for_each(|(k, v)| conn.set(k, v)))
            })
            .collect();
        writers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("v2 writer panicked"))?
        })
    })?;
    Ok(start.elapsed())
}

/// Start-up times of one run, from exec.
struct Startup {
    env_ms: f64,
    kernel_ms: f64,
}

impl Startup {
    fn ready_ms(&self) -> f64 {
        self.env_ms.max(self.kernel_ms)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `p`-th percentile (nearest rank) of `v`.
fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// "median (min–max)" of a series.
fn spread(v: &[f64], digits: usize) -> String {
    if v.iter().all(|x| x.is_nan()) {
        return "–".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() == 1 {
        format!("{:.*}", digits, v[0])
    } else {
        format!(
            "{:.*} ({:.*}–{:.*})",
            digits,
            median(v.to_vec()),
            digits,
            lo,
            digits,
            hi
        )
    }
}

/// Side-by-side figures (`--go`, `--go-v3`): per figure the median of each agent's series, in
/// the order of the agents (the Go anchors last); printed with the ratio of each Go anchor to
/// ours (the first agent): lower is better for every figure, so > 1 means ours is ahead.
struct Comparison {
    names: Vec<&'static str>,
    /// How many of the agents (the last ones) are Go anchors.
    anchors: usize,
    rows: Vec<(String, Vec<f64>)>,
}

impl Comparison {
    fn new(agents: &[Agent]) -> Comparison {
        let anchors = agents.iter().filter(|a| a.go).count();
        let names = agents.iter().filter(|_| anchors > 0).map(|a| a.name);
        Comparison {
            names: names.collect(),
            anchors,
            rows: Vec::new(),
        }
    }

    /// Records one figure from per-agent series (one per agent, the anchors last), by median;
    /// nothing without an anchor.
    fn add(&mut self, label: String, series: &[Vec<f64>]) {
        if self.anchors > 0 && series.len() == self.names.len() {
            let medians = series.iter().map(|s| median(s.clone())).collect();
            self.rows.push((label, medians));
        }
    }

    fn render(&self, out: &mut String) -> Result<()> {
        if self.anchors == 0 {
            return Ok(());
        }
        let anchors = &self.names[self.names.len() - self.anchors..];
        writeln!(out, "### Side by side with {}\n", anchors.join(" and "))?;
        writeln!(out, "Medians from the sections above (same runs, agents alternating); ratio = Go ÷ ours, so > 1 means ours is faster or smaller.\n")?;
        let ratios: String = anchors.iter().map(|g| format!(" {g} ÷ ours |")).collect();
        writeln!(out, "| figure | {} |{ratios}", self.names.join(" | "))?;
        writeln!(
            out,
            "|---|{}",
            "---:|".repeat(self.names.len() + anchors.len())
        )?;
        for (label, values) in &self.rows {
            let cells: String = values.iter().map(|v| format!(" {v:.2} |")).collect();
            let ours = values[0];
            // A zero (idle CPU below the 10 ms resolution) has no ratio.
            let ratio = |go: &f64| match ours > 0.0 {
                true => format!(" {:.2} |", go / ours),
                false => " – |".to_string(),
            };
            let ratios: String = values[values.len() - self.anchors..]
                .iter()
                .map(ratio)
                .collect();
            writeln!(out, "| {label} |{cells}{ratios}")?;
        }
        out.push('\n');
        Ok(())
    }
}

/// Starts `cmd` inside `host`'s network namespace (entered between fork and exec, so no
/// `ip netns exec` is timed); the child dies with this process. Returns it and when it started.
fn spawn_in(host: &Netns, mut cmd: Command) -> Result<(Child, Instant)> {
    let ns = File::open(format!("/run/netns/{}", host.name()))?;
    let ns_fd = ns.as_raw_fd();
    // SAFETY: setns and prctl are async-signal-safe; the child enters the host namespace and
    // dies with this process.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    Ok((child, started))
}

/// Runs `run` `runs` times for each agent, alternating the agents run by run (so a change of
/// the machine's load shows in both); returns what each agent's runs gathered.
fn alternate<S: Default>(
    agents: &[Agent],
    runs: usize,
    mut run: impl FnMut(&Agent, &mut S) -> Result<()>,
) -> Result<Vec<S>> {
    let mut gathered: Vec<S> = agents.iter().map(|_| S::default()).collect();
    for _ in 0..runs {
        for (agent, s) in agents.iter().zip(&mut gathered) {
            run(agent, s)?;
        }
    }
    Ok(gathered)
}

/// One agent's cold-start series for one case.
#[derive(Default)]
struct ColdSeries {
    env: Vec<f64>,
    kernel: Vec<f64>,
    ready: Vec<f64>,
    peak: Vec<f64>,
    rss: Vec<f64>,
    /// Private memory at ready and 1 s after.
    private_ready: Vec<f64>,
    private: Vec<f64>,
    file: Vec<f64>,
    pss: Vec<f64>,
}

impl ColdSeries {
    /// One run: the agent ready, its memory then and 1 s later.
    fn measure(&mut self, lab: &mut Lab, agent: &Agent, kind: Kind, n: usize) -> Result<()> {
        let (run, s) = lab.ready_agent(agent, kind, n, &[])?;
        let pid = run.agent.pid();
        self.private_ready.push(Memory::of(pid)?.private);
        std::thread::sleep(Duration::from_secs(1));
        let after = Memory::of(pid)?;
        self.peak.push(vm_mib(pid, "VmHWM:")?);
        self.rss.push(vm_mib(pid, "VmRSS:")?);
        self.private.push(after.private);
        self.file.push(after.file);
        self.pss.push(after.pss);
        self.env.push(s.env_ms);
        self.kernel.push(s.kernel_ms);
        self.ready.push(s.ready_ms());
        lab.finish(run)
    }

    fn row(&self, agent: &Agent, kind: Kind, n: usize) -> String {
        format!(
            "| {} | {} | {n} | {} | {} | {} | {} | {} | {:.2} / {:.2} | {:.1} | {:.1} |",
            agent.name,
            kind.name(),
            spread(&self.env, 1),
            spread(&self.kernel, 1),
            spread(&self.ready, 1),
            spread(&self.peak, 1),
            spread(&self.rss, 1),
            median(self.private_ready.clone()),
            median(self.private.clone()),
            median(self.file.clone()),
            median(self.pss.clone())
        )
    }
}

/// The side-by-side rows of one cold-start case.
fn compare_cold(cmp: &mut Comparison, kind: Kind, n: usize, series: &[ColdSeries]) {
    let pick =
        |f: fn(&ColdSeries) -> &Vec<f64>| series.iter().map(|s| f(s).clone()).collect::<Vec<_>>();
    let objects = match kind {
        Kind::HostGw => "all routes",
        Kind::Vxlan => "all neigh+FDB+routes",
    };
    let what = format!("{}, {n} peers", kind.name());
    if n > 0 {
        cmp.add(
            format!("exec → {objects} (ms), {what}"),
            &pick(|s| &s.kernel),
        );
    }
    cmp.add(format!("exec → subnet.env (ms), {what}"), &pick(|s| &s.env));
    cmp.add(
        format!("RSS 1 s after ready (MiB), {what}"),
        &pick(|s| &s.rss),
    );
    cmp.add(
        format!("private memory at ready (MiB), {what}"),
        &pick(|s| &s.private_ready),
    );
    cmp.add(
        format!("private memory 1 s after ready (MiB), {what}"),
        &pick(|s| &s.private),
    );
    cmp.add(format!("peak RSS (MiB), {what}"), &pick(|s| &s.peak));
}

fn cold_start(bench: &mut Bench, out: &mut String) -> Result<()> {
    let (lab, agents, opts, cmp) = bench.parts();
    writeln!(out, "### 1. Cold start\n")?;
    writeln!(out, "Time from exec to subnet.env written and to every peer object in the kernel (ready = the later of the two), peak RSS (VmHWM), the RSS (VmRSS) 1 s after ready, the private memory (RssAnon: what only this process holds) at ready and 1 s after, and 1 s after ready the file-backed part (RssFile: its binary's and libraries' pages, shared and reclaimable) and the PSS. Median (min–max) of {} runs.\n", opts.runs)?;
    writeln!(
        out,
        "| agent | backend | peers | subnet.env (ms) | kernel complete (ms) | ready (ms) | peak RSS (MiB) | RSS (MiB) | private at ready / 1 s (MiB) | file (MiB) | PSS (MiB) |"
    )?;
    writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let cases = [
        (Kind::HostGw, 0),
        (Kind::HostGw, 1),
        (Kind::HostGw, 1000),
        (Kind::HostGw, 5000),
        (Kind::HostGw, 10000),
        (Kind::Vxlan, 1000),
    ];
    for (kind, n) in cases.into_iter().filter(|&(k, n)| opts.wants_case(k, n)) {
        // 10000 peers only to compare the route styles: Go would take minutes per run.
        let runners: Vec<Agent> = match n > 5000 {
            true if !opts.nexthop || opts.quick => continue,
            true => agents.iter().filter(|a| !a.go).cloned().collect(),
            false => agents.to_vec(),
        };
        let series = alternate(&runners, opts.runs, |agent, s: &mut ColdSeries| {
            s.measure(lab, agent, kind, n)
        })?;
        for (agent, s) in runners.iter().zip(&series) {
            writeln!(out, "{}", s.row(agent, kind, n))?;
            eprintln!(
                "cold start {} {} {n}: ready {}",
                agent.name,
                kind.name(),
                spread(&s.ready, 1)
            );
        }
        compare_cold(cmp, kind, n, &series);
    }
    writeln!(out)?;
    Ok(())
}

/// One run's latencies (ms): lease PUT → route in the kernel, lease DELETE → route gone, the
/// etcd round trips of the PUTs and DELETEs alone, and (v3 only) per event what the change took
/// after the event reached a second watcher (the agent's and the kernel's share).
#[derive(Default)]
struct Latencies {
    add: Vec<f64>,
    delete: Vec<f64>,
    put: Vec<f64>,
    del: Vec<f64>,
    add_after_watch: Vec<f64>,
    delete_after_watch: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `events` new leases one at a time, then deletes them one at a time, timing each.
fn propagation_run(lab: &mut Lab, agent: &Agent, n: usize, events: usize) -> Result<Latencies> {
    let (run, _) = lab.ready_agent(agent, Kind::HostGw, n, &[])?;
    std::thread::sleep(Duration::from_secs(1));
    let ks = agent.keyspace;
    let probe = match ks {
        Keyspace::V3 => Some(WatchProbe::start(etcd_addr(), &run.prefix)?),
        Keyspace::V2 => None,
    };
    // What the change took after a second watcher saw its event (ms).
    let after_watch =
        |key: &str, delete: bool, t0: Instant, done: Instant| -> Result<Option<f64>> {
            let Some(probe) = &probe else { return Ok(None) };
            let arrived = probe.arrival(key, delete, Duration::from_secs(10))?;
            Ok(Some(
                ms(done.saturating_duration_since(t0)) - ms(arrived.saturating_duration_since(t0)),
            ))
        };
    let mut l = Latencies::default();
    let route = |e: usize| Object::Route(peer_subnet(n + e), 24);
    for e in 0..events {
        let peer = Peer::new(n + e);
        let t0 = Instant::now();
        lab.put(ks, peer.key(&run.prefix), peer.value(Kind::HostGw))?;
        l.put.push(ms(t0.elapsed()));
        let seen = run.watch.wait_present(route(e), Duration::from_secs(10))?;
        l.add.push(ms(seen.saturating_duration_since(t0)));
        l.add_after_watch
            .extend(after_watch(&peer.key(&run.prefix), false, t0, seen)?);
        std::thread::sleep(Duration::from_millis(10));
    }
    for e in 0..events {
        let t0 = Instant::now();
        let key = Peer::new(n + e).key(&run.prefix);
        lab.delete(ks, &key)?;
        l.del.push(ms(t0.elapsed()));
        let gone = run.watch.wait_absent(route(e), Duration::from_secs(10))?;
        l.delete.push(ms(gone.saturating_duration_since(t0)));
        l.delete_after_watch
            .extend(after_watch(&key, true, t0, gone)?);
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(probe);
    lab.finish(run)?;
    Ok(l)
}

/// Picks one series out of a run's latencies.
type Pick = fn(&Latencies) -> &Vec<f64>;

/// Per run, percentile `p` of the picked series.
fn per_run(runs: &[Latencies], pick: Pick, p: f64) -> Vec<f64> {
    runs.iter()
        .map(|l| percentile(pick(l).clone(), p))
        .collect()
}

fn propagation(bench: &mut Bench, out: &mut String) -> Result<()> {
    let (lab, agents, opts, cmp) = bench.parts();
    let n = 1000;
    let events = opts.size(200, 50);
    writeln!(out, "### 2. Propagation latency\n")?;
    writeln!(out, "host-gw agent with {n} peers; {events} new leases written one at a time (10 ms apart), then deleted one at a time; latency = lease PUT (DELETE) sent → route in (gone from) the kernel. The etcd round trip alone is shown beside it, and, for the v3 keyspace, what each change took after its event reached a second watcher of the prefix (the agent's and the kernel's share, without etcd's delivery of the event). Median (min–max) over {} runs of each run's percentile.\n", opts.runs)?;
    let runs = alternate(agents, opts.runs, |agent, r: &mut Vec<Latencies>| {
        r.push(propagation_run(lab, agent, n, events)?);
        Ok(())
    })?;
    writeln!(
        out,
        "| agent | change | peers | events | p50 (ms) | p99 (ms) | max (ms) | etcd round trip p50 / p99 (ms) | after the watch event p50 / p99 (ms) |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let changes: [(&str, Pick, Pick, Pick); 2] = [
        (
            "PUT → route",
            |l| &l.add,
            |l| &l.put,
            |l| &l.add_after_watch,
        ),
        (
            "DELETE → route gone",
            |l| &l.delete,
            |l| &l.del,
            |l| &l.delete_after_watch,
        ),
    ];
    for (name, lat, rtt, after_watch) in changes {
        for (agent, r) in agents.iter().zip(&runs) {
            let cell = |pick: Pick, p: f64| spread(&per_run(r, pick, p), 2);
            let (agent, p99) = (agent.name, cell(lat, 99.0));
            writeln!(
                out,
                "| {agent} | {name} | {n} | {events} | {} | {p99} | {} | {} / {} | {} / {} |",
                cell(lat, 50.0),
                cell(lat, 100.0),
                cell(rtt, 50.0),
                cell(rtt, 99.0),
                cell(after_watch, 50.0),
                cell(after_watch, 99.0)
            )?;
            eprintln!("propagation {agent} {name}: p99 {p99}");
        }
        for p in [50.0, 99.0] {
            let series: Vec<Vec<f64>> = runs.iter().map(|r| per_run(r, lat, p)).collect();
            cmp.add(format!("lease {name} p{p} (ms), {n} peers"), &series);
        }
    }
    out.push('\n');
    Ok(())
}

fn churn(lab: &mut Lab, agent: &Agent, opts: &Opts, out: &mut String) -> Result<()> {
    let n = 1000;
    let changes = opts.size(5000, 1000);
    writeln!(out, "### 3. Churn\n")?;
    writeln!(out, "host-gw agent with {n} peers; {changes} lease writes ({WRITE_DEPTH} in flight): every other one a new peer, the others move an existing peer to a new PublicIP. Time from the first write until the kernel holds exactly the final routes; agent CPU (user+system, children included) from the first write to 1 s after convergence. Median (min–max) of {} runs.\n", opts.runs)?;
    let (mut written, mut converged, mut cpu) = (vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        let (run, _) = lab.ready_agent(agent, Kind::HostGw, n, &[])?;
        std::thread::sleep(Duration::from_secs(1));
        let mut peers: Vec<Peer> = (0..n).map(Peer::new).collect();
        let mut writes = Vec::with_capacity(changes);
        for c in 0..changes {
            let peer = if c % 2 == 0 {
                peers.push(Peer::new(n + c / 2));
                peers[peers.len() - 1]
            } else {
                let k = (c / 2) % n;
                peers[k].address = 20_000 + c;
                peers[k]
            };
            writes.push((peer.key(&run.prefix), peer.value(Kind::HostGw)));
        }
        let mut expected = HashMap::new();
        for p in &peers {
            p.objects(Kind::HostGw, &mut expected);
        }
        run.watch.expect(expected);
        let pid = run.agent.pid();
        let cpu0 = cpu_seconds(pid)?.1;
        let t0 = Instant::now();
        let took = lab.put_all(agent.keyspace, writes)?;
        let done = run.watch.wait_matched(CONVERGE_TIMEOUT)?;
        std::thread::sleep(Duration::from_secs(1));
        cpu.push((cpu_seconds(pid)?.1 - cpu0) * 1000.0);
        written.push(took.as_secs_f64() * 1000.0);
        converged.push(done.saturating_duration_since(t0).as_secs_f64() * 1000.0);
        lab.finish(run)?;
    }
    writeln!(
        out,
        "| peers | writes | etcd accepted all (ms) | kernel matches (ms) | agent CPU (ms) |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|")?;
    writeln!(
        out,
        "| {n} | {changes} | {} | {} | {} |\n",
        spread(&written, 0),
        spread(&converged, 0),
        spread(&cpu, 0)
    )?;
    eprintln!("churn: converged {}", spread(&converged, 0));
    Ok(())
}

/// One agent's idle series.
#[derive(Default)]
struct IdleSeries {
    own: Vec<f64>,
    all: Vec<f64>,
    rss: Vec<f64>,
    /// Private memory, file-backed part and PSS at the end.
    private: Vec<f64>,
    file: Vec<f64>,
    pss: Vec<f64>,
    requests: Vec<f64>,
}

impl IdleSeries {
    /// One run: `secs` of idling measured from [`IDLE_SETTLE`] after ready.
    fn measure(&mut self, lab: &mut Lab, agent: &Agent, n: usize, secs: u64) -> Result<()> {
        let (run, _) = lab.ready_agent(agent, Kind::HostGw, n, &["--ip-masq"])?;
        std::thread::sleep(IDLE_SETTLE);
        let pid = run.agent.pid();
        let (own0, all0) = cpu_seconds(pid)?;
        let req0 = lab.etcd_requests()?;
        std::thread::sleep(Duration::from_secs(secs));
        let (own1, all1) = cpu_seconds(pid)?;
        let req1 = lab.etcd_requests()?;
        let per_min = 60.0 / secs as f64;
        self.own.push((own1 - own0) * 1000.0 * per_min);
        self.all.push((all1 - all0) * 1000.0 * per_min);
        // The benchmark's own /metrics GET is plain HTTP, not gRPC: not counted.
        self.requests.push((req1 - req0) * per_min);
        self.rss.push(vm_mib(pid, "VmRSS:")?);
        let memory = Memory::of(pid)?;
        self.private.push(memory.private);
        self.file.push(memory.file);
        self.pss.push(memory.pss);
        lab.finish(run)
    }
}

/// How long after ready the idle measurement starts: past the first periodic rule check
/// (`--iptables-resync`, 5 s), which carries start-up work moved off the start-up path (the
/// other rule engine's leftovers are looked for then).
const IDLE_SETTLE: Duration = Duration::from_secs(12);

fn idle(bench: &mut Bench, out: &mut String) -> Result<()> {
    let (lab, agents, opts, cmp) = bench.parts();
    let n = 1000;
    let secs = opts.size(60, 15) as u64;
    let runs = opts.runs.min(3);
    writeln!(out, "### 4. Idle\n")?;
    writeln!(out, "host-gw agent with {n} peers and `--ip-masq` (default `--iptables-resync=5`), measured over {secs} s starting {} s after ready (past the first periodic rule check, which carries deferred start-up work). CPU per minute of the agent alone and including its children (iptables), RSS, private memory (RssAnon), file-backed part and PSS at the end, and etcd v3 requests per minute (etcd's `grpc_server_msg_received_total`, every unary request and stream message; the agent is etcd's only client then; a v2 agent's HTTP requests are not counted). Median (min–max) of {runs} runs.\n", IDLE_SETTLE.as_secs())?;
    let series = alternate(agents, runs, |agent, s: &mut IdleSeries| {
        s.measure(lab, agent, n, secs)
    })?;
    writeln!(
        out,
        "| agent | peers | agent CPU (ms/min) | incl. iptables (ms/min) | RSS (MiB) | private / file / PSS (MiB) | etcd v3 requests/min |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (agent, s) in agents.iter().zip(&series) {
        let requests = match agent.keyspace {
            Keyspace::V3 => spread(&s.requests, 1),
            Keyspace::V2 => "–".to_string(),
        };
        writeln!(
            out,
            "| {} | {n} | {} | {} | {} | {:.2} / {:.1} / {:.1} | {requests} |",
            agent.name,
            spread(&s.own, 1),
            spread(&s.all, 1),
            spread(&s.rss, 1),
            median(s.private.clone()),
            median(s.file.clone()),
            median(s.pss.clone()),
        )?;
        eprintln!(
            "idle {}: cpu incl. children {} ms/min",
            agent.name,
            spread(&s.all, 1)
        );
    }
    let all: Vec<Vec<f64>> = series.iter().map(|s| s.all.clone()).collect();
    cmp.add(format!("idle CPU incl. children (ms/min), {n} peers"), &all);
    let private: Vec<Vec<f64>> = series.iter().map(|s| s.private.clone()).collect();
    cmp.add(
        format!("private memory after a minute idle (MiB), {n} peers"),
        &private,
    );
    out.push('\n');
    Ok(())
}

/// Gbit/s of one `iperf3` run from `client` to `server_ip` (an `iperf3 -s` in `server`, killed
/// afterwards).
fn iperf(client: &Netns, server: &Netns, server_ip: &str, secs: usize) -> Result<f64> {
    let mut srv = server
        .command("iperf3")
        .arg("-s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let t = secs.to_string();
    let mut outcome = Err(anyhow::anyhow!("iperf3 never connected"));
    for _ in 0..50 {
        let o = client.try_exec("iperf3", &["-c", server_ip, "-t", &t, "-J"]);
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        // A server not listening yet fails the run; it is tried again.
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            outcome = Ok(bps / 1e9);
            break;
        }
        outcome = Err(anyhow::anyhow!(
            "iperf3 gave no result: {}",
            String::from_utf8_lossy(&o.stdout)
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = srv.kill();
    let _ = srv.wait();
    outcome
}

/// Two hosts running the agent with `kind`, a pod on each (MTU = FLANNEL_MTU); Gbit/s per run.
fn iperf_cluster(kind: Kind, runs: usize, secs: usize) -> Result<(Vec<f64>, String)> {
    let config = format!(
        r#"{{"Network":"10.0.0.0/8","Backend":{{"Type":"{}"}}}}"#,
        kind.name()
    );
    let mut c = Cluster::start(2, &config, &[]);
    let s0 = c.wait_subnet(0);
    let s1 = c.wait_subnet(1);
    let mtu = cluster::env_value(&c.subnet_env(0), "FLANNEL_MTU").context("FLANNEL_MTU")?;
    let pods = [Pod::new(&c.hosts[0], &s0, 2), Pod::new(&c.hosts[1], &s1, 2)];
    for (host, pod) in c.hosts.iter().zip(&pods) {
        pod.ns.sh(&format!("ip link set eth0 mtu {mtu}"));
        host.sh(&format!("ip link set vp2 mtu {mtu}"));
    }
    cluster::wait_for("pod-to-pod ping", Duration::from_secs(30), || {
        pods[0].ping(&pods[1].ip).then_some(())
    });
    let mut gbps = Vec::new();
    for _ in 0..runs {
        gbps.push(iperf(&pods[0].ns, &pods[1].ns, &pods[1].ip, secs)?);
    }
    Ok((gbps, mtu))
}

fn data_plane(opts: &Opts, out: &mut String) -> Result<()> {
    let runs = opts.runs.min(3);
    let secs = opts.size(5, 2);
    writeln!(
        out,
        "### 5. Data plane (iperf3, one TCP stream, {secs} s)\n"
    )?;
    writeln!(out, "Pod to pod across two hosts (pod veth → cni0 bridge → host → LAN bridge → host → cni0 → pod; pod MTU = FLANNEL_MTU), versus the two pod namespaces joined by one veth pair (MTU 1500). Median (min–max) of {runs} runs, Gbit/s.\n")?;
    let direct = {
        let a = Netns::new("ipa");
        let b = Netns::new("ipb");
        a.link_to("eth0", &b, "eth0");
        a.sh("ip addr add 10.99.0.1/24 dev eth0");
        b.sh("ip addr add 10.99.0.2/24 dev eth0");
        (0..runs)
            .map(|_| iperf(&a, &b, "10.99.0.2", secs))
            .collect::<Result<Vec<f64>>>()?
    };
    let (hostgw, hostgw_mtu) = iperf_cluster(Kind::HostGw, runs, secs)?;
    let (vxlan, vxlan_mtu) = iperf_cluster(Kind::Vxlan, runs, secs)?;
    writeln!(out, "| path | MTU | Gbit/s |")?;
    writeln!(out, "|---|---:|---:|")?;
    writeln!(out, "| direct veth | 1500 | {} |", spread(&direct, 2))?;
    writeln!(out, "| host-gw | {hostgw_mtu} | {} |", spread(&hostgw, 2))?;
    writeln!(out, "| vxlan | {vxlan_mtu} | {} |\n", spread(&vxlan, 2))?;
    eprintln!("iperf: direct {direct:?} host-gw {hostgw:?} vxlan {vxlan:?}");
    Ok(())
}

/// The machine: CPUs, CPU model, kernel, load.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "- CPUs: {cpus} × {model}\n- kernel: {}\n- load average at start: {}\n",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// `$FLANNELD_BIN`, else `flanneld` next to this binary.
fn agent_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("FLANNELD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("flanneld"))
        .context("exe dir")?;
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release -p flanneld` first, or set FLANNELD_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// The agents to measure: ours, then with `--ours-v2` ours on the v2 keyspace, then with `--go`
/// Go flanneld v0.11 (always last: the side-by-side ratios are against it).
fn agents(opts: &Opts, bin: &Path) -> Vec<Agent> {
    let ours = |name, keyspace, args| Agent {
        name,
        bin: bin.to_path_buf(),
        keyspace,
        args,
        go: false,
    };
    let mut agents = vec![ours("ours", Keyspace::V3, &[])];
    if let Some(baseline) = &opts.baseline {
        agents.push(Agent {
            bin: baseline.clone(),
            ..ours("ours (baseline)", Keyspace::V3, &[])
        });
    }
    if opts.ours_v2 {
        agents.push(ours("ours (v2 keyspace)", Keyspace::V2, &[]));
    }
    if opts.nexthop {
        agents.push(ours(
            "ours (nexthop)",
            Keyspace::V3,
            &["--route-style=nexthop"],
        ));
    }
    let go = |name, bin: &PathBuf, keyspace| Agent {
        name,
        bin: bin.clone(),
        keyspace,
        args: &[],
        go: true,
    };
    if let Some(bin) = &opts.go {
        agents.push(go("Go v0.11", bin, Keyspace::V2));
    }
    if let Some(bin) = &opts.go_v3 {
        agents.push(go("Go v0.20.2", bin, Keyspace::V3));
    }
    agents
}

/// What the sections that compare agents share: the lab, the agents, the options and the
/// side-by-side figures gathered so far.
struct Bench<'a> {
    lab: Lab,
    agents: &'a [Agent],
    opts: &'a Opts,
    cmp: Comparison,
}

impl<'a> Bench<'a> {
    /// The lab, the agents, the options and the figures, borrowed apart for one section.
    fn parts(&mut self) -> (&mut Lab, &'a [Agent], &'a Opts, &mut Comparison) {
        (&mut self.lab, self.agents, self.opts, &mut self.cmp)
    }
}

/// Runs the sections `opts` asks for, printing each as soon as it is done.
fn run_sections(opts: &Opts, agents: &[Agent], out: &mut String) -> Result<()> {
    let mut printed = 0;
    let mut flush = |out: &str| {
        print!("{}", &out[printed..]);
        let _ = std::io::stdout().flush();
        printed = out.len();
    };
    flush(out);
    let v2 = agents.iter().any(|a| a.keyspace == Keyspace::V2);
    let mut bench = Bench {
        lab: Lab::start(opts.logs.as_deref(), v2)?,
        agents,
        opts,
        cmp: Comparison::new(agents),
    };
    if opts.wants("cold") {
        cold_start(&mut bench, out)?;
        flush(out);
    }
    if opts.wants("propagation") {
        propagation(&mut bench, out)?;
        flush(out);
    }
    if opts.wants("churn") {
        churn(&mut bench.lab, &agents[0], opts, out)?;
        flush(out);
    }
    if opts.wants("idle") {
        idle(&mut bench, out)?;
        flush(out);
    }
    if !bench.cmp.rows.is_empty() {
        bench.cmp.render(out)?;
        flush(out);
    }
    if opts.wants("iperf") {
        data_plane(opts, out)?;
        flush(out);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    writeln!(out, "Load average at the end: {}", load.join(" "))?;
    flush(out);
    Ok(())
}

fn main() -> Result<()> {
    let opts = Opts::parse()?;
    let bin = agent_binary()?;
    let agents = agents(&opts, &bin);
    // Before any thread exists: the harness (Cluster) and etcd's data directory read these.
    if std::env::var_os("TMPDIR").is_none() && Path::new("/dev/shm").is_dir() {
        std::env::set_var("TMPDIR", "/dev/shm");
    }
    std::env::set_var("FLANNELD_BIN", &bin);
    let mut out = String::new();
    writeln!(out, "## flanneld-bench results\n")?;
    out.push_str(&machine());
    writeln!(
        out,
        "- agent: {}{}\n- command: `{}`\n",
        bin.display(),
        opts.go.as_ref().map_or(String::new(), |go| format!(
            ", Go flanneld: {}",
            go.display()
        )),
        std::env::args().collect::<Vec<_>>().join(" ")
    )?;
    run_sections(&opts, &agents, &mut out)?;
    if let Some(path) = &opts.out {
        std::fs::write(path, &out).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
