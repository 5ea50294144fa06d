//! The daemon's side of the masquerade and forward rules: builds the rule set from the options
//! and the lease for each family, applies it with iptables or native nftables ([`engine`]) on a
//! blocking thread, and logs each foreign masquerading rule once.

mod engine;
pub(crate) mod first;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, Result};
use backends::ClusterNetworks;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netfilter::{
    BackendChoice, Config, EnsureOutcome, IpFamily, Iptables, NftChanges, Nftables, Previous,
};

pub(crate) use engine::remove_iptables_rules;
use engine::{Engine, FamilyRules};

use crate::egress_watch::Rules as EgressRules;
use crate::metrics::Metrics;
use subnet::{PreviousEnv, Subnet, SubnetKey};
use tokio::task::JoinHandle;

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct FirewallOptions {
    /// `--iptables-backend`: auto, legacy, nft or nftables.
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
/// finished by [`Firewall::new`]. Nothing is detected when no rule is asked for, or when
/// `--iptables-backend=nftables` asks for native nftables.
pub struct Detection {
    /// Whether `--ip-masq` or `--iptables-forward-rules` asks for any rule.
    wanted: bool,
    iptables: Option<JoinHandle<Result<(Iptables, String), netfilter::Error>>>,
}

impl Detection {
    /// Starts detecting the iptables flavour on a blocking thread, unless no rule is asked for
    /// or native nftables is.
    pub fn start(options: &FirewallOptions) -> Detection {
        let wanted = options.ip_masq || options.forward_rules;
        let choice = options.backend;
        let iptables = (wanted && !choice.is_nftables())
            .then(|| tokio::task::spawn_blocking(move || Iptables::detect(choice)));
        Detection { wanted, iptables }
    }
}

/// A rule check running on a blocking thread ([`Firewall::start_ensure`]).
pub struct EnsureTask(JoinHandle<Result<EnsureOutcome, netfilter::Error>>);

/// The cluster networks and our subnets the rules are for: IPv4, and IPv6 on a dual-stack
/// network (ip6tables gets the same chains for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    /// `Network` and our IPv4 subnet; `None` on an IPv6-only network.
    pub v4: Option<(Ipv4Net, Ipv4Net)>,
    /// `IPv6Network` and our IPv6 subnet.
    pub v6: Option<(Ipv6Net, Ipv6Net)>,
}

impl Targets {
    /// The targets of a lease of `key` on `networks`.
    pub fn of(networks: ClusterNetworks, key: SubnetKey) -> Targets {
        Targets {
            v4: networks.v4.map(|n| (n, key.ipv4)),
            v6: networks.v6.zip(key.ipv6),
        }
    }

    /// The targets expected before the lease is known, from the network config and subnet.env:
    /// the subnets subnet.env recorded (a host renews the lease it still holds), or, where no
    /// rule names the subnet (`--ip-masq` off), the Network itself as a stand-in. `None` when a
    /// rule needs a subnet and subnet.env records none within the Network.
    pub fn expected(
        networks: ClusterNetworks,
        previous: &PreviousEnv,
        ip_masq: bool,
    ) -> Option<Targets> {
        let v4 = (networks.v4).map(|n| expected_pair(n, previous.subnet, ip_masq));
        let v6 = (networks.v6).map(|n| expected_pair(n, previous.ipv6_subnet, ip_masq));
        match (v4, v6) {
            (Some(None), _) | (_, Some(None)) => None,
            (v4, v6) => Some(Targets {
                v4: v4.flatten(),
                v6: v6.flatten(),
            }),
        }
    }

    /// Each family's (network, subnet).
    fn each(&self) -> impl Iterator<Item = (IpNet, IpNet)> {
        let v4 = self.v4.map(|(n, s)| (n.into(), s.into()));
        let v6 = self.v6.map(|(n, s)| (n.into(), s.into()));
        v4.into_iter().chain(v6)
    }
}

/// Owns the agent's iptables (and, on a dual-stack network, ip6tables) rules, or its native
/// nftables tables.
pub struct Firewall {
    engines: Vec<Engine>,
    families: Vec<FamilyRules>,
    options: FirewallOptions,
    targets: Targets,
    /// The previous run's values whose Go flanneld v0.11 rules are retired (IPv4 only).
    previous: Option<Previous>,
    metrics: Arc<Metrics>,
    reported: BTreeSet<String>,
    /// nf_tables change notifications (nft binaries only): while none arrives after a check
    /// that found the rules in place, the next check is skipped.
    changes: Option<NftChanges>,
    /// Whether the last check found or put the current rules in place.
    verified: bool,
    /// The engine mode whose other engine's rules of ours are still to be removed (done by the
    /// first periodic check, off the start-up path: see [`engine::remove_other_engine`]).
    switch_pending: Option<bool>,
}

impl Firewall {
    /// Takes the detected iptables flavour (and probes the same flavour's ip6tables on a
    /// dual-stack network), or with `nftables` (the config's `EnableNFTables`, or
    /// `--iptables-backend=nftables`) native nftables, and builds the rules for `targets`;
    /// `None` when neither `--ip-masq` nor `--iptables-forward-rules` asks for any rule. The
    /// first periodic [`Firewall::ensure`] removes the other engine's rules of ours, off the
    /// start-up path. When subnet.env recorded another Network or
    /// subnet, the rules Go flanneld v0.11 left for those old values are retired by the first
    /// [`Firewall::ensure`].
    pub async fn new(
        options: FirewallOptions,
        detection: Detection,
        (targets, nftables): (Targets, bool),
        previous: PreviousEnv,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Firewall>> {
        if !detection.wanted {
            tracing::info!(
                "--ip-masq=false and --iptables-forward-rules=false: iptables is left alone"
            );
            return Ok(None);
        }
        let nftables = nftables || options.backend.is_nftables();
        let engines = if nftables {
            nftables_engines(targets).await?
        } else {
            iptables_engines(detection, targets).await?
        };
        if !options.ip_masq {
            tracing::info!(
                "--ip-masq=false: the nat table is left untouched and FLANNEL_IPMASQ=false"
            );
        }
        let uses_nf_tables = engines.iter().any(|e| match e {
            Engine::Iptables(iptables) => iptables.uses_nf_tables(),
            Engine::Nftables(..) => true,
        });
        let mut firewall = Firewall {
            engines,
            families: Vec::new(),
            options,
            targets,
            previous: None,
            metrics: Arc::clone(metrics),
            reported: BTreeSet::new(),
            changes: uses_nf_tables.then(subscribe_changes).flatten(),
            verified: false,
            switch_pending: Some(nftables),
        };
        firewall.retire_from(&previous);
        firewall.rebuild();
        Ok(Some(firewall))
    }

    /// Re-targets rules built for [`Targets::expected`] at the lease's subnets; returns whether
    /// that changed the rules (a check started for the expected ones then checked the wrong
    /// rules).
    pub fn settle(&mut self, targets: Targets, previous: &PreviousEnv) -> bool {
        let checked = std::mem::take(&mut self.families);
        self.targets = targets;
        self.retire_from(previous);
        self.rebuild();
        let same = |(a, b): (&FamilyRules, &FamilyRules)| a.same_rules(b);
        checked.len() != self.families.len() || !checked.iter().zip(&self.families).all(same)
    }

    /// Sets the values whose Go flanneld v0.11 rules are retired: the previous run's, when they
    /// differ from the targets'.
    fn retire_from(&mut self, previous: &PreviousEnv) {
        let retired = self.targets.v4.and_then(|v4| to_retire(previous, v4));
        if let Some(old) = retired.filter(|_| retired != self.previous) {
            tracing::info!(
                "Network/subnet changed since the last run (it had {}, {}): retiring Go flanneld v0.11's rules for the old values",
                old.network,
                old.subnet
            );
        }
        self.previous = retired;
    }

    /// Re-targets the rules after the lease moved to another subnet; the old subnet's rules go
    /// with the next [`Firewall::ensure`] (the owned chains are replaced whole).
    pub fn retarget(&mut self, targets: Targets) {
        self.targets = targets;
        self.previous = None;
        self.rebuild();
    }

    /// Replaces the egress policy's rules; the next [`Firewall::ensure`] applies them in the
    /// same transaction as the rest of the masquerade chain.
    pub fn set_egress(&mut self, egress: EgressRules) {
        self.options.egress = egress;
        self.rebuild();
    }

    fn rebuild(&mut self) {
        self.families = (self.engines.iter())
            .filter_map(|e| self.family_rules(e))
            .collect();
        self.verified = false;
    }

    /// The rules `engine` (of one family) must hold for the current targets and options.
    fn family_rules(&self, engine: &Engine) -> Option<FamilyRules> {
        let family = engine.family();
        let (network, subnet) = (self.targets.each()).find(|(n, _)| IpFamily::of(n) == family)?;
        let random_fully = engine.supports_random_fully() && !self.options.random_fully_disabled;
        let config = rule_config(&self.options, random_fully, network, subnet);
        Some(engine.rules(&config, self.previous.as_ref()))
    }

    /// Makes the kernel hold the rules (idempotent; writes only on drift) and logs what was done
    /// and each new foreign masquerading rule. With nft binaries the check (an `iptables-save`)
    /// is skipped while the kernel reported no nf_tables change since the last good check.
    pub async fn ensure(&mut self) -> Result<()> {
        if let Some(nftables) = self.switch_pending.take() {
            // It touches only the other engine's rules of ours, never the ones applied here.
            tokio::task::spawn_blocking(move || engine::remove_other_engine(nftables));
        }
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
        let families = self.families.clone();
        EnsureTask(tokio::task::spawn_blocking(move || ensure_all(&families)))
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

/// Checks (and repairs) each family's rules in turn; one outcome for all.
fn ensure_all(families: &[FamilyRules]) -> Result<EnsureOutcome, netfilter::Error> {
    let mut all = EnsureOutcome::default();
    let mut reasons = Vec::new();
    for family in families {
        let outcome = family.ensure()?;
        all.applied |= outcome.applied;
        if outcome.applied {
            let reason = outcome.reason.unwrap_or_default();
            reasons.push(format!("{}: {reason}", family.label()));
        }
        all.foreign.extend(outcome.foreign);
    }
    all.reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    Ok(all)
}

/// The detected iptables for an IPv4 target and the same flavour's ip6tables for an IPv6 one.
async fn iptables_engines(detection: Detection, targets: Targets) -> Result<Vec<Engine>> {
    let task = detection
        .iptables
        .context("iptables detection was not started")?;
    let (iptables, reason) = task
        .await
        .context("iptables detection task")?
        .context("cannot use iptables")?;
    tracing::info!("iptables: {reason}");
    let mut engines = Vec::new();
    if targets.v6.is_some() {
        engines.push(Engine::Iptables(Arc::new(
            probe_ip6tables(&iptables).await?,
        )));
    }
    if targets.v4.is_some() {
        engines.insert(0, Engine::Iptables(Arc::new(iptables)));
    }
    Ok(engines)
}

/// The ip6tables of the flavour chosen for iptables, probed on a blocking thread.
async fn probe_ip6tables(iptables: &Iptables) -> Result<Iptables> {
    let v4 = iptables.clone();
    tokio::task::spawn_blocking(move || v4.for_family(IpFamily::V6))
        .await
        .context("ip6tables probe task")?
        .context("the network config enables IPv6 but ip6tables cannot be used")
}

/// Native nftables: one table per family of `targets`, applied with `nft`.
async fn nftables_engines(targets: Targets) -> Result<Vec<Engine>> {
    let version = tokio::task::spawn_blocking(Nftables::probe)
        .await
        .context("nft probe task")?
        .context("nftables mode needs the nft binary (Debian: apt-get install nftables)")?;
    let families = targets.each().map(|(n, _)| IpFamily::of(&n));
    let engines: Vec<Engine> = families
        .map(|family| Engine::Nftables(family, Arc::new(Nftables::new())))
        .collect();
    let tables: Vec<String> = engines
        .iter()
        .map(|e| netfilter::table_name(e.family()).to_string())
        .collect();
    tracing::info!(
        "nftables: {version}; the rules go in our own tables {} (no iptables)",
        tables.join(" and ")
    );
    Ok(engines)
}

/// nf_tables change notifications, or `None` (logged) when the subscription fails.
fn subscribe_changes() -> Option<NftChanges> {
    NftChanges::subscribe()
        .inspect_err(|e| {
            tracing::info!("no nf_tables change notifications ({e}): every --iptables-resync runs a full check")
        })
        .ok()
}

/// One family's expected (network, subnet): the recorded subnet when inside the network, or
/// with `--ip-masq` off the network itself; `None` when neither applies.
fn expected_pair<N: Subnet>(network: N, recorded: Option<N>, ip_masq: bool) -> Option<(N, N)> {
    recorded
        .filter(|subnet| network.covers(subnet))
        .or((!ip_masq).then_some(network))
        .map(|subnet| (network, subnet))
}

/// The Network and subnet of the last run when they differ from now: Go flanneld v0.11's rules
/// for them are retired.
fn to_retire(previous: &PreviousEnv, (network, subnet): (Ipv4Net, Ipv4Net)) -> Option<Previous> {
    match (previous.network, previous.subnet) {
        (Some(old_net), Some(old_sub)) if (old_net, old_sub) != (network, subnet) => {
            Some(Previous {
                network: old_net,
                subnet: old_sub,
            })
        }
        _ => None,
    }
}

/// The rule-builder input for the options and one family's Network/subnet.
pub(crate) fn rule_config(
    options: &FirewallOptions,
    random_fully: bool,
    network: IpNet,
    subnet: IpNet,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(v6: bool) -> ClusterNetworks {
        ClusterNetworks {
            v4: Some("10.20.0.0/16".parse().unwrap()),
            v6: v6.then(|| "fd00:20::/56".parse().unwrap()),
        }
    }

    fn recorded(subnet: &str) -> PreviousEnv {
        PreviousEnv {
            network: Some("10.20.0.0/16".parse().unwrap()),
            subnet: Some(subnet.parse().unwrap()),
            ..PreviousEnv::default()
        }
    }

    #[test]
    fn expects_the_recorded_subnet_within_the_network() {
        let expected = Targets::expected(networks(false), &recorded("10.20.7.0/24"), true);
        let v4 = Some((
            "10.20.0.0/16".parse().unwrap(),
            "10.20.7.0/24".parse().unwrap(),
        ));
        assert_eq!(expected, Some(Targets { v4, v6: None }));
    }

    #[test]
    fn masquerade_rules_wait_for_the_lease_without_a_recorded_subnet_inside_the_network() {
        let none = PreviousEnv::default();
        assert_eq!(Targets::expected(networks(false), &none, true), None);
        let elsewhere = recorded("10.9.3.0/24");
        assert_eq!(Targets::expected(networks(false), &elsewhere, true), None);
        // An IPv6 subnet is needed too on a dual-stack network.
        let v4_only = recorded("10.20.7.0/24");
        assert_eq!(Targets::expected(networks(true), &v4_only, true), None);
    }

    #[test]
    fn without_masquerade_the_network_stands_in_for_the_subnet() {
        let expected = Targets::expected(networks(true), &PreviousEnv::default(), false);
        let net = networks(true);
        let targets = expected.expect("no rule names the subnet");
        assert_eq!(targets.v4, net.v4.map(|n| (n, n)));
        assert_eq!(targets.v6, net.v6.map(|n| (n, n)));
    }
}
