//! Errors of the iptables applier; each names the command and what it printed.

use std::io;
use std::process::ExitStatus;

use crate::save::ParseError;

/// Something went wrong talking to iptables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be started (not installed, not executable, ...).
    #[error(
        "cannot run `{command}`: {source}{}",
        missing_program_hint(command, source)
    )]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        #[source]
        source: io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `iptables-restore` rejected our payload.
    #[error("`{command}` failed ({status}): {stderr}\n--- payload ---\n{payload}")]
    Restore {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr (usually `Error occurred at line: N`).
        stderr: String,
        /// The payload it was given.
        payload: String,
    },
    /// `iptables-save` printed something we do not understand.
    #[error("cannot parse the output of `{command}`: {source}")]
    Parse {
        /// The command line.
        command: String,
        /// The offending line.
        #[source]
        source: ParseError,
    },
    /// The restore succeeded but reading the rules back shows they are still not in place
    /// (someone changed them at the same moment, or iptables prints them differently).
    #[error(
        "after `{command}` the rules are still not in place: {reasons}\n--- payload ---\n{payload}"
    )]
    Verify {
        /// The restore command line.
        command: String,
        /// What is still wrong.
        reasons: String,
        /// The payload that was applied.
        payload: String,
    },
}

/// For a program that is not installed, which package brings it.
fn missing_program_hint(command: &str, error: &io::Error) -> String {
    if error.kind() != io::ErrorKind::NotFound {
        return String::new();
    }
    let program = command.split_whitespace().next().unwrap_or_default();
    let package = if program.starts_with("nft") {
        "nftables"
    } else {
        "iptables"
    };
    format!(" ({program} is not installed: install the {package} package)")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn a_missing_program_names_the_package_that_brings_it() {
        let missing = |command: &str| Error::Spawn {
            command: command.into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(missing("ip6tables-restore --noflush")
            .to_string()
            .ends_with("(ip6tables-restore is not installed: install the iptables package)"));
        assert!(missing("nft -f -")
            .to_string()
            .ends_with("(nft is not installed: install the nftables package)"));
        let denied = Error::Spawn {
            command: "nft -f -".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(!denied.to_string().contains("install"), "{denied}");
    }

    #[test]
    fn restore_errors_show_command_stderr_and_payload() {
        let error = Error::Restore {
            command: "iptables-restore --noflush -w 5".into(),
            status: ExitStatus::from_raw(1 << 8),
            stderr: "iptables-restore: line 3 failed".into(),
            payload: "*nat\n:FLANNEL-POSTRTG - [0:0]\nCOMMIT\n".into(),
        };
        assert_eq!(
            error.to_string(),
            "`iptables-restore --noflush -w 5` failed (exit status: 1): iptables-restore: line 3 \
             failed\n--- payload ---\n*nat\n:FLANNEL-POSTRTG - [0:0]\nCOMMIT\n"
        );
    }
}
