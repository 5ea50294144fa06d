//! The iptables applier: one `iptables-save` per check, one `iptables-restore --noflush` per
//! repair, then one more `iptables-save` to verify.

use std::fmt;

use crate::error::Error;
use crate::exec;
use crate::plan::plan;
use crate::ruleset::RuleSet;
use crate::save::Saved;
use crate::{EnsureOutcome, Netfilter};

/// How long `iptables-restore` waits for the xtables lock (legacy backend), in seconds.
const LOCK_WAIT_SECONDS: &str = "5";

/// The address family a set of iptables binaries programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// `iptables*`.
    V4,
    /// `ip6tables*`.
    V6,
}

impl IpFamily {
    /// The family of a network.
    pub fn of(network: &ipnet::IpNet) -> IpFamily {
        match network {
            ipnet::IpNet::V4(_) => IpFamily::V4,
            ipnet::IpNet::V6(_) => IpFamily::V6,
        }
    }

    /// The binaries' name stem: `iptables` or `ip6tables`.
    fn stem(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        }
    }
}

/// Which iptables binaries to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `iptables-legacy-save` / `iptables-legacy-restore` (x_tables).
    Legacy,
    /// `iptables-nft-save` / `iptables-nft-restore` (nf_tables).
    Nft,
    /// `iptables-save` / `iptables-restore`, whatever the host's default is.
    System,
}

impl Flavour {
    /// The `-legacy` or `-nft` part of the binaries' names.
    fn infix(self) -> &'static str {
        match self {
            Flavour::Legacy => "-legacy",
            Flavour::Nft => "-nft",
            Flavour::System => "",
        }
    }

    /// The save binary for `family`, e.g. `ip6tables-nft-save`.
    pub fn save_command(self, family: IpFamily) -> String {
        format!("{}{}-save", family.stem(), self.infix())
    }

    /// The restore binary for `family`.
    pub fn restore_command(self, family: IpFamily) -> String {
        format!("{}{}-restore", family.stem(), self.infix())
    }

    /// The iptables binary itself for `family`.
    pub fn iptables_command(self, family: IpFamily) -> String {
        format!("{}{}", family.stem(), self.infix())
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Legacy => "iptables-legacy",
            Flavour::Nft => "iptables-nft",
            Flavour::System => "iptables (system default)",
        })
    }
}

/// An iptables backend with its probed capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iptables {
    flavour: Flavour,
    family: IpFamily,
    version: String,
    wait: bool,
    random_fully: bool,
}

impl Iptables {
    /// Probes the binaries of `flavour`: their version, whether `iptables-restore` takes `-w`
    /// (run with empty input, which touches no table) and whether the MASQUERADE extension
    /// knows `--random-fully` (from `iptables -j MASQUERADE --help`). Fails only if the restore
    /// binary cannot be run.
    pub fn probe(flavour: Flavour, family: IpFamily) -> Result<Iptables, Error> {
        let restore = &flavour.restore_command(family);
        let iptables = &flavour.iptables_command(family);
        // Three independent commands, run at the same time.
        let (version, (wait, random_fully)) = exec::concurrently(
            || exec::run(restore, &["--version"], None),
            || {
                exec::concurrently(
                    || {
                        exec::run(
                            restore,
                            &["--test", "--noflush", "-w", LOCK_WAIT_SECONDS],
                            Some(""),
                        )
                    },
                    || exec::run(iptables, &["-j", "MASQUERADE", "--help"], None),
                )
            },
        );
        let version = version?
            .stdout()
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| format!("{restore} (version unknown)"));
        let wait = wait?.output.status.success();
        let random_fully = random_fully
            .and_then(exec::Finished::stdout)
            .is_ok_and(|help| help.contains("--random-fully"));
        Ok(Iptables {
            flavour,
            family,
            version,
            wait,
            random_fully,
        })
    }

    /// The binaries in use.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The address family they program.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// The same flavour's binaries for another family (`ip6tables-nft` beside `iptables-nft`),
    /// probed.
    pub fn for_family(&self, family: IpFamily) -> Result<Iptables, Error> {
        Iptables::probe(self.flavour, family)
    }

    /// What `iptables-restore --version` printed.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the binaries program nf_tables (iptables-nft, or a system default whose version
    /// says `nf_tables`), whose changes [`crate::NftChanges`] can see.
    pub fn uses_nf_tables(&self) -> bool {
        match self.flavour {
            Flavour::Nft => true,
            Flavour::Legacy => false,
            Flavour::System => self.version.contains("nf_tables"),
        }
    }

    /// Whether MASQUERADE accepts `--random-fully`.
    pub fn supports_random_fully(&self) -> bool {
        self.random_fully
    }

    /// Reads all tables with one `iptables-save`.
    pub fn save(&self) -> Result<Saved, Error> {
        let finished = exec::run(&self.flavour.save_command(self.family), &[], None)?;
        let command = finished.command.clone();
        Saved::parse(&finished.stdout()?).map_err(|source| Error::Parse { command, source })
    }

    /// Removes the agent's chains and every jump into them, in one transaction; returns what
    /// was removed (nothing when none of ours is there).
    pub fn remove_ours(&self) -> Result<Vec<String>, Error> {
        let Some(removal) = crate::removal::removal(&self.save()?) else {
            return Ok(Vec::new());
        };
        self.restore(&removal.payload)?;
        Ok(removal.removed)
    }

    /// Removes Go flanneld's rules for `network` and `subnet` from the built-in chains
    /// ([`crate::go_leftovers`]), in one transaction; returns the `-D` lines applied.
    pub fn remove_go_leftovers(
        &self,
        network: ipnet::IpNet,
        subnet: ipnet::IpNet,
    ) -> Result<Vec<String>, Error> {
        let Some(removal) = crate::go_leftover_removal(&self.save()?, network, subnet) else {
            return Ok(Vec::new());
        };
        self.restore(&removal.payload)?;
        Ok(removal.removed)
    }

    /// Applies `payload` with one `iptables-restore --noflush [-w 5]`; returns the command line.
    fn restore(&self, payload: &str) -> Result<String, Error> {
        let mut args = vec!["--noflush"];
        if self.wait {
            args.extend(["-w", LOCK_WAIT_SECONDS]);
        }
        tracing::debug!(%payload, "iptables-restore");
        let restore = self.flavour.restore_command(self.family);
        let finished = exec::run(&restore, &args, Some(payload))?;
        if finished.output.status.success() {
            return Ok(finished.command);
        }
        Err(Error::Restore {
            stderr: finished.stderr(),
            command: finished.command,
            status: finished.output.status,
            payload: payload.to_string(),
        })
    }
}

impl Netfilter for Iptables {
    fn ensure(&self, rules: &RuleSet) -> Result<EnsureOutcome, Error> {
        if rules.chains().is_empty() {
            return Ok(EnsureOutcome::default());
        }
        let before = plan(rules, &self.save()?);
        let Some(payload) = before.payload else {
            return Ok(EnsureOutcome {
                foreign: before.foreign,
                ..EnsureOutcome::default()
            });
        };
        let command = self.restore(&payload)?;
        let after = plan(rules, &self.save()?);
        if !after.reasons.is_empty() {
            return Err(Error::Verify {
                command,
                reasons: after.reasons.join("; "),
                payload,
            });
        }
        Ok(EnsureOutcome {
            applied: true,
            reason: Some(before.reasons.join("; ")),
            foreign: before.foreign,
        })
    }
}
