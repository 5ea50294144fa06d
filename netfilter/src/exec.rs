//! Running one iptables command synchronously (the daemon calls us from `spawn_blocking`).
//! Child processes are forked from the calling thread and so inherit its network namespace.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::error::Error;

/// A finished command: its printable command line and output.
pub(crate) struct Finished {
    pub(crate) command: String,
    pub(crate) output: Output,
}

impl Finished {
    /// stdout, when the command succeeded; otherwise a [`Error::Failed`] with its stderr.
    pub(crate) fn stdout(self) -> Result<String, Error> {
        if self.output.status.success() {
            Ok(String::from_utf8_lossy(&self.output.stdout).into_owned())
        } else {
            Err(Error::Failed {
                stderr: self.stderr(),
                command: self.command,
                status: self.output.status,
            })
        }
    }

    /// stderr, trimmed.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr)
            .trim()
            .to_string()
    }
}

/// Runs `a` on a helper thread (which shares this thread's network namespace) while `b` runs
/// here, so that independent commands overlap.
pub(crate) fn concurrently<A: Send, B>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B,
) -> (A, B) {
    std::thread::scope(|s| {
        let helper = s.spawn(a);
        let rb = b();
        let ra = helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (ra, rb)
    })
}

/// Runs `program args...`, feeding `stdin` if given, and waits for it.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Finished, Error> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_error = |source| Error::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means the child exited early; its status and stderr tell why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    Ok(Finished { command, output })
}
