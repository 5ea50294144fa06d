//! Choosing between iptables-legacy and iptables-nft: the one that holds the host's rules.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::exec;
use crate::iptables::{Flavour, IpFamily, Iptables};
use crate::save::Saved;

/// The operator's choice of iptables backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// Detect it: the backend holding the existing rules, else the system default.
    #[default]
    Auto,
    /// Always iptables-legacy.
    Legacy,
    /// Always iptables-nft.
    Nft,
    /// No iptables: the agent's own nftables tables, as with `EnableNFTables` in the network
    /// config (for hosts where the config cannot change).
    Nftables,
}

impl BackendChoice {
    /// Whether the choice is native nftables rather than an iptables flavour.
    pub fn is_nftables(self) -> bool {
        self == BackendChoice::Nftables
    }
}

/// A backend name that is not `auto`, `legacy`, `nft` or `nftables`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown iptables backend `{0}`: expected auto, legacy, nft (iptables-nft) or nftables (native tables, like EnableNFTables)")]
pub struct UnknownBackend(pub String);

impl FromStr for BackendChoice {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "legacy" => Ok(BackendChoice::Legacy),
            "nft" => Ok(BackendChoice::Nft),
            "nftables" | "nft-native" => Ok(BackendChoice::Nftables),
            _ => Err(UnknownBackend(s.to_string())),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Legacy => "legacy",
            BackendChoice::Nft => "nft",
            BackendChoice::Nftables => "nftables",
        })
    }
}

/// Chains that show which backend the host's other components use.
const HOST_CHAIN_PREFIXES: &[&str] = &["KUBE-", "DOCKER"];

/// What one backend's `iptables-save` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Census {
    rules: usize,
    host_chains: bool,
}

impl Census {
    fn take(flavour: Flavour) -> Result<Census, Error> {
        let finished = exec::run(&flavour.save_command(IpFamily::V4), &[], None)?;
        let command = finished.command.clone();
        let saved =
            Saved::parse(&finished.stdout()?).map_err(|source| Error::Parse { command, source })?;
        Ok(Census {
            rules: saved.rule_count(),
            host_chains: saved.has_chain_prefixed(HOST_CHAIN_PREFIXES),
        })
    }

    /// KUBE-/DOCKER chains weigh more than any number of rules.
    fn weight(self) -> (bool, usize) {
        (self.host_chains, self.rules)
    }
}

impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rules", self.rules)?;
        if self.host_chains {
            f.write_str(" with KUBE-/DOCKER chains")?;
        }
        Ok(())
    }
}

/// Picks a flavour from the two censuses and says why.
fn choose(legacy: Result<Census, Error>, nft: Result<Census, Error>) -> (Flavour, String) {
    match (legacy, nft) {
        (Ok(l), Ok(n)) if l.weight() > n.weight() => (
            Flavour::Legacy,
            format!("iptables-legacy holds {l}, iptables-nft {n}"),
        ),
        (Ok(l), Ok(n)) if n.weight() > l.weight() => (
            Flavour::Nft,
            format!("iptables-nft holds {n}, iptables-legacy {l}"),
        ),
        (Ok(l), Ok(n)) => (
            Flavour::System,
            format!("iptables-legacy and iptables-nft hold {l} and {n}, no preference"),
        ),
        (Ok(l), Err(e)) => (
            Flavour::Legacy,
            format!("iptables-legacy holds {l}, iptables-nft is unusable ({e})"),
        ),
        (Err(e), Ok(n)) => (
            Flavour::Nft,
            format!("iptables-nft holds {n}, iptables-legacy is unusable ({e})"),
        ),
        (Err(l), Err(n)) => (
            Flavour::System,
            format!("neither iptables-legacy ({l}) nor iptables-nft ({n}) is usable"),
        ),
    }
}

impl Iptables {
    /// Picks and probes the backend for `choice`. Returns it with a one-line reason for the
    /// log, e.g. `auto: iptables-nft holds 12 rules with KUBE-/DOCKER chains, iptables-legacy
    /// 0 rules; using iptables-nft (iptables-nft-restore v1.8.9 (nf_tables)), --random-fully
    /// supported`. Fails only when the chosen restore binary cannot be run.
    pub fn detect(choice: BackendChoice) -> Result<(Iptables, String), Error> {
        let (flavour, why) = match choice {
            BackendChoice::Legacy => (Flavour::Legacy, "requested".to_string()),
            BackendChoice::Nft => (Flavour::Nft, "requested".to_string()),
            // Native nftables needs no iptables; asked for its binaries anyway (plan, explain),
            // the system default is used.
            BackendChoice::Nftables => (Flavour::System, "native nftables requested".to_string()),
            BackendChoice::Auto => {
                let (legacy, nft) = exec::concurrently(
                    || Census::take(Flavour::Legacy),
                    || Census::take(Flavour::Nft),
                );
                choose(legacy, nft)
            }
        };
        let iptables = Iptables::probe(flavour, IpFamily::V4)?;
        let reason = format!(
            "{choice}: {why}; using {flavour} ({}), --random-fully {}",
            iptables.version(),
            if iptables.supports_random_fully() {
                "supported"
            } else {
                "not supported"
            }
        );
        Ok((iptables, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(rules: usize, host_chains: bool) -> Result<Census, Error> {
        Ok(Census { rules, host_chains })
    }

    fn missing() -> Result<Census, Error> {
        Err(Error::Spawn {
            command: "iptables-nft-save".into(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    #[test]
    fn parses_choices() {
        assert_eq!("Legacy".parse(), Ok(BackendChoice::Legacy));
        assert_eq!("nft".parse(), Ok(BackendChoice::Nft));
        assert_eq!("auto".parse(), Ok(BackendChoice::Auto));
        assert_eq!("nftables".parse(), Ok(BackendChoice::Nftables));
        assert_eq!("nft-native".parse(), Ok(BackendChoice::Nftables));
        let err = "xt".parse::<BackendChoice>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown iptables backend `xt`: expected auto, legacy, nft"),
            "{err}"
        );
    }

    #[test]
    fn prefers_the_backend_with_host_chains_then_more_rules() {
        assert_eq!(
            choose(census(3, true), census(40, false)).0,
            Flavour::Legacy
        );
        assert_eq!(choose(census(3, false), census(4, false)).0, Flavour::Nft);
        let (flavour, why) = choose(census(0, false), census(0, false));
        assert_eq!(flavour, Flavour::System);
        assert_eq!(
            why,
            "iptables-legacy and iptables-nft hold 0 rules and 0 rules, no preference"
        );
        let (flavour, why) = choose(census(2, false), missing());
        assert_eq!(flavour, Flavour::Legacy);
        assert!(why.contains("iptables-nft is unusable (cannot run `iptables-nft-save`"));
        assert_eq!(choose(missing(), missing()).0, Flavour::System);
    }
}
