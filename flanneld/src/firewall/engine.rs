//! How one family's rules reach the kernel: iptables chains (`iptables-restore`) or the agent's
//! own nftables table (`nft -f`), and the switch between the two, which removes the other
//! engine's rules of ours and nothing else.

use std::sync::Arc;

use netfilter::{
    Config, EnsureOutcome, Flavour, IpFamily, Iptables, Netfilter, NftTable, Nftables, Previous,
    RuleSet,
};

/// The binaries that apply one family's rules.
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    /// iptables or ip6tables of the detected flavour.
    Iptables(Arc<Iptables>),
    /// `nft`, with the table of one family.
    Nftables(IpFamily, Arc<Nftables>),
}

impl Engine {
    /// The family the engine programs.
    pub(crate) fn family(&self) -> IpFamily {
        match self {
            Engine::Iptables(iptables) => iptables.family(),
            Engine::Nftables(family, _) => *family,
        }
    }

    /// Whether MASQUERADE may use `--random-fully` / `fully-random`.
    pub(crate) fn supports_random_fully(&self) -> bool {
        match self {
            Engine::Iptables(iptables) => iptables.supports_random_fully(),
            Engine::Nftables(..) => true,
        }
    }

    /// The rules of `config` for this engine; `previous` (IPv4 only) adds Go flanneld v0.11's
    /// rules to retire (iptables only: v0.11 had no nftables).
    pub(crate) fn rules(&self, config: &Config, previous: Option<&Previous>) -> FamilyRules {
        match self {
            Engine::Iptables(iptables) => FamilyRules::Iptables {
                iptables: Arc::clone(iptables),
                rules: RuleSet::build(config, previous),
            },
            Engine::Nftables(_, nft) => FamilyRules::Nftables {
                nft: Arc::clone(nft),
                table: NftTable::build(config),
            },
        }
    }
}

/// One family's rules with the engine that applies them.
#[derive(Clone, Debug)]
pub(crate) enum FamilyRules {
    /// Our chains, for iptables or ip6tables.
    Iptables {
        iptables: Arc<Iptables>,
        rules: RuleSet,
    },
    /// Our table, for nft.
    Nftables { nft: Arc<Nftables>, table: NftTable },
}

impl FamilyRules {
    /// Checks and, on drift, repairs the rules (idempotent).
    pub(crate) fn ensure(&self) -> Result<EnsureOutcome, netfilter::Error> {
        match self {
            FamilyRules::Iptables { iptables, rules } => iptables.ensure(rules),
            FamilyRules::Nftables { nft, table } => nft.ensure(table),
        }
    }

    /// Whether `other` holds the same rules for the same engine.
    pub(crate) fn same_rules(&self, other: &FamilyRules) -> bool {
        match (self, other) {
            (
                FamilyRules::Iptables { iptables, rules },
                FamilyRules::Iptables {
                    iptables: other_iptables,
                    rules: other_rules,
                },
            ) => Arc::ptr_eq(iptables, other_iptables) && rules == other_rules,
            (
                FamilyRules::Nftables { nft, table },
                FamilyRules::Nftables {
                    nft: other_nft,
                    table: other_table,
                },
            ) => Arc::ptr_eq(nft, other_nft) && table == other_table,
            _ => false,
        }
    }

    /// What applies them, for the log: `iptables`, `ip6tables-nft`, `nft table ip flannel-ipv4`.
    pub(crate) fn label(&self) -> String {
        match self {
            FamilyRules::Iptables { iptables, .. } => {
                iptables.flavour().iptables_command(iptables.family())
            }
            FamilyRules::Nftables { table, .. } => format!("nft table {}", table.name()),
        }
    }
}

/// Removes the agent's chains and jumps from every iptables and ip6tables flavour that works
/// here (leaving nftables mode's other engine behind, or `flanneld cleanup`); returns what was
/// removed.
pub(crate) fn remove_iptables_rules() -> Result<Vec<String>, netfilter::Error> {
    let mut removed = Vec::new();
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        for family in [IpFamily::V4, IpFamily::V6] {
            let Ok(iptables) = Iptables::probe(flavour, family) else {
                continue;
            };
            let command = flavour.iptables_command(family);
            let gone = iptables.remove_ours()?;
            removed.extend(gone.into_iter().map(|r| format!("{command}: {r}")));
        }
    }
    Ok(removed)
}

/// Removes the other engine's rules of ours: in nftables mode our iptables chains, in iptables
/// mode our nftables tables (a host without `nft` has none). Logs what went.
pub(crate) fn remove_other_engine(nftables: bool) {
    let removed = if nftables {
        remove_iptables_rules()
    } else if Nftables::probe().is_ok() {
        netfilter::remove_tables()
    } else {
        Ok(Vec::new())
    };
    let mode = if nftables { "nftables" } else { "iptables" };
    match removed {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => tracing::info!(
            "{mode} mode: removed the other engine's rules of ours: {}",
            removed.join("; ")
        ),
        Err(e) => {
            tracing::warn!("{mode} mode: cannot remove the other engine's rules of ours: {e}")
        }
    }
}
