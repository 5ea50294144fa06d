//! The agent's lifecycle (reference §9) and its control loop.
//!
//! Start-up: health server → etcd → network config (retried every second) → interface →
//! backend init → lease → backend configure → iptables rules, first peer listing and reconcile
//! (the rule check runs alongside; iptables detection already ran alongside the etcd steps) →
//! subnet.env → ready. Then one task owns all state (DESIGN principle 4) and reacts to peer
//! lease updates, lease changes, kernel notifications and timers; every path ends in the same
//! level-triggered reconcile: peer events apply just the changed peers' objects, everything else
//! (and any change that did not apply cleanly) runs a full one. SIGTERM/SIGINT leave routes,
//! devices, rules, subnet.env and the etcd lease in place (DESIGN principle 5).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use backends::{Backend, Netlink, Notifications, Reaction, Reconciler};
use ipnet::Ipv4Net;
use subnet::etcd::{EtcdOptions, EtcdRegistry};
use subnet::keyspace::{Detector, EtcdApi, Keyspace};
use subnet::manager::{self, LeaseHandle, LeaseManager, LeaseTiming};
use subnet::registry::Registry;
use subnet::watch::{WatchScope, WatchUpdate};
use subnet::{Lease, PeerSet, PreviousEnv, SubnetEnv};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cli::Options;
use crate::firewall::{Detection, Firewall, FirewallOptions};
use crate::healthz::{self, Readiness};
use crate::iface::{self, Selection};
use crate::sdnotify;

/// How often the whole data plane is reconciled even without events (Go flanneld's route check).
const RESYNC_PERIOD: Duration = Duration::from_secs(10);
/// How often start-up steps that failed for a retryable reason are tried again.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

/// Runs the agent until `shutdown` is cancelled. `Ok` means a clean exit (status 0).
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<()> {
    let subnet_file = PathBuf::from(&opts.subnet_file);
    let previous = PreviousEnv::read(&subnet_file);
    if let Some(s) = previous.subnet {
        tracing::info!(
            "{} records subnet {s} from a previous run",
            subnet_file.display()
        );
    }

    let (ready_tx, ready_rx) = watch::channel(Readiness::NotReady("starting".into()));
    if opts.healthz_port > 0 {
        let ip: IpAddr = opts
            .healthz_ip
            .parse()
            .with_context(|| format!("--healthz-ip {:?} is not an IP address", opts.healthz_ip))?;
        let port = u16::try_from(opts.healthz_port).with_context(|| {
            format!("--healthz-port {} is not a port number", opts.healthz_port)
        })?;
        let addr = SocketAddr::new(ip, port);
        let listener = healthz::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--healthz-ip/--healthz-port)"))?;
        tracing::info!("health server on http://{addr}/healthz and /readyz");
        tokio::spawn(healthz::serve(listener, ready_rx));
    }

    // iptables detection needs no lease: it runs while etcd is asked for config and lease.
    let fw_options = FirewallOptions {
        backend: opts.iptables_backend.clone(),
        ip_masq: opts.ip_masq,
        random_fully_disabled: opts.ip_masq_fully_random_disable,
        forward_rules: opts.iptables_forward_rules,
    };
    let firewall = (Detection::start(&fw_options)?, fw_options);

    let etcd = etcd_options(&opts);
    let api: EtcdApi = opts.etcd_api.parse().map_err(|e: String| anyhow!(e))?;
    tracing::info!(
        "etcd endpoints {}, prefix {}, API {api}",
        etcd.endpoints.join(","),
        etcd.prefix
    );
    ready_tx.send_replace(Readiness::NotReady("waiting for the network config".into()));
    let keyspace = match api {
        EtcdApi::V3 => Keyspace::V3(Box::new(
            EtcdRegistry::connect(&etcd).await.context("etcd")?,
        )),
        EtcdApi::V2 => Keyspace::V2(subnet::EtcdV2Registry::connect(&etcd).context("etcd")?),
        EtcdApi::Auto => {
            let detector = Detector::connect(&etcd).await.context("etcd")?;
            let found = retry(
                &shutdown,
                "Couldn't fetch network config",
                |e: &subnet::registry::RegistryError| !e.is_retryable(),
                || detector.detect(),
            );
            let Some(keyspace) = found.await? else {
                return Ok(());
            };
            keyspace
        }
    };
    match keyspace {
        Keyspace::V3(registry) => {
            serve(*registry, opts, previous, firewall, ready_tx, shutdown).await
        }
        Keyspace::V2(registry) => {
            serve(registry, opts, previous, firewall, ready_tx, shutdown).await
        }
    }
}

/// The agent on the keyspace chosen: config, interface, backend, lease, data plane, control loop.
async fn serve<R: Registry>(
    registry: R,
    opts: Options,
    previous: PreviousEnv,
    (detection, fw_options): (Detection, FirewallOptions),
    ready_tx: watch::Sender<Readiness>,
    shutdown: CancellationToken,
) -> Result<()> {
    let subnet_file = PathBuf::from(&opts.subnet_file);
    let Some(config) = retry(
        &shutdown,
        "Couldn't fetch network config",
        |e: &subnet::registry::RegistryError| !e.is_retryable(),
        || registry.network_config(),
    )
    .await?
    else {
        return Ok(());
    };
    let range = *config.v4().ok_or_else(|| {
        anyhow!("the network config has EnableIPv4=false; flanneld-rs supports IPv4 networks only")
    })?;
    if config.ipv6.is_some() {
        tracing::warn!(
            "EnableIPv6 is set but flanneld-rs does not implement IPv6 yet; configuring IPv4 only"
        );
    }
    if config.enable_nftables {
        tracing::warn!("EnableNFTables is set but flanneld-rs programs iptables only (nftables is not implemented yet)");
    }
    tracing::info!(
        "network config: Network {}, SubnetLen {}, SubnetMin {}, SubnetMax {}, backend {:?}",
        range.network,
        range.subnet_len,
        range.subnet_min,
        range.subnet_max,
        config.backend.backend_type
    );

    let nl = Netlink::connect().context("cannot open a netlink socket")?;
    let selected = {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        let driver = tokio::spawn(conn);
        let can_reach = match opts.iface_can_reach.as_str() {
            "" => None,
            s => Some(
                s.parse::<Ipv4Addr>()
                    .with_context(|| format!("--iface-can-reach {s:?} is not an IPv4 address"))?,
            ),
        };
        let host = iface::read_host(&handle, can_reach).await?;
        driver.abort();
        iface::select(
            &host,
            &Selection {
                iface: &opts.iface,
                iface_regex: &opts.iface_regex,
                can_reach: &opts.iface_can_reach,
                public_ip: &opts.public_ip,
            },
        )?
    };
    tracing::info!(
        "using interface {} (index {}, MTU {}) address {}, public IP {}: {}",
        selected.iface.name,
        selected.iface.index,
        selected.iface.mtu,
        selected.iface_addr,
        selected.public_ip,
        selected.reason
    );

    let ext = backends::ExternalInterface {
        name: selected.iface.name.clone(),
        index: selected.iface.index,
        addr: selected.iface_addr,
        mtu: selected.iface.mtu,
    };
    let mut backend = Backend::new(&config.backend, ext, selected.public_ip)?;
    let attrs = backend.init(&nl).await?;

    ready_tx.send_replace(Readiness::NotReady("acquiring a subnet lease".into()));
    let timing =
        LeaseTiming::with_renew_margin_minutes(opts.subnet_lease_renew_margin.unsigned_abs());
    let Some(manager) = retry(
        &shutdown,
        "Couldn't acquire a subnet lease",
        |e: &manager::AcquireError| !e.is_retryable(),
        || {
            LeaseManager::start(
                registry.clone(),
                &config,
                attrs.clone(),
                previous.subnet,
                timing,
            )
        },
    )
    .await?
    else {
        return Ok(());
    };
    let lease = manager.lease();
    tracing::info!(
        "lease acquired: {} (PublicIP {})",
        lease.subnet(),
        lease.attrs.public_ip
    );
    let lease_rx = manager.subscribe();
    let lease_handle = manager.handle();
    let manager_task = tokio::spawn(manager.run());

    backend.configure(&nl, &lease, range.network).await?;
    let firewall = Firewall::new(
        fw_options,
        detection,
        range.network,
        lease.subnet(),
        previous,
    )
    .await?;
    // The first rule check runs while the peers are listed and programmed.
    let first_check = firewall.as_ref().map(Firewall::start_ensure);

    let notifications = Notifications::subscribe()
        .context("cannot subscribe to kernel link/route notifications")?;
    let mut agent = Agent {
        peers: PeerSet::new(lease.subnet()),
        lease,
        lease_handle,
        network: range.network,
        backend,
        nl: nl.clone(),
        reconciler: Reconciler::new(nl),
        changed: BTreeMap::new(),
        firewall,
        firewall_ok: true,
        converged: false,
        env_written: false,
        subnet_file,
        ip_masq: opts.ip_masq,
        ready_tx,
        last_status: None,
    };
    let mut peer_watch = registry.watch_leases(WatchScope::AllLeases);
    // The first update is the full listing: program it before declaring the data plane ready.
    tokio::select! {
        _ = shutdown.cancelled() => {
            manager_task.abort();
            return Ok(());
        }
        first = peer_watch.recv() => {
            if let Some(update) = first {
                agent.on_peer_update(update);
            }
        }
    }
    agent.reconcile().await;
    if let (Some(task), Some(fw)) = (first_check, agent.firewall.as_mut()) {
        fw.finish_ensure(task).await?;
    }
    agent.write_subnet_env();
    release_freed_heap();
    sdnotify::notify_ready();
    agent.publish_readiness();

    let result = agent
        .control_loop(
            &registry,
            peer_watch,
            lease_rx,
            notifications,
            opts.iptables_resync,
            &shutdown,
        )
        .await;
    manager_task.abort();
    tracing::info!("Exiting cleanly... (routes, devices, rules, subnet.env and the etcd lease are left in place)");
    result
}

/// Hands the heap freed after start-up back to the kernel: the lease listings and the first
/// kernel dump of thousands of peers are transient, and glibc would otherwise keep their pages.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A peer event as logged: `peer <subnet> at <PublicIP> (<type>)` or `peer <subnet> removed`.
fn describe(e: &subnet::LeaseEvent) -> String {
    match e {
        subnet::LeaseEvent::Added(l) => format!(
            "peer {} at {} ({})",
            l.subnet(),
            l.attrs.public_ip,
            l.attrs.backend_type
        ),
        subnet::LeaseEvent::Removed(k) => format!("peer {} removed", k.ipv4),
    }
}

/// Maps the `--etcd-*` flags to the registry options.
pub(crate) fn etcd_options(opts: &Options) -> EtcdOptions {
    let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    EtcdOptions {
        endpoints: opts.etcd_endpoints.clone(),
        prefix: opts.etcd_prefix.clone(),
        keyfile: path(&opts.etcd_keyfile),
        certfile: path(&opts.etcd_certfile),
        cafile: path(&opts.etcd_cafile),
        username: text(&opts.etcd_username),
        password: text(&opts.etcd_password),
        ..EtcdOptions::default()
    }
}

/// Calls `f` every [`RETRY_PERIOD`] until it succeeds, logging each distinct error once (not
/// once per second). `Ok(None)` when `shutdown` fires first; `Err` on an error `fatal` accepts.
async fn retry<T, E, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    fatal: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Fut,
) -> Result<Option<T>>
where
    E: Display + std::error::Error + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last = String::new();
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = f() => r,
        };
        match outcome {
            Ok(v) => {
                if !last.is_empty() {
                    tracing::info!("ok now (earlier: {last})");
                }
                return Ok(Some(v));
            }
            Err(e) if fatal(&e) => return Err(e.into()),
            Err(e) => {
                let text = e.to_string();
                if text != last {
                    tracing::error!(
                        "{what}: {text} (retrying every {}s)",
                        RETRY_PERIOD.as_secs()
                    );
                    last = text;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(RETRY_PERIOD) => {}
        }
    }
}

/// Everything the control loop owns.
struct Agent {
    peers: PeerSet,
    lease: Lease,
    /// Publishes changed lease attributes (e.g. a new VtepMAC after setup).
    lease_handle: LeaseHandle,
    network: Ipv4Net,
    backend: Backend,
    nl: Netlink,
    reconciler: Reconciler,
    /// Peers changed by watch events since the last reconcile, each with its lease before the
    /// first of those changes (`None`: a new peer). Applied incrementally unless a full
    /// reconcile is due anyway.
    changed: BTreeMap<Ipv4Net, Option<Lease>>,
    firewall: Option<Firewall>,
    firewall_ok: bool,
    converged: bool,
    env_written: bool,
    subnet_file: PathBuf,
    ip_masq: bool,
    ready_tx: watch::Sender<Readiness>,
    last_status: Option<Readiness>,
}

impl Agent {
    /// Reacts to kernel, etcd and timer events until `shutdown`.
    async fn control_loop<R: Registry>(
        &mut self,
        registry: &R,
        mut peer_watch: mpsc::Receiver<WatchUpdate>,
        mut lease_rx: watch::Receiver<Lease>,
        mut notifications: Notifications,
        iptables_resync: i64,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        // Start-up has just reconciled and checked the rules: the first ticks come a period on.
        let now = tokio::time::Instant::now();
        let mut resync = tokio::time::interval_at(now + RESYNC_PERIOD, RESYNC_PERIOD);
        let fw_period = Duration::from_secs(iptables_resync.max(1).unsigned_abs());
        let mut fw_tick = tokio::time::interval_at(now + fw_period, fw_period);
        let mut readiness_tick = tokio::time::interval(Duration::from_secs(1));
        let mut needs_setup = false;
        loop {
            let mut dirty = false;
            // A kernel notification that may need setup, and the size of its burst.
            let mut kernel_cause = None;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                update = peer_watch.recv() => match update {
                    Some(update) => {
                        // Take every update already queued, to program them in one go.
                        dirty = self.on_peer_update(update);
                        while let Ok(more) = peer_watch.try_recv() {
                            dirty |= self.on_peer_update(more);
                        }
                    }
                    None => peer_watch = registry.watch_leases(WatchScope::AllLeases),
                },
                changed = lease_rx.changed() => {
                    if changed.is_err() {
                        bail!("the lease manager stopped unexpectedly");
                    }
                    let lease = lease_rx.borrow_and_update().clone();
                    if self.on_lease_change(lease) {
                        needs_setup = true;
                        dirty = true;
                    }
                }
                burst = notifications.next_burst() => match burst {
                    // One reaction per burst: setup (if any part asks for it) before the
                    // reconcile, never a reconcile against a device that is being deleted.
                    Some(burst) => {
                        let reactions: Vec<Reaction> =
                            burst.iter().map(|n| self.backend.reaction(n)).collect();
                        dirty = reactions.iter().any(|r| *r != Reaction::Ignore);
                        let cause = burst.iter().zip(&reactions).find(|(_, r)| **r == Reaction::Setup);
                        kernel_cause = cause.map(|(n, _)| (n.clone(), burst.len()));
                    }
                    None => {
                        tracing::warn!("kernel notification socket closed; relying on the {}s resync", RESYNC_PERIOD.as_secs());
                        notifications = Notifications::subscribe().context("cannot re-subscribe to kernel notifications")?;
                    }
                },
                _ = resync.tick() => dirty = true,
                _ = fw_tick.tick() => self.ensure_firewall().await,
                _ = readiness_tick.tick() => {}
            }
            if let (false, Some((n, len))) = (needs_setup, kernel_cause) {
                // Setup's own writes are reported too: only a difference needs setup again.
                let drift = self.backend.drift(&self.nl).await;
                if !drift.is_empty() {
                    tracing::info!(
                        "kernel reported {n:?} (in a burst of {len}): {}; re-running backend setup",
                        drift.join("; ")
                    );
                    needs_setup = true;
                }
            }
            if needs_setup {
                needs_setup = !self.setup().await;
            }
            if dirty {
                self.reconcile().await;
            } else if !self.changed.is_empty() {
                self.reconcile_changes().await;
            }
            if !self.env_written {
                self.write_subnet_env();
            }
            self.publish_readiness();
        }
    }

    /// Applies a peer watch update to the peer set. Returns whether a full reconcile is due (a
    /// listing that changed something); changes by events are noted in `changed` instead.
    fn on_peer_update(&mut self, update: WatchUpdate) -> bool {
        match update {
            WatchUpdate::Snapshot(leases) => {
                let n = leases.len();
                // One line per peer of a listing only on request: thousands at start-up.
                let changes = if self.peers.is_empty() {
                    // Nothing to remove: the leases are taken one by one, so no second copy
                    // of all of them (replace_all's events) is ever held.
                    let mut added = 0;
                    for lease in leases {
                        let e = subnet::LeaseEvent::Added(lease);
                        if self.peers.apply(&e) {
                            tracing::debug!("{}", describe(&e));
                            added += 1;
                        }
                    }
                    added
                } else {
                    let events = self.peers.replace_all(leases);
                    for e in &events {
                        tracing::debug!("{}", describe(e));
                    }
                    events.len()
                };
                tracing::info!(
                    "lease listing: {} peers ({n} leases), {changes} changes",
                    self.peers.len()
                );
                changes > 0
            }
            WatchUpdate::Events(events) => {
                for e in events {
                    let subnet = match &e {
                        subnet::LeaseEvent::Added(l) => l.subnet(),
                        subnet::LeaseEvent::Removed(k) => k.ipv4,
                    };
                    let old = self.peers.get(&subnet).cloned();
                    if self.peers.apply(&e) {
                        tracing::info!("{}", describe(&e));
                        self.changed.entry(subnet).or_insert(old);
                    }
                }
                false
            }
        }
    }

    /// Takes a new version of our own lease; returns whether the data plane must be set up
    /// again (the lease moved to another subnet).
    fn on_lease_change(&mut self, lease: Lease) -> bool {
        let moved = lease.subnet() != self.lease.subnet();
        if moved {
            tracing::warn!(
                "our lease moved from {} to {}: reconfiguring the data plane, rules and subnet.env",
                self.lease.subnet(),
                lease.subnet()
            );
            let leases: Vec<Lease> = self.peers.iter().cloned().collect();
            self.peers = PeerSet::new(lease.subnet());
            self.peers.replace_all(leases);
            if let Some(fw) = self.firewall.as_mut() {
                fw.retarget(self.network, lease.subnet());
            }
            self.env_written = false;
        }
        self.lease = lease;
        moved
    }

    /// Re-runs backend init + configure (device or interface came back, or the lease moved).
    /// Returns whether it succeeded; failures are retried on the next event or tick.
    async fn setup(&mut self) -> bool {
        let result = async {
            let attrs = self.backend.init(&self.nl).await?;
            // Changed attributes (a new VtepMAC) are written at once, so peers follow.
            self.lease_handle.set_attrs(attrs);
            self.backend
                .configure(&self.nl, &self.lease, self.network)
                .await
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!("backend setup done");
                self.ensure_firewall().await;
                true
            }
            Err(e) => {
                tracing::warn!("backend setup failed, will retry: {e}");
                false
            }
        }
    }

    /// Programs the peers in `changed` only, planned against the reconciler's model of the
    /// kernel; falls back to a full reconcile when there is no model or the change did not
    /// apply cleanly.
    async fn reconcile_changes(&mut self) {
        let changed = std::mem::take(&mut self.changed);
        let before = self.backend.desired_for(changed.values().flatten());
        let after = self
            .backend
            .desired_for(changed.keys().filter_map(|s| self.peers.get(s)));
        match self.reconciler.reconcile_changes(&before, &after).await {
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
            _ => self.reconcile().await,
        }
    }

    /// Makes the kernel match the desired state for the current peers.
    async fn reconcile(&mut self) {
        self.changed.clear();
        let desired = self.backend.desired(&self.peers);
        let report = self.reconciler.reconcile(&desired).await;
        if report.writes() > 0 {
            tracing::info!(
                "data plane: {} added, {} replaced, {} deleted for {} peers",
                report.added,
                report.replaced,
                report.deleted,
                self.peers.len()
            );
        }
        self.converged = report.converged;
    }

    /// Runs the firewall check; errors are logged once per distinct message.
    async fn ensure_firewall(&mut self) {
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

    /// Writes subnet.env (atomically); a failure is logged and retried, and keeps us not ready.
    fn write_subnet_env(&mut self) {
        let env = SubnetEnv {
            network: self.network,
            subnet: self.lease.subnet(),
            mtu: self.backend.mtu(),
            ipmasq: self.ip_masq,
        };
        match env.write_atomic(&self.subnet_file) {
            Ok(()) => {
                tracing::info!(
                    "wrote {}: {}",
                    self.subnet_file.display(),
                    env.render().trim_end().replace('\n', " ")
                );
                self.env_written = true;
            }
            Err(e) => {
                if self.env_written || self.last_status.is_none() {
                    tracing::warn!("cannot write {}: {e}", self.subnet_file.display());
                }
            }
        }
    }

    /// Computes readiness and publishes it when it changes.
    fn publish_readiness(&mut self) {
        let lease_valid = manager::is_valid(&self.lease, SystemTime::now());
        let mut problems = BTreeSet::new();
        if !lease_valid {
            problems.insert("the subnet lease is not valid".to_string());
        }
        if !self.converged {
            problems.insert("the data plane has not converged (see the log)".to_string());
        }
        if !self.firewall_ok {
            problems.insert("iptables rules could not be applied".to_string());
        }
        if !self.env_written {
            problems.insert(format!("{} is not written", self.subnet_file.display()));
        }
        let status = if problems.is_empty() {
            Readiness::Ready
        } else {
            Readiness::NotReady(problems.into_iter().collect::<Vec<_>>().join("; "))
        };
        if self.last_status.as_ref() != Some(&status) {
            match &status {
                Readiness::Ready => tracing::info!(
                    "ready: lease {} valid, data plane converged",
                    self.lease.subnet()
                ),
                Readiness::NotReady(why) => tracing::warn!("not ready: {why}"),
            }
            self.ready_tx.send_replace(status.clone());
            self.last_status = Some(status);
        }
    }
}
