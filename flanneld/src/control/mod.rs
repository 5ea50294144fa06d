//! The control loop: one task owns the peer set, the lease, the backend, the reconciler and the
//! firewall (DESIGN principle 4) and reacts to peer lease updates, lease changes, kernel
//! notifications and timers. Peer events apply just the changed peers' objects; everything else
//! (and any change that did not apply cleanly) runs a full, level-triggered reconcile.

mod backend_switch;
mod first_sync;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use backends::{
    Backend, ClusterNetworks, Netlink, Notification, Notifications, Reaction, Reconciler,
};
use ipnet::IpNet;
use subnet::{
    FamilyEnv, IgnoreReason, Lease, LeaseCounters, LeaseHandle, LeasePolicy, NetworkConfig,
    PeerSet, Registry, SubnetEnv, SubnetKey, WatchScope, WatchUpdate,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config_watch::LiveBackend;
use crate::decide::{self, decide, Pending, Reconcile, Turn, Wake};
use crate::egress_watch;
use crate::firewall::{Firewall, Targets};
use crate::metrics::{Metrics, PeerCounts};
use crate::peers::Peers;
use crate::readiness::{Facts, ReadinessWriter, Stage};

/// How often the resync tick comes: the whole data plane is reconciled then (Go flanneld's route
/// check) unless [`decide::resync_needs_dump`] says every change would have been notified.
const RESYNC_PERIOD: Duration = Duration::from_secs(10);

/// The pause before a watch task that stopped is started again.
const WATCH_RESTART_PAUSE: Duration = Duration::from_secs(1);
/// How often readiness is assessed when nothing else wakes the loop: what only time changes
/// (etcd's silence against its 30 s grace, the lease's expiry) is seen within this.
const READINESS_PERIOD: Duration = Duration::from_secs(5);

/// Writes `env` to `path` atomically and logs what it wrote.
pub(crate) fn write_env_file(path: &std::path::Path, env: &SubnetEnv) -> std::io::Result<()> {
    env.write_atomic(path)?;
    let values = env.render().trim_end().replace('\n', " ");
    tracing::info!("wrote {}: {values}", path.display());
    Ok(())
}

/// The metrics label for why the backend skipped a peer.
fn skip_reason(why: &str) -> &'static str {
    if why.starts_with("unreachable") {
        "unreachable"
    } else if why.contains("BackendType") {
        "backend_type"
    } else {
        "backend_data"
    }
}

/// The notes that are there, joined with `; `.
fn notes<'a>(notes: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    let present: Vec<&str> = notes.into_iter().flatten().collect();
    (!present.is_empty()).then(|| present.join("; "))
}

/// `a, b, c` (or `none`).
fn join(networks: &[IpNet]) -> String {
    if networks.is_empty() {
        return "none".into();
    }
    networks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts the peer lease watch again after a pause: its task ends only with its receiver, so
/// should it die, it is restarted, never in a busy loop.
async fn restart_peer_watch<R: Registry>(registry: &R) -> mpsc::Receiver<WatchUpdate> {
    tracing::error!(
        "the peer lease watch stopped; restarting it in {}s",
        WATCH_RESTART_PAUSE.as_secs()
    );
    tokio::time::sleep(WATCH_RESTART_PAUSE).await;
    registry.watch_leases(WatchScope::AllLeases)
}

/// subnet.env for a lease of `key` on `networks`: the IPv6 lines when both have IPv6.
pub(crate) fn subnet_env(
    networks: ClusterNetworks,
    key: SubnetKey,
    mtu: u32,
    ipmasq: bool,
) -> SubnetEnv {
    let ipv6 = networks.v6.zip(key.ipv6);
    SubnetEnv {
        ipv4: networks.v4.map(|network| FamilyEnv {
            network,
            subnet: key.ipv4,
        }),
        ipv6: ipv6.map(|(network, subnet)| FamilyEnv { network, subnet }),
        mtu,
        ipmasq,
    }
}

/// Everything the control loop owns.
pub(crate) struct Agent {
    /// The peers to program: admitted, lingering, and changed since the last reconcile.
    peers: Peers,
    lease: Lease,
    /// Publishes changed lease attributes (e.g. a new VtepMAC after setup).
    lease_handle: LeaseHandle,
    /// The cluster networks of the config (IPv4, and IPv6 on a dual-stack network).
    networks: ClusterNetworks,
    backend: Backend,
    nl: Netlink,
    reconciler: Reconciler,
    firewall: Option<Firewall>,
    /// The egress policy file's updates, until the control loop takes them.
    egress: Option<watch::Receiver<egress_watch::Rules>>,
    firewall_ok: bool,
    converged: bool,
    /// When the last full reconcile converged.
    last_converged_dump: tokio::time::Instant,
    /// The peer metrics predate incremental reconciles (refreshed on the readiness tick).
    peer_metrics_stale: bool,
    env_written: bool,
    subnet_file: PathBuf,
    ip_masq: bool,
    /// `--iptables-resync`: how often the rules are checked.
    iptables_resync: Duration,
    /// `--ip-blackhole-route`: keep `blackhole <own subnet>` routes (checked with the rules).
    blackhole_route: bool,
    /// The last blackhole route failure logged (each distinct one is logged once).
    blackhole_problem: Option<String>,
    /// Whether subnet.env was tried at least once (its first failure is always logged).
    env_attempted: bool,
    readiness: ReadinessWriter,
    metrics: Arc<Metrics>,
    /// The lease manager's counters, copied into the metrics on each tick.
    lease_counters: Arc<LeaseCounters>,
    /// Complete listings of the peer leases seen (the first, then re-listings).
    listings: u64,
    /// When etcd last answered the lease manager.
    etcd_contact: watch::Receiver<tokio::time::Instant>,
    /// What the agent noticed about the network config in etcd (see [`crate::config_watch`]).
    config_note: watch::Receiver<Option<String>>,
    /// Changes of the `Backend` section applied in place ([`backend_switch`]).
    live: LiveBackend,
    /// The last backend setup failure logged, until setup succeeds (de-duplicates the log).
    setup_failure: Option<String>,
}

/// What the control loop waits on, and the timers it runs.
struct Inputs {
    peer_watch: mpsc::Receiver<WatchUpdate>,
    lease_rx: watch::Receiver<Lease>,
    notifications: Notifications,
    /// The egress policy file's updates (`--ip-masq-config`), while its task runs.
    egress: Option<watch::Receiver<egress_watch::Rules>>,
    /// New configs differing only in `Backend`, while the config watch runs.
    backend_config: Option<watch::Receiver<Option<NetworkConfig>>>,
    resync: tokio::time::Interval,
    rule_check: tokio::time::Interval,
    readiness: tokio::time::Interval,
}

impl Inputs {
    /// Start-up has just reconciled and checked the rules: the first ticks come a period on.
    fn new(
        peer_watch: mpsc::Receiver<WatchUpdate>,
        lease_rx: watch::Receiver<Lease>,
        notifications: Notifications,
        agent: &mut Agent,
    ) -> Inputs {
        let now = tokio::time::Instant::now();
        let every = |period| tokio::time::interval_at(now + period, period);
        Inputs {
            peer_watch,
            lease_rx,
            notifications,
            egress: agent.egress.take(),
            backend_config: agent.live.take_updates(),
            resync: every(RESYNC_PERIOD),
            rule_check: every(agent.iptables_resync),
            readiness: tokio::time::interval(READINESS_PERIOD),
        }
    }

    /// Waits for the next event, lets `agent` take what came with it, and says what woke it.
    async fn next<R: Registry>(
        &mut self,
        agent: &mut Agent,
        registry: &R,
        kernel_cause: &mut Option<(Notification, usize)>,
    ) -> Result<Wake> {
        let egress_live = self.egress.is_some();
        let config_live = self.backend_config.is_some();
        Ok(tokio::select! {
            update = self.peer_watch.recv() => match update {
                Some(update) => Wake::Peers {
                    listing_changed: agent.on_peer_updates(update, &mut self.peer_watch),
                },
                None => {
                    agent.metrics.record_watch_restart();
                    self.peer_watch = restart_peer_watch(registry).await;
                    Wake::Tick
                }
            },
            changed = self.lease_rx.changed() => {
                if changed.is_err() {
                    bail!("the lease manager stopped unexpectedly");
                }
                let lease = self.lease_rx.borrow_and_update().clone();
                Wake::Lease { moved: agent.on_lease_change(lease) }
            }
            burst = self.notifications.next_burst() => match burst {
                Some(burst) => {
                    let (reaction, cause) = agent.on_kernel_burst(&burst);
                    *kernel_cause = cause;
                    Wake::Kernel(reaction)
                }
                None => {
                    tracing::warn!("kernel notification socket closed; relying on the {}s resync", RESYNC_PERIOD.as_secs());
                    self.notifications = Notifications::subscribe(agent.networks.v6.is_some()).context("cannot re-subscribe to kernel notifications")?;
                    Wake::Tick
                }
            },
            rules = next_policy(&mut self.egress), if egress_live => match rules {
                Some(rules) => {
                    agent.on_egress_policy(rules);
                    Wake::EgressPolicy
                }
                None => Wake::Tick,
            },
            config = next_backend_config(&mut self.backend_config), if config_live => match config {
                Some(config) => {
                    agent.live.set_pending(config);
                    Wake::BackendConfig
                }
                None => Wake::Tick,
            },
            _ = self.resync.tick() => {
                // The last keys ignored are summarized even when no more come.
                subnet::ignored_keys().summarize_if_due();
                Wake::Resync { dump: agent.resync_needs_dump() }
            }
            _ = self.rule_check.tick() => Wake::RuleCheck,
            _ = self.readiness.tick() => Wake::Tick,
        })
    }
}

/// The next config whose `Backend` alone changed; `None` (and no more waiting) when the config
/// watch stopped.
async fn next_backend_config(
    updates: &mut Option<watch::Receiver<Option<NetworkConfig>>>,
) -> Option<NetworkConfig> {
    loop {
        let rx = updates.as_mut()?;
        if rx.changed().await.is_err() {
            *updates = None;
            return None;
        }
        if let Some(config) = rx.borrow_and_update().clone() {
            return Some(config);
        }
    }
}

/// The egress policy's next rules; `None` (and no more waiting) when its task stopped.
async fn next_policy(
    egress: &mut Option<watch::Receiver<egress_watch::Rules>>,
) -> Option<egress_watch::Rules> {
    let rx = egress.as_mut()?;
    if rx.changed().await.is_err() {
        tracing::error!("the egress policy file watch stopped; the policy in force is kept");
        *egress = None;
        return None;
    }
    let rules = rx.borrow_and_update().clone();
    Some(rules)
}

/// What the control loop starts with; the rest of its state starts empty.
pub(crate) struct Parts {
    /// The policy peer leases are checked against.
    pub(crate) policy: LeasePolicy,
    /// The cluster networks.
    pub(crate) networks: ClusterNetworks,
    pub(crate) lease: Lease,
    pub(crate) lease_handle: LeaseHandle,
    pub(crate) etcd_contact: watch::Receiver<tokio::time::Instant>,
    pub(crate) backend: Backend,
    pub(crate) nl: Netlink,
    pub(crate) firewall: Option<Firewall>,
    pub(crate) egress: Option<watch::Receiver<egress_watch::Rules>>,
    pub(crate) subnet_file: PathBuf,
    pub(crate) ip_masq: bool,
    pub(crate) iptables_resync: Duration,
    pub(crate) blackhole_route: bool,
    pub(crate) readiness: ReadinessWriter,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) lease_counters: Arc<LeaseCounters>,
    pub(crate) config: crate::config_watch::ConfigUpdates,
}

impl Agent {
    /// The agent before its first listing: no peers, nothing converged or written yet.
    pub(crate) fn new(parts: Parts) -> Agent {
        Agent {
            networks: parts.networks,
            peers: Peers::new(PeerSet::with_policy(parts.policy)),
            lease: parts.lease,
            lease_handle: parts.lease_handle,
            backend: parts.backend,
            reconciler: Reconciler::new(parts.nl.clone()),
            nl: parts.nl,
            firewall: parts.firewall,
            egress: parts.egress,
            firewall_ok: true,
            converged: false,
            last_converged_dump: tokio::time::Instant::now(),
            peer_metrics_stale: false,
            env_written: false,
            subnet_file: parts.subnet_file,
            ip_masq: parts.ip_masq,
            iptables_resync: parts.iptables_resync,
            blackhole_route: parts.blackhole_route,
            blackhole_problem: None,
            env_attempted: false,
            readiness: parts.readiness,
            metrics: parts.metrics,
            lease_counters: parts.lease_counters,
            listings: 0,
            etcd_contact: parts.etcd_contact,
            config_note: parts.config.note,
            live: LiveBackend::new(parts.config.backend, parts.config.running),
            setup_failure: None,
        }
    }

    /// Reacts to kernel, etcd and timer events until `shutdown`.
    pub(crate) async fn control_loop<R: Registry>(
        &mut self,
        registry: &R,
        peer_watch: mpsc::Receiver<WatchUpdate>,
        lease_rx: watch::Receiver<Lease>,
        notifications: Notifications,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut inputs = Inputs::new(peer_watch, lease_rx, notifications, self);
        let mut pending_setup = false;
        loop {
            // The burst that asked for setup, for the log: its first such notification and size.
            let mut kernel_cause = None;
            let wake = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                wake = inputs.next(self, registry, &mut kernel_cause) => wake?,
            };
            let pending = Pending {
                setup: pending_setup,
                changed_peers: self.peers.have_changes(),
            };
            let cause = wake.label();
            if wake == Wake::Tick {
                self.refresh_peer_metrics();
            }
            pending_setup = self
                .run_turn(decide(wake, pending), cause, kernel_cause)
                .await;
        }
    }

    /// Takes the egress policy's new rules for the firewall (checked this turn).
    fn on_egress_policy(&mut self, rules: egress_watch::Rules) {
        if let Some(fw) = self.firewall.as_mut() {
            fw.set_egress(rules);
        }
    }

    /// The backend's reaction to a burst of kernel notifications (its strongest), and the
    /// notification that asked for setup, if any, with the burst's size (for the log).
    fn on_kernel_burst(&self, burst: &[Notification]) -> (Reaction, Option<(Notification, usize)>) {
        let wanted = |dst: &IpNet| match dst {
            IpNet::V4(_) => self.peers.programmed(dst).is_some(),
            IpNet::V6(v6) => (self.peers.all_programmed()).any(|l| l.key.ipv6 == Some(*v6)),
        };
        let held = |id: u32| self.reconciler.holds_nexthop(id);
        let reactions: Vec<Reaction> = (burst.iter())
            .map(|n| decide::reaction(n, self.backend.reaction(n), (wanted, held)))
            .collect();
        let cause = burst
            .iter()
            .zip(&reactions)
            .find(|(_, r)| **r == Reaction::Setup);
        let cause = cause.map(|(n, _)| (n.clone(), burst.len()));
        (decide::strongest(reactions), cause)
    }

    /// Runs the steps of one turn ([`decide`]); returns whether setup failed (and stays pending).
    async fn run_turn(
        &mut self,
        turn: Turn,
        cause: &'static str,
        kernel_cause: Option<(Notification, usize)>,
    ) -> bool {
        if turn.expire_lingering {
            self.expire_lingering();
        }
        if turn.switch_backend {
            self.switch_backend().await;
        }
        if turn.check_rules {
            self.ensure_firewall().await;
            self.ensure_blackholes().await;
        }
        let mut setup = turn.setup;
        if let (true, Some((n, len))) = (turn.check_drift, kernel_cause) {
            // Setup's own writes are reported too: only a difference needs setup again.
            let drift = self.backend.drift(&self.nl).await;
            if !drift.is_empty() {
                let found: Vec<String> = drift.iter().map(ToString::to_string).collect();
                tracing::info!(
                    "kernel reported {n:?} (in a burst of {len}): {}; re-running backend setup",
                    found.join("; ")
                );
                setup = true;
            }
        }
        let setup_failed = setup && !self.setup().await;
        match turn.reconcile {
            Reconcile::Full => self.reconcile(cause).await,
            Reconcile::ChangedPeers => self.reconcile_changes().await,
            Reconcile::Nothing => {}
        }
        if !self.env_written {
            self.write_subnet_env();
        }
        self.publish_readiness();
        setup_failed
    }

    /// Applies `first` and every update already queued behind it, to program them in one go;
    /// returns whether a listing changed the peers.
    fn on_peer_updates(
        &mut self,
        first: WatchUpdate,
        rx: &mut mpsc::Receiver<WatchUpdate>,
    ) -> bool {
        let mut listing_changed = self.on_peer_update(first);
        while let Ok(more) = rx.try_recv() {
            listing_changed |= self.on_peer_update(more);
        }
        listing_changed
    }

    /// Applies a peer watch update to the peer set. Returns whether a full reconcile is due (a
    /// listing that changed something); changes by events are noted in `changed` instead.
    pub(crate) fn on_peer_update(&mut self, update: WatchUpdate) -> bool {
        let full = match update {
            WatchUpdate::Snapshot(leases) => self.on_listing(leases),
            WatchUpdate::Events(events) => {
                self.peers.take_events(events);
                false
            }
        };
        self.report_rejections();
        full
    }

    /// Takes a complete listing; returns whether it changed the peers.
    fn on_listing(&mut self, leases: Vec<Lease>) -> bool {
        let n = leases.len();
        self.listings += 1;
        if self.listings > 1 {
            self.metrics.record_relist();
        }
        let listed = self.peers.take_listing(leases, tokio::time::Instant::now());
        tracing::info!(
            "lease listing: {} peers ({n} leases), {} changes",
            self.peers.admitted().len(),
            listed.changes
        );
        listed.changes > 0
    }

    /// Drops the lingering peers whose grace period is over; returns whether any was dropped.
    pub(crate) fn expire_lingering(&mut self) -> bool {
        let expired = self.peers.expire_lingering(tokio::time::Instant::now());
        !expired.is_empty()
    }

    /// Takes a new version of our own lease; returns whether the data plane must be set up
    /// again (the lease moved to another subnet).
    pub(crate) fn on_lease_change(&mut self, lease: Lease) -> bool {
        let moved = lease.key != self.lease.key;
        if moved {
            tracing::warn!(
                "our lease moved from {} to {}: reconfiguring the data plane, rules and subnet.env",
                self.lease.key,
                lease.key
            );
            if let Some(policy) = self.peers.policy() {
                // Every lease known is checked again, including the one of the host that took
                // our old subnet while it was still ours.
                let policy = policy.moved_to(lease.key);
                self.peers.set_policy(policy);
                self.report_rejections();
            }
            if let Some(fw) = self.firewall.as_mut() {
                fw.retarget(Targets::of(self.networks, lease.key));
            }
            self.env_written = false;
        }
        self.lease = lease;
        moved
    }

    /// Re-runs backend init + configure (device or interface came back, or the lease moved).
    /// Returns whether it succeeded; failures are retried on the next event or tick.
    pub(crate) async fn setup(&mut self) -> bool {
        let result = async {
            let attrs = self.backend.init(&self.nl).await?;
            // Changed attributes (a new VtepMAC) are written at once, so peers follow.
            self.lease_handle.set_attrs(attrs);
            self.backend
                .configure(&self.nl, &self.lease, self.networks)
                .await
        }
        .await;
        match result {
            Ok(()) => {
                match self.setup_failure.take() {
                    Some(earlier) => tracing::info!("backend setup done (earlier: {earlier})"),
                    None => tracing::info!("backend setup done"),
                }
                self.ensure_firewall().await;
                true
            }
            Err(e) => {
                // Retried on every event and tick: one line per distinct failure.
                let text = e.to_string();
                if self.setup_failure.as_ref() != Some(&text) {
                    tracing::warn!(
                        "backend setup failed, will retry on the next event or tick: {text}"
                    );
                    self.setup_failure = Some(text);
                }
                false
            }
        }
    }

    /// Programs the peers in `changed` only, planned against the reconciler's model of the
    /// kernel; falls back to a full reconcile when there is no model or the change did not
    /// apply cleanly.
    pub(crate) async fn reconcile_changes(&mut self) {
        let changed = self.peers.take_changes();
        let before = self.backend.desired_for(changed.values().flatten());
        let after = self
            .backend
            .desired_for(changed.keys().filter_map(|s| self.peers.programmed(s)));
        let started = tokio::time::Instant::now();
        let outcome = self.reconciler.reconcile_changes(&before, &after).await;
        if let Some(report) = &outcome {
            self.metrics
                .record_reconcile("peer_events", report, started.elapsed());
            self.peer_metrics_stale = true;
        }
        match outcome {
            Some(report) if report.converged => {
                if report.writes() > 0 {
                    tracing::info!(
                        "data plane: {} added, {} replaced, {} deleted for {} changed peers",
                        report.added,
                        report.replaced,
                        report.deleted,
                        changed.len()
                    );
                }
            }
            _ => self.reconcile("incremental_fallback").await,
        }
    }

    /// Reads the networks this host is connected to and checks every lease against them again
    /// (a lease covering a LAN of this host must never be routed). A failed read keeps the
    /// networks known before.
    async fn refresh_local_networks(&mut self) {
        let Some(policy) = self.peers.policy() else {
            return;
        };
        match self.nl.connected_networks().await {
            Ok(networks) => {
                let policy = policy.clone().with_local_networks(networks);
                if self.peers.policy() != Some(&policy) {
                    tracing::info!(
                        "this host's networks (no peer subnet may overlap them): {}",
                        join(&policy.local_networks())
                    );
                    self.peers.set_policy(policy);
                    self.report_rejections();
                }
            }
            Err(e) => {
                tracing::warn!("cannot read this host's networks, keeping the last known: {e}")
            }
        }
    }

    /// Logs each lease newly rejected by the policy, once, through the bounded reporter (the
    /// first keys by name, then a summary a minute).
    pub(crate) fn report_rejections(&mut self) {
        for (key, why) in self.peers.take_new_rejections() {
            let ignored = subnet::ignored_keys().report(IgnoreReason::Rejected, &key.to_string());
            if ignored != subnet::Logged::Named {
                continue;
            }
            tracing::warn!(
                decision = "peer",
                lease = %key,
                reason = %why,
                "ignoring the lease {key}: {why}; nothing is programmed for it (fix or delete \
                 <prefix>/subnets/{key})"
            );
        }
    }

    /// Makes the kernel match the desired state for the current peers. It reads the host's
    /// networks first, so every lease (the first listing too) is checked against them before
    /// anything is programmed for it.
    pub(crate) async fn reconcile(&mut self, cause: &'static str) {
        self.refresh_local_networks().await;
        self.peers.clear_changes();
        let started = tokio::time::Instant::now();
        let desired = self.backend.desired_for(self.peers.all_programmed());
        let report = self.reconciler.reconcile(&desired).await;
        self.metrics
            .record_reconcile(cause, &report, started.elapsed());
        self.metrics.set_peers(&self.peer_counts(&desired));
        self.peer_metrics_stale = false;
        if report.writes() > 0 {
            tracing::info!(
                "data plane: {} added, {} replaced, {} deleted for {} peers",
                report.added,
                report.replaced,
                report.deleted,
                self.peers.admitted().len()
            );
        }
        self.converged = report.converged;
        if report.converged {
            self.last_converged_dump = started;
        }
    }

    /// Sets the peer metrics again after incremental reconciles (a full one sets them): they
    /// count every peer, which watch events alone do not justify computing on each event.
    fn refresh_peer_metrics(&mut self) {
        if self.peer_metrics_stale {
            let desired = self.backend.desired_for(self.peers.all_programmed());
            self.metrics.set_peers(&self.peer_counts(&desired));
            self.peer_metrics_stale = false;
        }
    }

    /// Whether this resync tick dumps and reconciles everything ([`decide::resync_needs_dump`]).
    pub(crate) fn resync_needs_dump(&self) -> bool {
        decide::resync_needs_dump(
            self.converged,
            self.backend.drift_is_notified(),
            self.last_converged_dump.elapsed(),
        )
    }

    /// Runs the firewall check; errors are logged once per distinct message.
    pub(crate) async fn ensure_firewall(&mut self) {
        let Some(fw) = self.firewall.as_mut() else {
            return;
        };
        match fw.ensure().await {
            Ok(()) => {
                if !self.firewall_ok {
                    tracing::info!("iptables rules are in place again");
                }
                self.firewall_ok = true;
            }
            Err(e) => {
                if self.firewall_ok {
                    tracing::error!("iptables: {e:#}");
                }
                self.firewall_ok = false;
            }
        }
    }

    /// `--ip-blackhole-route`: a blackhole route for our subnet of each family (and none of ours
    /// for a subnet we no longer hold). A failure (e.g. the pod bridge's route already has the
    /// key) is logged once and retried with the next rule check.
    async fn ensure_blackholes(&mut self) {
        if !self.blackhole_route {
            return;
        }
        let v4 = self
            .networks
            .v4
            .and(Some(self.lease.subnet()))
            .map(IpNet::from);
        let v6 = self.networks.v6.and(self.lease.key.ipv6).map(IpNet::from);
        let subnets: Vec<IpNet> = v4.into_iter().chain(v6).collect();
        let networks = self.networks.all();
        match backends::ensure_blackholes(&self.nl, &subnets, &networks).await {
            Ok(changed) => {
                for change in changed {
                    tracing::info!("--ip-blackhole-route: {change}");
                }
                self.blackhole_problem = None;
            }
            Err(e) => {
                let text = e.to_string();
                if self.blackhole_problem.as_ref() != Some(&text) {
                    tracing::warn!("--ip-blackhole-route: {text} (retried with every rule check)");
                    self.blackhole_problem = Some(text);
                }
            }
        }
    }

    /// subnet.env as it must be now.
    pub(crate) fn subnet_env(&self) -> SubnetEnv {
        subnet_env(
            self.networks,
            self.lease.key,
            self.backend.mtu(),
            self.ip_masq,
        )
    }

    /// Writes subnet.env (atomically); a failure is logged and retried, and keeps us not ready.
    pub(crate) fn write_subnet_env(&mut self) {
        let outcome = write_env_file(&self.subnet_file, &self.subnet_env());
        self.record_env_write(outcome);
    }

    /// Takes the outcome of a subnet.env write: a failure is logged when it is the first or
    /// follows a success.
    pub(crate) fn record_env_write(&mut self, outcome: std::io::Result<()>) {
        match outcome {
            Ok(()) => self.env_written = true,
            Err(e) => {
                if self.env_written || !self.env_attempted {
                    tracing::warn!("cannot write {}: {e}", self.subnet_file.display());
                }
            }
        }
        self.env_attempted = true;
    }

    /// Publishes readiness from the facts the loop owns (when it changed).
    pub(crate) fn publish_readiness(&mut self) {
        self.update_lease_metrics();
        let facts = Facts {
            lease_valid: subnet::is_valid(&self.lease, SystemTime::now()),
            converged: self.converged,
            rules_in_place: self.firewall_ok,
            subnet_env_written: self.env_written,
            etcd_silent_for: self.etcd_contact.borrow().elapsed(),
            config_note: notes([self.config_note.borrow().as_deref(), self.live.note()]),
        };
        self.readiness.publish(&Stage::Serving(facts));
    }

    /// The lease's metrics: its subnet, the time to expiry, the manager's counters and the
    /// time since etcd last answered.
    fn update_lease_metrics(&self) {
        let expires_in =
            (self.lease.expiration).and_then(|at| at.duration_since(SystemTime::now()).ok());
        let (subnet, public_ip) = (self.lease.id(), self.lease.attrs.public_ip);
        self.metrics
            .set_lease(&subnet.to_string(), &public_ip.to_string(), expires_in);
        let silence = self.etcd_contact.borrow().elapsed();
        self.metrics.sync_lease(&self.lease_counters, silence);
    }

    /// The peer counts for the metrics, after a reconcile of `desired`.
    fn peer_counts(&self, desired: &backends::DesiredState) -> PeerCounts {
        let mut skipped: BTreeMap<&'static str, usize> = BTreeMap::new();
        for why in desired.skipped.values() {
            *skipped.entry(skip_reason(why)).or_default() += 1;
        }
        let mut by_backend: BTreeMap<&str, usize> = BTreeMap::new();
        for lease in self.peers.admitted().iter() {
            *by_backend.entry(&lease.attrs.backend_type).or_default() += 1;
        }
        let known = self.peers.admitted().len();
        PeerCounts {
            known,
            programmed: known.saturating_sub(desired.skipped.len()),
            rejected: self.peers.admitted().rejected().count(),
            skipped: skipped.into_iter().collect(),
            by_backend: by_backend
                .into_iter()
                .map(|(name, n)| (name.to_string(), n))
                .collect(),
        }
    }
}
