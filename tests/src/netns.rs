//! Network namespaces for tests: hosts, pods, switches and routers, each a named namespace that is
//! deleted (with every process still in it) when its guard drops, even if the test panics.
//!
//! Names are unique per test process and call ([`unique_id`]), so tests can run in parallel. Links
//! are created inside the namespaces, never in the root namespace, so nothing outside is touched.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short identifier unique to this process and call, usable in namespace, file and etcd names.
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("f{:x}x{n:x}", std::process::id())
}

/// Runs `program args...`, returning its output; panics with stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    check(program, args, out)
}

fn check(program: &str, args: &[&str], out: Output) -> String {
    if !out.status.success() {
        panic!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace owned by a test; deleted on drop after its processes are killed.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `<unique id>-<role>` with loopback up.
    pub fn new(role: &str) -> Netns {
        let name = format!("{}-{role}", unique_id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// The namespace name (as used by `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace and returns its raw output, success or not.
    pub fn try_exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"))
    }

    /// Runs a shell snippet inside the namespace; panics if it fails.
    pub fn sh(&self, script: &str) -> String {
        self.exec("sh", &["-ec", script])
    }

    /// A `Command` that runs `program` inside the namespace, for long-running processes.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a fresh thread that has entered this namespace (for netlink sockets, which
    /// belong to the namespace of the thread that opens them).
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        enter_named(&self.name, f)
    }

    /// Connects this namespace to `other` with a veth pair named `here`/`there`.
    pub fn link_to(&self, here: &str, other: &Netns, there: &str) {
        run(
            "ip",
            &[
                "-n",
                &self.name,
                "link",
                "add",
                here,
                "type",
                "veth",
                "peer",
                "name",
                there,
                "netns",
                &other.name,
            ],
        );
        self.sh(&format!("ip link set {here} up"));
        other.sh(&format!("ip link set {there} up"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) of a process that lives in our own test namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A layer-2 segment: a bridge inside its own namespace that hosts plug into.
pub struct Switch {
    ns: Netns,
    ports: AtomicU32,
}

impl Switch {
    /// Creates the switch namespace with bridge `br0` up.
    pub fn new(role: &str) -> Switch {
        let ns = Netns::new(role);
        ns.sh("ip link add br0 type bridge && ip link set br0 up");
        Switch {
            ns,
            ports: AtomicU32::new(0),
        }
    }

    /// Plugs `host` into the switch through a new interface called `ifname` in `host`, and gives
    /// it `cidr` (e.g. `192.168.50.11/24`).
    pub fn plug(&self, host: &Netns, ifname: &str, cidr: &str) {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        self.ns.link_to(&port, host, ifname);
        self.ns.sh(&format!("ip link set {port} master br0"));
        host.sh(&format!("ip addr add {cidr} dev {ifname}"));
    }
}

/// Runs `f` on a helper thread inside the named namespace (`/run/netns/<name>`); for code that
/// must open sockets there (e.g. an etcd client reaching a server inside a namespace).
pub fn enter_named<F, R>(name: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_unique_and_cleaned_up() {
        let name;
        {
            let a = Netns::new("a");
            let b = Netns::new("b");
            assert_ne!(a.name(), b.name());
            let sw = Switch::new("sw");
            sw.plug(&a, "eth0", "192.168.77.1/24");
            sw.plug(&b, "eth0", "192.168.77.2/24");
            let out = a.try_exec("ping", &["-c1", "-W2", "192.168.77.2"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            let inside = a.enter(|| std::fs::read_to_string("/proc/net/dev").unwrap());
            assert!(inside.contains("eth0"));
            name = a.name().to_string();
        }
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
    }
}
