//! `flanneld-bench`: the performance benchmarks of issue 5, run against the real agent binary,
//! real etcd and real kernel state in network namespaces (root required).
//!
//! ```text
//! cargo build --release -p flanneld
//! cargo run --release -p flanneld-tests --bin flanneld-bench -- [--quick] [--runs N]
//!     [--out FILE] [--logs DIR] [--only cold,propagation,churn,idle,iperf]
//! ```
//!
//! The agent is `$FLANNELD_BIN`, else `flanneld` next to this binary (`target/release/`). etcd
//! (plain HTTP, data on tmpfs unless `TMPDIR` says otherwise) runs in its own namespace on a
//! bridge; every agent run gets a fresh host namespace plugged into that bridge. Kernel state is
//! observed passively through netlink notifications ([`kernel::KernelWatch`]), so measuring does
//! not load the agent. Results are printed as markdown (and written to `--out`).

mod kernel;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
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

/// etcd's address on the benchmark LAN (192.168.0.0/16; peers' PublicIPs are 192.168.1.1 on).
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// Concurrent etcd writes when loading or churning leases.
const WRITE_DEPTH: usize = 64;
/// Longest wait for the agent to converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Command-line options.
struct Opts {
    quick: bool,
    runs: usize,
    out: Option<PathBuf>,
    only: Vec<String>,
    logs: Option<PathBuf>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut opts = Opts {
            quick: false,
            runs: 5,
            out: None,
            only: Vec::new(),
            logs: None,
        };
        let mut runs = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => opts.quick = true,
                "--runs" => runs = Some(args.next().context("--runs N")?.parse()?),
                "--out" => opts.out = Some(args.next().context("--out FILE")?.into()),
                "--logs" => opts.logs = Some(args.next().context("--logs DIR")?.into()),
                "--only" => {
                    opts.only = args
                        .next()
                        .context("--only LIST")?
                        .split(',')
                        .map(str::to_string)
                        .collect()
                }
                "-h" | "--help" => {
                    println!("flanneld-bench [--quick] [--runs N] [--out FILE] [--logs DIR] [--only cold,propagation,churn,idle,iperf]");
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
    bin: PathBuf,
    switch: Switch,
    etcd_ns: Netns,
    etcd: EtcdServer,
    rt: tokio::runtime::Runtime,
    client: etcd_client::Client,
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
    /// Declared last: the namespace goes after the agent and the observer.
    _host: Netns,
}

impl Lab {
    fn start(bin: PathBuf, logs: Option<&Path>) -> Result<Lab> {
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
            ..EtcdSpec::default()
        });
        // The etcd client (and the /metrics reader) live in etcd's namespace.
        let home = File::open("/proc/thread-self/ns/net")?;
        enter_netns(etcd_ns.name())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(etcd_client::Client::connect([etcd.endpoint()], None))?;
        Ok(Lab {
            bin,
            switch,
            etcd_ns,
            etcd,
            rt,
            client,
            work,
            home,
            _temp: temp,
            hosts: 0,
        })
    }

    /// Writes `(key, value)` pairs with [`WRITE_DEPTH`] requests in flight; returns how long
    /// etcd took.
    fn put_all(&self, kvs: Vec<(String, String)>) -> Result<Duration> {
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

    fn put(&self, key: String, value: String) -> Result<()> {
        let mut kv = self.client.kv_client();
        self.rt.block_on(kv.put(key, value, None))?;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let mut kv = self.client.kv_client();
        self.rt.block_on(kv.delete(key, None))?;
        Ok(())
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let mut kv = self.client.kv_client();
        let opts = etcd_client::DeleteOptions::new().with_prefix();
        self.rt
            .block_on(kv.delete(format!("{prefix}/"), Some(opts)))?;
        Ok(())
    }

    /// A fresh prefix with the config for `kind` and peers `0..n`.
    fn load(&self, kind: Kind, n: usize) -> Result<String> {
        let prefix = EtcdServer::unique_prefix();
        let config = format!(
            r#"{{"Network":"10.0.0.0/8","Backend":{{"Type":"{}"}}}}"#,
            kind.name()
        );
        self.put(format!("{prefix}/config"), config)?;
        let leases = (0..n)
            .map(|i| (Peer::new(i).key(&prefix), Peer::new(i).value(kind)))
            .collect();
        self.put_all(leases)?;
        Ok(prefix)
    }

    /// A fresh host namespace on the LAN with its observer expecting peers `0..n`, then the
    /// agent started in it.
    fn start_agent(&mut self, kind: Kind, n: usize, prefix: &str, extra: &[&str]) -> Result<Run> {
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
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--etcd-endpoints={}", self.etcd.endpoint()))
            .arg(format!("--etcd-prefix={prefix}"))
            .arg("--iface=eth0")
            .arg(format!("--subnet-file={}", subnet_env.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let ns = File::open(format!("/run/netns/{}", host.name()))?;
        let ns_fd = ns.as_raw_fd();
        // SAFETY: setns and prctl are async-signal-safe; the child enters the host namespace
        // and dies with this process.
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
        let child = cmd.spawn().context("spawn flanneld")?;
        drop(ns);
        Ok(Run {
            agent: AgentProc { child, started },
            watch,
            subnet_env,
            prefix: prefix.to_string(),
            _host: host,
        })
    }

    /// Runs the agent against `n` peers until it is ready; returns the run and its start-up
    /// times.
    fn ready_agent(&mut self, kind: Kind, n: usize, extra: &[&str]) -> Result<(Run, Startup)> {
        let prefix = self.load(kind, n)?;
        let mut run = self.start_agent(kind, n, &prefix, extra)?;
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
        let prefix = run.prefix.clone();
        drop(run);
        self.delete_prefix(&prefix)
    }

    /// The sum of etcd's `grpc_server_msg_received_total` (every unary request and every
    /// message on a stream).
    fn etcd_requests(&self) -> Result<f64> {
        let mut s = TcpStream::connect((ETCD_IP, 2379))?;
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

fn cold_start(lab: &mut Lab, opts: &Opts, out: &mut String) -> Result<()> {
    writeln!(out, "### 1. Cold start\n")?;
    writeln!(out, "Time from exec to subnet.env written and to every peer object in the kernel (ready = the later of the two), peak RSS (VmHWM) and the anonymous and file-backed parts of the RSS (RssAnon, RssFile) 1 s after ready. Median (min–max) of {} runs.\n", opts.runs)?;
    writeln!(
        out,
        "| backend | peers | subnet.env (ms) | kernel complete (ms) | ready (ms) | peak RSS (MiB) | anon / file (MiB) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    let cases = [
        (Kind::HostGw, 0),
        (Kind::HostGw, 1),
        (Kind::HostGw, 1000),
        (Kind::HostGw, 5000),
        (Kind::Vxlan, 1000),
    ];
    for (kind, n) in cases {
        let (mut env, mut kernel, mut ready, mut rss) = (vec![], vec![], vec![], vec![]);
        let (mut anon, mut file) = (vec![], vec![]);
        for _ in 0..opts.runs {
            let (run, s) = lab.ready_agent(kind, n, &[])?;
            std::thread::sleep(Duration::from_secs(1));
            rss.push(vm_mib(run.agent.pid(), "VmHWM:")?);
            anon.push(vm_mib(run.agent.pid(), "RssAnon:")?);
            file.push(vm_mib(run.agent.pid(), "RssFile:")?);
            env.push(s.env_ms);
            kernel.push(s.kernel_ms);
            ready.push(s.ready_ms());
            lab.finish(run)?;
        }
        writeln!(
            out,
            "| {} | {n} | {} | {} | {} | {} | {:.1} / {:.1} |",
            kind.name(),
            spread(&env, 1),
            spread(&kernel, 1),
            spread(&ready, 1),
            spread(&rss, 1),
            median(anon),
            median(file)
        )?;
        eprintln!(
            "cold start {} {n}: ready {}",
            kind.name(),
            spread(&ready, 1)
        );
    }
    writeln!(out)?;
    Ok(())
}

/// One run's latencies (ms): lease PUT → route in the kernel, lease DELETE → route gone, and the
/// etcd round trips of the PUTs and DELETEs alone.
#[derive(Default)]
struct Latencies {
    add: Vec<f64>,
    delete: Vec<f64>,
    put: Vec<f64>,
    del: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `events` new leases one at a time, then deletes them one at a time, timing each.
fn propagation_run(lab: &mut Lab, n: usize, events: usize) -> Result<Latencies> {
    let (run, _) = lab.ready_agent(Kind::HostGw, n, &[])?;
    std::thread::sleep(Duration::from_secs(1));
    let mut l = Latencies::default();
    let route = |e: usize| Object::Route(peer_subnet(n + e), 24);
    for e in 0..events {
        let peer = Peer::new(n + e);
        let t0 = Instant::now();
        lab.put(peer.key(&run.prefix), peer.value(Kind::HostGw))?;
        l.put.push(ms(t0.elapsed()));
        let seen = run.watch.wait_present(route(e), Duration::from_secs(10))?;
        l.add.push(ms(seen.saturating_duration_since(t0)));
        std::thread::sleep(Duration::from_millis(10));
    }
    for e in 0..events {
        let t0 = Instant::now();
        lab.delete(&Peer::new(n + e).key(&run.prefix))?;
        l.del.push(ms(t0.elapsed()));
        let gone = run.watch.wait_absent(route(e), Duration::from_secs(10))?;
        l.delete.push(ms(gone.saturating_duration_since(t0)));
        std::thread::sleep(Duration::from_millis(10));
    }
    lab.finish(run)?;
    Ok(l)
}

fn propagation(lab: &mut Lab, opts: &Opts, out: &mut String) -> Result<()> {
    let n = 1000;
    let events = opts.size(200, 50);
    writeln!(out, "### 2. Propagation latency\n")?;
    writeln!(out, "host-gw agent with {n} peers; {events} new leases written one at a time (10 ms apart), then deleted one at a time; latency = lease PUT (DELETE) sent → route in (gone from) the kernel. The etcd round trip alone is shown beside it. Median (min–max) over {} runs of each run's percentile.\n", opts.runs)?;
    let runs: Vec<Latencies> = (0..opts.runs)
        .map(|_| propagation_run(lab, n, events))
        .collect::<Result<_>>()?;
    let stat = |pick: fn(&Latencies) -> &Vec<f64>, p: f64| -> String {
        spread(
            &runs
                .iter()
                .map(|l| percentile(pick(l).clone(), p))
                .collect::<Vec<_>>(),
            2,
        )
    };
    writeln!(
        out,
        "| change | peers | events | p50 (ms) | p99 (ms) | max (ms) | etcd round trip p50 (ms) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (name, lat, rtt) in [
        (
            "PUT → route",
            (|l: &Latencies| &l.add) as fn(&Latencies) -> &Vec<f64>,
            (|l: &Latencies| &l.put) as fn(&Latencies) -> &Vec<f64>,
        ),
        (
            "DELETE → route gone",
            |l: &Latencies| &l.delete,
            |l: &Latencies| &l.del,
        ),
    ] {
        writeln!(
            out,
            "| {name} | {n} | {events} | {} | {} | {} | {} |",
            stat(lat, 50.0),
            stat(lat, 99.0),
            stat(lat, 100.0),
            stat(rtt, 50.0)
        )?;
    }
    out.push('\n');
    eprintln!(
        "propagation add p99 {}, delete p99 {}",
        stat(|l| &l.add, 99.0),
        stat(|l| &l.delete, 99.0)
    );
    Ok(())
}

fn churn(lab: &mut Lab, opts: &Opts, out: &mut String) -> Result<()> {
    let n = 1000;
    let changes = opts.size(5000, 1000);
    writeln!(out, "### 3. Churn\n")?;
    writeln!(out, "host-gw agent with {n} peers; {changes} lease writes ({WRITE_DEPTH} in flight): every other one a new peer, the others move an existing peer to a new PublicIP. Time from the first write until the kernel holds exactly the final routes; agent CPU (user+system, children included) from the first write to 1 s after convergence. Median (min–max) of {} runs.\n", opts.runs)?;
    let (mut written, mut converged, mut cpu) = (vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        let (run, _) = lab.ready_agent(Kind::HostGw, n, &[])?;
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
        let took = lab.put_all(writes)?;
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

fn idle(lab: &mut Lab, opts: &Opts, out: &mut String) -> Result<()> {
    let n = 1000;
    let secs = opts.size(60, 15) as u64;
    let runs = opts.runs.min(3);
    writeln!(out, "### 4. Idle\n")?;
    writeln!(out, "host-gw agent with {n} peers and `--ip-masq` (default `--iptables-resync=5`), measured over {secs} s starting 5 s after ready. CPU per minute of the agent alone and including its children (iptables-save/-restore), RSS at the end, and etcd requests per minute (etcd's `grpc_server_msg_received_total`, every unary request and stream message; the agent is etcd's only client then). Median (min–max) of {runs} runs.\n")?;
    let (mut own, mut all, mut rss, mut reqs) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (run, _) = lab.ready_agent(Kind::HostGw, n, &["--ip-masq"])?;
        std::thread::sleep(Duration::from_secs(5));
        let pid = run.agent.pid();
        let (own0, all0) = cpu_seconds(pid)?;
        let req0 = lab.etcd_requests()?;
        std::thread::sleep(Duration::from_secs(secs));
        let (own1, all1) = cpu_seconds(pid)?;
        let req1 = lab.etcd_requests()?;
        let per_min = 60.0 / secs as f64;
        own.push((own1 - own0) * 1000.0 * per_min);
        all.push((all1 - all0) * 1000.0 * per_min);
        // The benchmark's own /metrics GET is plain HTTP, not gRPC: not counted.
        reqs.push((req1 - req0) * per_min);
        rss.push(vm_mib(pid, "VmRSS:")?);
        lab.finish(run)?;
    }
    writeln!(
        out,
        "| peers | agent CPU (ms/min) | incl. iptables (ms/min) | RSS (MiB) | etcd requests/min |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|")?;
    writeln!(
        out,
        "| {n} | {} | {} | {} | {} |\n",
        spread(&own, 1),
        spread(&all, 1),
        spread(&rss, 1),
        spread(&reqs, 1)
    )?;
    eprintln!("idle: cpu incl. children {} ms/min", spread(&all, 1));
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

fn main() -> Result<()> {
    let opts = Opts::parse()?;
    let bin = agent_binary()?;
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
        "- agent: {}\n- command: `{}`\n",
        bin.display(),
        std::env::args().collect::<Vec<_>>().join(" ")
    )?;
    // Each section is printed as soon as it is done.
    let mut printed = 0;
    let mut flush = |out: &str| {
        print!("{}", &out[printed..]);
        let _ = std::io::stdout().flush();
        printed = out.len();
    };
    flush(&out);
    let mut lab = Lab::start(bin, opts.logs.as_deref())?;
    if opts.wants("cold") {
        cold_start(&mut lab, &opts, &mut out)?;
        flush(&out);
    }
    if opts.wants("propagation") {
        propagation(&mut lab, &opts, &mut out)?;
        flush(&out);
    }
    if opts.wants("churn") {
        churn(&mut lab, &opts, &mut out)?;
        flush(&out);
    }
    if opts.wants("idle") {
        idle(&mut lab, &opts, &mut out)?;
        flush(&out);
    }
    if opts.wants("iperf") {
        data_plane(&opts, &mut out)?;
        flush(&out);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    writeln!(
        out,
        "Load average at the end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    flush(&out);
    if let Some(path) = &opts.out {
        std::fs::write(path, &out).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
