//! The first rule check, started before the lease when the rules it needs can be known then:
//! the iptables processes (detection, save, restore, verify) are most of a small cluster's
//! start-up, and the etcd steps (lease, listing) need none of them.

use std::sync::Arc;

use anyhow::{Context, Result};
use backends::ClusterNetworks;
use subnet::PreviousEnv;
use tokio::task::JoinHandle;

use super::{Detection, EnsureTask, Firewall, FirewallOptions, Targets};
use crate::metrics::Metrics;

/// The firewall and its first check: a task already checking the rules for the expected
/// targets, or what builds them once the lease is known.
pub enum FirstRules {
    /// Built for [`Targets::expected`] as soon as the network config was known; its first
    /// check runs.
    Started(JoinHandle<Result<Prepared>>),
    /// To build for the lease: the detection under way, the options and whether the config
    /// asks for native nftables.
    AfterLease(Detection, FirewallOptions, bool),
}

/// A firewall (`None` when no rule is asked for) and its running first check.
pub type Prepared = (Option<Firewall>, Option<EnsureTask>);

impl FirstRules {
    /// Starts building the firewall and checking its rules now when the targets the lease
    /// will give are expected ([`Targets::expected`]); otherwise waits for the lease.
    pub fn start(
        (options, detection): (FirewallOptions, Detection),
        (networks, nftables): (ClusterNetworks, bool),
        previous: PreviousEnv,
        metrics: &Arc<Metrics>,
    ) -> FirstRules {
        let Some(expected) = Targets::expected(networks, &previous, options.ip_masq) else {
            tracing::debug!("the rules name our subnet and subnet.env has none: they are checked once the lease is held");
            return FirstRules::AfterLease(detection, options, nftables);
        };
        let metrics = Arc::clone(metrics);
        FirstRules::Started(tokio::spawn(async move {
            let target = (expected, nftables);
            prepare((options, detection), target, previous, &metrics).await
        }))
    }

    /// The firewall for the lease's `targets` and its first check: the one started early when
    /// the lease gave the expected rules, else a new one.
    pub async fn finish(
        self,
        targets: Targets,
        previous: PreviousEnv,
        metrics: &Arc<Metrics>,
    ) -> Result<Prepared> {
        let (detection, options, nftables) = match self {
            FirstRules::Started(task) => {
                let prepared = task.await.context("firewall task")??;
                return recheck_if_moved(prepared, targets, &previous).await;
            }
            FirstRules::AfterLease(detection, options, nftables) => (detection, options, nftables),
        };
        prepare((options, detection), (targets, nftables), previous, metrics).await
    }
}

/// Builds the firewall for `target` and starts its first check.
async fn prepare(
    (options, detection): (FirewallOptions, Detection),
    target: (Targets, bool),
    previous: PreviousEnv,
    metrics: &Arc<Metrics>,
) -> Result<Prepared> {
    let firewall = Firewall::new(options, detection, target, previous, metrics).await?;
    let check = firewall.as_ref().map(Firewall::start_ensure);
    Ok((firewall, check))
}

/// Re-targets an early firewall at the lease; when that changes its rules, the early check is
/// waited for (it may have written) and a new one started.
async fn recheck_if_moved(
    (mut firewall, check): Prepared,
    targets: Targets,
    previous: &PreviousEnv,
) -> Result<Prepared> {
    let Some(fw) = firewall.as_mut() else {
        return Ok((None, None));
    };
    if !fw.settle(targets, previous) {
        return Ok((firewall, check));
    }
    tracing::info!(
        "the lease is not the subnet subnet.env recorded: the rules are checked again for it"
    );
    if let Some(early) = check {
        if let Err(e) = fw.finish_ensure(early).await {
            tracing::warn!("the rule check for the expected subnet failed: {e:#}");
        }
    }
    let check = fw.start_ensure();
    Ok((firewall, Some(check)))
}
