//! Another distribution's root directory (a Debian 11 root made by `contrib/release-check.sh`)
//! in which a host's agent runs with that root's own `iptables-restore` and `iptables-save`.
//!
//! The agent is started as `chroot <root> <binary>` inside the host's namespace; the root gets
//! `/proc`, `/sys`, `/dev` and a `/run` of its own, and the test's files (etcd certificates, the
//! cluster's directory) are bind-mounted at the same paths, so the agent's flags stay the ones
//! every other host runs with. Everything is unmounted on drop, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netns::Netns;

/// A root directory prepared for running programs in it; unmounts what it mounted on drop.
pub struct ForeignRoot {
    dir: PathBuf,
    /// Mount points inside the root, in mount order.
    mounts: Vec<PathBuf>,
}

impl ForeignRoot {
    /// Prepares the root at `dir`: `/proc`, `/sys` and `/dev` of this machine, an empty `/run`.
    pub fn open(dir: &Path) -> ForeignRoot {
        assert!(
            dir.join("usr/bin").is_dir(),
            "{} is not a root directory (contrib/release-check.sh makes one)",
            dir.display()
        );
        let mut root = ForeignRoot {
            dir: dir.to_path_buf(),
            mounts: Vec::new(),
        };
        root.mount(&["-t", "proc", "proc"], Path::new("/proc"));
        root.mount(&["--rbind", "/sys"], Path::new("/sys"));
        root.mount(&["--rbind", "/dev"], Path::new("/dev"));
        root.mount(&["-t", "tmpfs", "tmpfs"], Path::new("/run"));
        root
    }

    /// Makes this machine's `path` (a directory) visible at the same path inside the root.
    pub fn share(&mut self, path: &Path) {
        let source = path.to_str().expect("utf-8 path").to_string();
        self.mount(&["--bind", &source], path);
    }

    /// The command line that runs `program` (a path inside the root) in the root.
    pub fn launcher(&self, program: &str) -> Vec<String> {
        vec![
            "chroot".to_string(),
            self.dir.to_str().expect("utf-8 path").to_string(),
            program.to_string(),
        ]
    }

    /// Runs `program args...` of the root inside `host`'s namespace; returns its stdout.
    pub fn exec(&self, host: &Netns, program: &str, args: &[&str]) -> String {
        let mut all = vec![self.dir.to_str().expect("utf-8 path"), program];
        all.extend_from_slice(args);
        host.exec("chroot", &all)
    }

    /// Runs `program args...` of the root in this machine's namespace; returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("chroot")
            .arg(&self.dir)
            .arg(program)
            .args(args)
            .output()
            .expect("run chroot");
        assert!(
            out.status.success(),
            "chroot {} {program} {args:?}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn mount(&mut self, how: &[&str], at: &Path) {
        let target = self.dir.join(at.strip_prefix("/").expect("absolute path"));
        std::fs::create_dir_all(&target).expect("mount point");
        let target_str = target.to_str().expect("utf-8 path");
        let mut args = how.to_vec();
        args.push(target_str);
        crate::netns::run("mount", &args);
        self.mounts.push(target);
    }
}

impl Drop for ForeignRoot {
    fn drop(&mut self) {
        for target in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
}
