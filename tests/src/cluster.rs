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

/// A running agent process inside a host namespace; killed on drop.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// Starts `flanneld args...` inside `host`, logging to `log`.
    pub fn start(host: &Netns, args: &[String], log: &Path) -> Agent {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        let err = out.try_clone().expect("agent log");
        let child = host
            .command(flanneld_bin().to_str().expect("utf-8 path"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn flanneld");
        Agent {
            child: Some(child),
            log: log.to_path_buf(),
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

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
        let ns = Netns::new("pod");
        host.sh(&format!(
            "ip link show cni0 >/dev/null 2>&1 || {{ ip link add cni0 type bridge && ip addr add {flannel_subnet} dev cni0 && ip link set cni0 up; }}"
        ));
        let hostside = format!("vp{n}");
        host.link_to(&hostside, &ns, "eth0");
        host.sh(&format!("ip link set {hostside} master cni0"));
        ns.sh(&format!(
            "ip addr add {ip}/{len} dev eth0 && ip route add default via {gw}"
        ));
        Pod { ns, ip }
    }

    /// Pings `dst` from the pod; true if a reply came back.
    pub fn ping(&self, dst: &str) -> bool {
        self.ns
            .try_exec("ping", &["-c1", "-W1", dst])
            .status
            .success()
    }
}
