//! The agent running on this host, found in `/proc`: its command line, its `FLANNELD_*`
//! variables and its working directory (`flanneld.sh` gives paths like `./certs/ca.pem`), so a
//! tool such as `flanneld doctor` checks the host with exactly the flags the agent runs with.
//!
//! "This host" is this network namespace: agents in other namespaces (other hosts of a test lab,
//! containers) are not it. Go flanneld's process counts too: its flags are the same.

use std::fs;
use std::path::{Path, PathBuf};

/// A running agent's process, as read from `/proc/<pid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunningAgent {
    pub(crate) pid: u32,
    /// Its command line, the program first.
    pub(crate) args: Vec<String>,
    /// Its `FLANNELD_*` environment variables.
    pub(crate) env: Vec<(String, String)>,
    /// Its working directory, against which relative paths in its flags are read.
    pub(crate) cwd: PathBuf,
}

impl RunningAgent {
    /// The command line as one line, for saying which process was read.
    pub(crate) fn command_line(&self) -> String {
        self.args.join(" ")
    }
}

/// Why no single agent could be picked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FindError {
    /// More than one agent runs in this network namespace.
    #[error("several flanneld agents run in this network namespace (pids {0:?}): give the flags of the one to check, or --no-agent")]
    Several(Vec<u32>),
}

/// The agent running in this network namespace, if there is one; `tools` are the first
/// arguments that make a `flanneld` command line a tool's rather than the agent's.
pub(crate) fn find(tools: &[String]) -> Result<Option<RunningAgent>, FindError> {
    find_in(Path::new("/proc"), std::process::id(), tools)
}

fn find_in(proc: &Path, own_pid: u32, tools: &[String]) -> Result<Option<RunningAgent>, FindError> {
    let own_netns = fs::read_link(proc.join("self/ns/net")).ok();
    let mut agents: Vec<RunningAgent> = pids(proc)
        .filter(|pid| *pid != own_pid)
        .filter(|pid| fs::read_link(proc.join(format!("{pid}/ns/net"))).ok() == own_netns)
        .filter_map(|pid| read_agent(proc, pid, tools))
        .collect();
    agents.sort_by_key(|agent| agent.pid);
    match agents.len() {
        0 => Ok(None),
        1 => Ok(agents.pop()),
        _ => Err(FindError::Several(agents.iter().map(|a| a.pid).collect())),
    }
}

/// Every process ID in `proc`.
fn pids(proc: &Path) -> impl Iterator<Item = u32> {
    fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// The process `pid` if it is a flanneld agent (not one of its tools).
fn read_agent(proc: &Path, pid: u32, tools: &[String]) -> Option<RunningAgent> {
    let dir = proc.join(pid.to_string());
    let comm = fs::read_to_string(dir.join("comm")).ok()?;
    if comm.trim() != "flanneld" {
        return None;
    }
    let args = nul_separated(&fs::read(dir.join("cmdline")).ok()?);
    if !is_agent_command_line(&args, tools) {
        return None;
    }
    let environ = fs::read(dir.join("environ")).unwrap_or_default();
    Some(RunningAgent {
        pid,
        env: flanneld_variables(&nul_separated(&environ)),
        cwd: fs::read_link(dir.join("cwd")).unwrap_or_else(|_| PathBuf::from("/")),
        args,
    })
}

/// Whether a `flanneld` command line runs the agent rather than a tool (`doctor`, `plan`, ...).
fn is_agent_command_line(args: &[String], tools: &[String]) -> bool {
    args.get(1)
        .is_none_or(|first| !tools.iter().any(|tool| tool == first))
}

/// The `FLANNELD_*` assignments among `NAME=value` entries.
fn flanneld_variables(environ: &[String]) -> Vec<(String, String)> {
    environ
        .iter()
        .filter_map(|entry| entry.split_once('='))
        .filter(|(name, _)| name.starts_with("FLANNELD_"))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// The NUL-terminated strings of a `/proc` file.
fn nul_separated(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_agent_is_told_from_its_tools_by_the_first_argument() {
        let tools = strings(&["doctor", "mk-docker-opts"]);
        let agent = |args: &[&str]| is_agent_command_line(&strings(args), &tools);
        assert!(agent(&["./flanneld"]));
        assert!(agent(&["/opt/flannel/flanneld", "--iface=eth0"]));
        assert!(!agent(&["flanneld", "doctor"]));
        assert!(!agent(&["flanneld", "mk-docker-opts", "-c"]));
    }

    #[test]
    fn proc_files_are_split_and_only_flanneld_variables_kept() {
        let environ = nul_separated(b"PATH=/bin\0FLANNELD_IFACE=eth0\0FLANNELD_IP_MASQ=true\0");
        assert_eq!(
            flanneld_variables(&environ),
            vec![
                ("FLANNELD_IFACE".to_string(), "eth0".to_string()),
                ("FLANNELD_IP_MASQ".to_string(), "true".to_string())
            ]
        );
        assert_eq!(
            nul_separated(b"./flanneld\0--iface=eth0\0"),
            strings(&["./flanneld", "--iface=eth0"])
        );
    }

    #[test]
    fn a_fake_proc_with_one_agent_one_tool_and_another_namespace() {
        let proc = tempfile::tempdir().unwrap();
        let root = proc.path();
        let netns = |target: &str| target.to_string();
        let add = |pid: u32, comm: &str, cmdline: &[u8], ns: &str| {
            let dir = root.join(pid.to_string());
            fs::create_dir_all(dir.join("ns")).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(dir.join("cmdline"), cmdline).unwrap();
            fs::write(dir.join("environ"), b"FLANNELD_IFACE=eth0\0").unwrap();
            std::os::unix::fs::symlink(netns(ns), dir.join("ns/net")).unwrap();
            std::os::unix::fs::symlink("/opt/flannel", dir.join("cwd")).unwrap();
        };
        fs::create_dir_all(root.join("self/ns")).unwrap();
        std::os::unix::fs::symlink("net:[1]", root.join("self/ns/net")).unwrap();
        add(10, "flanneld", b"./flanneld\0--ip-masq\0", "net:[1]");
        add(11, "flanneld", b"flanneld\0doctor\0", "net:[1]");
        add(12, "flanneld", b"./flanneld\0", "net:[2]");
        add(13, "bash", b"bash\0", "net:[1]");
        let tools = strings(&["doctor"]);
        let found = find_in(root, 99, &tools).unwrap().expect("the agent");
        assert_eq!(found.pid, 10);
        assert_eq!(found.args, strings(&["./flanneld", "--ip-masq"]));
        assert_eq!(found.cwd, PathBuf::from("/opt/flannel"));
        assert_eq!(found.env.len(), 1);
        add(14, "flanneld", b"/usr/bin/flanneld\0", "net:[1]");
        assert_eq!(
            find_in(root, 99, &tools),
            Err(FindError::Several(vec![10, 14]))
        );
    }
}
