//! The daemon's side of the masquerade and forward rules: builds the rule set from the options
//! and the lease, runs `netfilter` on a blocking thread, and logs each foreign masquerading rule
//! once.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use netfilter::{
    BackendChoice, Config, EnsureOutcome, Iptables, Netfilter, NftChanges, Previous, RuleSet,
};

use crate::egress_watch::Rules as EgressRules;
use crate::metrics::Metrics;
use subnet::PreviousEnv;
use tokio::task::JoinHandle;

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct FirewallOptions {
    /// `--iptables-backend`: auto, legacy or nft.
    pub backend: BackendChoice,
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// `--ip-masq-fully-random-disable`.
    pub random_fully_disabled: bool,
    /// `--iptables-forward-rules`.
    pub forward_rules: bool,
    /// `--ip-masq-config`: the egress policy's rules at start-up (see [`crate::egress_watch`]).
    pub egress: EgressRules,
}

/// The iptables flavour detection, started before the lease is known (it needs none) and
/// finished by [`Firewall::new`]; `None` inside when no rule is asked for.
pub struct Detection(Option<JoinHandle<Result<(Iptables, String), netfilter::Error>>>);

impl Detection {
    /// Starts detecting the iptables flavour on a blocking thread, unless neither `--ip-masq`
    /// nor `--iptables-forward-rules` asks for any rule.
    pub fn start(options: &FirewallOptions) -> Detection {
        if !options.ip_masq && !options.forward_rules {
            return Detection(None);
        }
        let choice = options.backend;
        Detection(Some(tokio::task::spawn_blocking(move || {
            Iptables::detect(choice)
        })))
    }
}

/// A rule check running on a blocking thread ([`Firewall::start_ensure`]).
pub struct EnsureTask(JoinHandle<Result<EnsureOutcome, netfilter::Error>>);

/// Owns the agent's iptables rules.
pub struct Firewall {
    iptables: Arc<Iptables>,
    options: FirewallOptions,
    random_fully: bool,
    /// The cluster Network and our subnet the rules are for.
    target: (Ipv4Net, Ipv4Net),
    metrics: Arc<Metrics>,
    rules: RuleSet,
    reported: BTreeSet<String>,
    /// nf_tables change notifications (nft binaries only): while none arrives after a check
    /// that found the rules in place, the next check is skipped.
    changes: Option<NftChanges>,
    /// Whether the last check found or put the current rules in place.
    verified: bool,
}

impl Firewall {
    /// Takes the detected iptables flavour and builds the rules for `network`/`subnet`; `None`
    /// when neither `--ip-masq` nor `--iptables-forward-rules` asks for any rule. When
    /// subnet.env recorded another Network or subnet, the rules Go flanneld v0.11 left for those
    /// old values are retired by the first [`Firewall::ensure`].
    pub async fn new(
        options: FirewallOptions,
        detection: Detection,
        (network, subnet): (Ipv4Net, Ipv4Net),
        previous: PreviousEnv,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Firewall>> {
        let Detection(Some(detection)) = detection else {
            tracing::info!(
                "--ip-masq=false and --iptables-forward-rules=false: iptables is left alone"
            );
            return Ok(None);
        };
        let (iptables, reason) = detection
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
        let previous = to_retire(&previous, network, subnet);
        let rules = RuleSet::build(
            &rule_config(&options, random_fully, network, subnet),
            previous.as_ref(),
        );
        // Subscribed before the first check, so no change after it goes unnoticed.
        let changes = if iptables.uses_nf_tables() {
            NftChanges::subscribe()
                .inspect_err(|e| {
                    tracing::info!("no nf_tables change notifications ({e}): every --iptables-resync runs a full check")
                })
                .ok()
        } else {
            None
        };
        Ok(Some(Firewall {
            iptables: Arc::new(iptables),
            options,
            random_fully,
            target: (network, subnet),
            metrics: Arc::clone(metrics),
            rules,
            reported: BTreeSet::new(),
            changes,
            verified: false,
        }))
    }

    /// Re-targets the rules after the lease moved to another subnet; the old subnet's rules go
    /// with the next [`Firewall::ensure`] (the owned chains are replaced whole).
    pub fn retarget(&mut self, network: Ipv4Net, subnet: Ipv4Net) {
        self.target = (network, subnet);
        self.rebuild();
    }

    /// Replaces the egress policy's rules; the next [`Firewall::ensure`] applies them in the
    /// same transaction as the rest of the masquerade chain.
    pub fn set_egress(&mut self, egress: EgressRules) {
        self.options.egress = egress;
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let (network, subnet) = self.target;
        let config = rule_config(&self.options, self.random_fully, network, subnet);
        self.rules = RuleSet::build(&config, None);
        self.verified = false;
    }

    /// Makes the kernel hold the rules (idempotent; writes only on drift) and logs what was done
    /// and each new foreign masquerading rule. With nft binaries the check (an `iptables-save`)
    /// is skipped while the kernel reported no nf_tables change since the last good check.
    pub async fn ensure(&mut self) -> Result<()> {
        let unchanged = self.changes.as_mut().is_some_and(|c| !c.take());
        if self.verified && unchanged {
            return Ok(());
        }
        let task = self.start_ensure();
        self.finish_ensure(task).await
    }

    /// Starts [`Firewall::ensure`]'s check on a blocking thread, to overlap it with other
    /// start-up work; [`Firewall::finish_ensure`] waits for it and logs.
    pub fn start_ensure(&self) -> EnsureTask {
        let iptables = Arc::clone(&self.iptables);
        let rules = self.rules.clone();
        EnsureTask(tokio::task::spawn_blocking(move || iptables.ensure(&rules)))
    }

    /// Waits for a check started by [`Firewall::start_ensure`] and logs what it did.
    pub async fn finish_ensure(&mut self, task: EnsureTask) -> Result<()> {
        self.verified = false;
        let outcome = task
            .0
            .await
            .context("iptables task")?
            .context("applying iptables rules")?;
        self.verified = true;
        self.metrics
            .record_rule_check(outcome.applied, outcome.foreign.len());
        if outcome.applied {
            let reason = outcome.reason.as_deref().unwrap_or("initial install");
            tracing::info!(
                decision = "rules",
                reason,
                "iptables rules applied: {reason}"
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

/// The Network and subnet of the last run when they differ from now: Go flanneld v0.11's rules
/// for them are retired.
fn to_retire(previous: &PreviousEnv, network: Ipv4Net, subnet: Ipv4Net) -> Option<Previous> {
    match (previous.network, previous.subnet) {
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
    }
}

/// The rule-builder input for the options and the current Network/subnet.
pub(crate) fn rule_config(
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
        egress: options.egress.clone(),
    }
}
