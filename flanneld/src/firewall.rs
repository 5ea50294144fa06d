//! The daemon's side of the masquerade and forward rules: builds the rule set from the options
//! and the lease, runs `netfilter` on a blocking thread, and logs each foreign masquerading rule
//! once.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use netfilter::{BackendChoice, Config, Iptables, Netfilter, Previous, RuleSet};
use subnet::PreviousEnv;

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct FirewallOptions {
    /// `--iptables-backend`: auto, legacy or nft.
    pub backend: String,
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// `--ip-masq-fully-random-disable`.
    pub random_fully_disabled: bool,
    /// `--iptables-forward-rules`.
    pub forward_rules: bool,
}

/// Owns the agent's iptables rules.
pub struct Firewall {
    iptables: Arc<Iptables>,
    options: FirewallOptions,
    random_fully: bool,
    rules: RuleSet,
    reported: BTreeSet<String>,
}

impl Firewall {
    /// Detects the iptables flavour and builds the rules for `network`/`subnet`; `None` when
    /// neither `--ip-masq` nor `--iptables-forward-rules` asks for any rule. When subnet.env
    /// recorded another Network or subnet, the rules Go flanneld v0.11 left for those old values
    /// are retired by the first [`Firewall::ensure`].
    pub async fn new(
        options: FirewallOptions,
        network: Ipv4Net,
        subnet: Ipv4Net,
        previous: PreviousEnv,
    ) -> Result<Option<Firewall>> {
        if !options.ip_masq && !options.forward_rules {
            tracing::info!(
                "--ip-masq=false and --iptables-forward-rules=false: iptables is left alone"
            );
            return Ok(None);
        }
        let choice: BackendChoice = options.backend.parse().context("--iptables-backend")?;
        let (iptables, reason) = tokio::task::spawn_blocking(move || Iptables::detect(choice))
            .await
            .context("iptables detection task")?
            .context("cannot use iptables")?;
        tracing::info!("iptables: {reason}");
        if !options.ip_masq {
            tracing::info!(
                "--ip-masq=false: the nat table is left untouched and FLANNEL_IPMASQ=false"
            );
        }
        let random_fully = iptables.supports_random_fully() && !options.random_fully_disabled;
        let previous = match (previous.network, previous.subnet) {
            (Some(old_net), Some(old_sub)) if (old_net, old_sub) != (network, subnet) => {
                tracing::info!(
                    "Network/subnet changed since the last run ({old_net}, {old_sub} -> {network}, {subnet}): retiring rules for the old values"
                );
                Some(Previous {
                    network: old_net,
                    subnet: old_sub,
                })
            }
            _ => None,
        };
        let rules = RuleSet::build(
            &rule_config(&options, random_fully, network, subnet),
            previous.as_ref(),
        );
        Ok(Some(Firewall {
            iptables: Arc::new(iptables),
            options,
            random_fully,
            rules,
            reported: BTreeSet::new(),
        }))
    }

    /// Re-targets the rules after the lease moved to another subnet; the old subnet's rules go
    /// with the next [`Firewall::ensure`] (the owned chains are replaced whole).
    pub fn retarget(&mut self, network: Ipv4Net, subnet: Ipv4Net) {
        self.rules = RuleSet::build(
            &rule_config(&self.options, self.random_fully, network, subnet),
            None,
        );
    }

    /// Makes the kernel hold the rules (idempotent; writes only on drift) and logs what was done
    /// and each new foreign masquerading rule.
    pub async fn ensure(&mut self) -> Result<()> {
        let iptables = Arc::clone(&self.iptables);
        let rules = self.rules.clone();
        let outcome = tokio::task::spawn_blocking(move || iptables.ensure(&rules))
            .await
            .context("iptables task")?
            .context("applying iptables rules")?;
        if outcome.applied {
            tracing::info!(
                "iptables rules applied: {}",
                outcome.reason.as_deref().unwrap_or("initial install")
            );
        }
        for rule in outcome.foreign {
            if self.reported.insert(rule.clone()) {
                tracing::warn!(
                    "foreign rule `{rule}` masquerades traffic from the cluster Network; left in place (flanneld-rs exempts pod-to-pod traffic ahead of it). Run docker with --ip-masq=false (see `flanneld mk-docker-opts`) to remove it for good"
                );
            }
        }
        Ok(())
    }
}

/// The rule-builder input for the options and the current Network/subnet.
fn rule_config(
    options: &FirewallOptions,
    random_fully: bool,
    network: Ipv4Net,
    subnet: Ipv4Net,
) -> Config {
    Config {
        network,
        subnet,
        ip_masq: options.ip_masq,
        random_fully,
        forward_rules: options.forward_rules,
    }
}
