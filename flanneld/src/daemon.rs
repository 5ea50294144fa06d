//! The agent's lifecycle (reference §9); the control loop it ends in is [`crate::control`].
//!
//! Start-up: health server → etcd → network config (retried every second) → interface →
//! backend init → lease → backend configure → subnet.env once the rules are in place → first
//! reconcile of the peers (listed meanwhile) → ready. The iptables work needs no lease and runs
//! alongside the etcd steps: the detection from the start, the first rule check from the
//! network config on (for the subnet expected, checked again if the lease gives another). The
//! peers are listed after the lease, not during it: at 5000 peers that decoding delayed
//! subnet.env (docs/benchmarks.md, fifth round). Then one task owns all state (DESIGN
//! principle 4) and reacts to peer lease updates, lease changes, kernel notifications and
//! timers; every path ends in the same level-triggered reconcile: peer events apply just the changed peers' objects, everything else
//! (and any change that did not apply cleanly) runs a full one. SIGTERM/SIGINT leave routes,
//! devices, rules, subnet.env and the etcd lease in place (DESIGN principle 5).

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use backends::{Backend, ClusterNetworks, Netlink};
use subnet::{
    Detector, EtcdApi, EtcdOptions, EtcdRegistry, Keyspace, LeaseManager, LeasePolicy, LeaseTiming,
    PreviousEnv, Registry,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::options::Options;
use crate::control::{Agent, Parts};
use crate::egress_watch;
use crate::firewall::first::FirstRules;
use crate::firewall::{Detection, EnsureTask, Firewall, FirewallOptions, Targets};
use crate::healthz::{self, Readiness};
use crate::iface::{self, Selection};
use crate::metrics::{Instrumented, Metrics};
use crate::readiness::{ReadinessWriter, Stage};

/// How often start-up steps that failed for a retryable reason are tried again.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

/// Runs the agent until `shutdown` is cancelled. `Ok` means a clean exit (status 0).
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<()> {
    let previous = PreviousEnv::read(&opts.subnet_file);
    if let Some(s) = previous.subnet {
        let file = opts.subnet_file.display();
        tracing::info!("{file} records subnet {s} from a previous run");
    }
    let metrics = Metrics::new();
    let (mut readiness, ready_rx) = ReadinessWriter::new(opts.subnet_file.clone());
    start_health_server(&opts, ready_rx, &metrics).await?;
    // iptables detection needs no lease: it runs while etcd is asked for config and lease.
    let firewall = start_firewall(&opts);
    let etcd = opts.etcd.registry_options();
    let api = opts.etcd_api;
    let endpoints = etcd.endpoints.join(",");
    tracing::info!(
        "etcd endpoints {endpoints}, prefix {}, API {api}",
        etcd.prefix
    );
    readiness.publish(&Stage::WaitingForConfig);
    let Some(keyspace) = open_keyspace(api, &etcd, &shutdown).await? else {
        return Ok(());
    };
    let start = Start {
        opts,
        previous,
        firewall,
        readiness,
        metrics: Arc::clone(&metrics),
    };
    match keyspace {
        Keyspace::V3(registry) => {
            subnet::spawn_member_check(&etcd);
            serve(Instrumented::new(*registry, metrics), start, shutdown).await
        }
        Keyspace::V2(registry) => {
            serve(Instrumented::new(registry, metrics), start, shutdown).await
        }
    }
}

/// What start-up prepared before the keyspace was known.
struct Start {
    opts: Options,
    previous: PreviousEnv,
    firewall: FirewallStart,
    readiness: ReadinessWriter,
    metrics: Arc<Metrics>,
}

/// Starts the iptables detection and, with `--ip-masq-config`, the egress policy.
fn start_firewall(opts: &Options) -> FirewallStart {
    let (egress, egress_rx) = start_egress_policy(opts);
    let options = firewall_options(opts, egress);
    FirewallStart {
        detection: Detection::start(&options),
        options,
        egress: egress_rx,
    }
}

/// The firewall options of the flags, with the egress policy's rules.
pub(crate) fn firewall_options(opts: &Options, egress: egress_watch::Rules) -> FirewallOptions {
    FirewallOptions {
        backend: opts.iptables_backend,
        ip_masq: opts.ip_masq,
        random_fully_disabled: opts.ip_masq_fully_random_disable,
        forward_rules: opts.iptables_forward_rules,
        egress,
    }
}

/// The firewall's start: the iptables detection under way, the options, and the egress policy
/// file's updates (with `--ip-masq-config`).
struct FirewallStart {
    detection: Detection,
    options: FirewallOptions,
    egress: Option<watch::Receiver<egress_watch::Rules>>,
}

/// `--ip-masq-config`: reads the egress policy and follows the file; nothing without the flag,
/// or without `--ip-masq` (the nat table is not touched then).
fn start_egress_policy(
    opts: &Options,
) -> (
    egress_watch::Rules,
    Option<watch::Receiver<egress_watch::Rules>>,
) {
    let Some(path) = &opts.ip_masq_config else {
        return (None, None);
    };
    if !opts.ip_masq {
        tracing::warn!(
            "--ip-masq-config {} has no effect without --ip-masq: the nat table is left alone",
            path.display()
        );
        return (None, None);
    }
    let source = egress_watch::PolicySource::load(path);
    let rules = source.rules();
    (rules, Some(egress_watch::spawn(source)))
}

/// Serves `/healthz` and `/readyz` on `--healthz-ip:--healthz-port` (not at all with port 0).
async fn start_health_server(
    opts: &Options,
    ready_rx: watch::Receiver<Readiness>,
    metrics: &Arc<Metrics>,
) -> Result<()> {
    if opts.healthz_port == 0 {
        return Ok(());
    }
    let addr = SocketAddr::new(opts.healthz_ip, opts.healthz_port);
    let listener = healthz::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--healthz-ip/--healthz-port)"))?;
    tracing::info!("health server on http://{addr}/healthz, /readyz and /metrics");
    tokio::spawn(healthz::serve(listener, ready_rx, Arc::clone(metrics)));
    Ok(())
}

/// The etcd keyspace to run on: `--etcd-api=v3|v2`, or (auto) the one holding the config, waited
/// for like a missing config. `None` when `shutdown` fires first.
async fn open_keyspace(
    api: EtcdApi,
    etcd: &EtcdOptions,
    shutdown: &CancellationToken,
) -> Result<Option<Keyspace>> {
    Ok(Some(match api {
        EtcdApi::V3 => Keyspace::V3(Box::new(EtcdRegistry::connect(etcd).await.context("etcd")?)),
        EtcdApi::V2 => Keyspace::V2(subnet::EtcdV2Registry::connect(etcd).context("etcd")?),
        EtcdApi::Auto => {
            let detector = Detector::connect(etcd).await.context("etcd")?;
            let fatal = |e: &subnet::RegistryError| !e.is_retryable();
            let found = retry(shutdown, "Couldn't fetch network config", fatal, || {
                detector.detect()
            });
            let Some(keyspace) = found.await? else {
                return Ok(None);
            };
            keyspace
        }
    }))
}

/// The agent on the keyspace chosen, step by step: a usable config, the interface, the backend
/// (vxlan device), the lease, the data plane and rules; then [`run_agent`].
async fn serve<R: Registry>(registry: R, start: Start, shutdown: CancellationToken) -> Result<()> {
    let Start {
        opts,
        previous,
        firewall,
        mut readiness,
        metrics,
    } = start;
    let Some(config) = wait_for_config(&registry, &shutdown).await? else {
        return Ok(());
    };
    let networks = cluster_networks(&config);
    let FirewallStart {
        detection,
        options: fw_options,
        egress,
    } = firewall;
    // The rules are checked while the interface is chosen and the lease acquired.
    let nftables = config.enable_nftables;
    let rules = (fw_options, detection);
    let first_rules = FirstRules::start(rules, (networks, nftables), previous, &metrics);
    let nl = Netlink::connect().context("cannot open a netlink socket")?;
    let selected = choose_interface(&opts, &nl, &config).await?;
    let (mut backend, attrs) = init_backend(&opts, &config, &nl, &selected).await?;
    readiness.publish(&Stage::AcquiringLease);
    let Some(manager) =
        acquire_lease(&registry, &config, attrs, previous.key(), &opts, &shutdown).await?
    else {
        return Ok(());
    };
    let lease = manager.lease();
    let (firewall, first_check) = configure_data_plane(
        &mut backend,
        &nl,
        (&lease, networks),
        (first_rules, previous, &metrics),
    )
    .await?;
    let policy = lease_policy(&config, &lease, &selected)?;
    let agent = Agent::new(Parts {
        policy,
        networks,
        lease,
        lease_handle: manager.handle(),
        lease_counters: manager.counters(),
        etcd_contact: manager.contact(),
        backend,
        nl,
        firewall,
        egress,
        subnet_file: opts.subnet_file.clone(),
        ip_masq: opts.ip_masq,
        iptables_resync: opts.iptables_resync,
        blackhole_route: opts.ip_blackhole_route,
        readiness,
        metrics,
        config: crate::config_watch::spawn(registry.clone(), config.clone()),
    });
    run_agent(agent, manager, &registry, first_check, &shutdown).await
}

/// The backend for the chosen interface, set up before the lease (vxlan: the device); returns
/// it with the lease attributes to publish.
async fn init_backend(
    opts: &Options,
    config: &subnet::NetworkConfig,
    nl: &Netlink,
    selected: &iface::SelectedInterface,
) -> Result<(Backend, subnet::LeaseAttrs)> {
    let public_ip = config.ipv4.map(|_| selected.public_ip);
    let public_ipv6 = selected.ipv6.map(|(_, public)| public);
    let mut backend = Backend::new(&config.backend, external(selected), public_ip, public_ipv6)?
        .with_route_style(opts.route_style);
    let attrs = backend.init(nl).await?;
    Ok((backend, attrs))
}

/// Step 6: keeps the lease in a task, programs the first listing ([`Agent::first_sync`]) and runs the
/// control loop until `shutdown`.
async fn run_agent<R: Registry>(
    mut agent: Agent,
    manager: LeaseManager<R>,
    registry: &R,
    first_check: Option<EnsureTask>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let lease_rx = manager.subscribe();
    let manager_task = tokio::spawn(manager.run());
    let Some((peer_watch, notifications)) =
        agent.first_sync(registry, first_check, shutdown).await?
    else {
        manager_task.abort();
        return Ok(());
    };
    let result =
        (agent.control_loop(registry, peer_watch, lease_rx, notifications, shutdown)).await;
    manager_task.abort();
    tracing::info!("Exiting cleanly... (routes, devices, rules, subnet.env and the etcd lease are left in place)");
    result
}

/// Step 1: waits for a network config that is valid including its `Backend` section; logs it and
/// what of it is not implemented. `None` when `shutdown` fires first.
async fn wait_for_config<R: Registry>(
    registry: &R,
    shutdown: &CancellationToken,
) -> Result<Option<subnet::NetworkConfig>> {
    let found = retry(
        shutdown,
        "Couldn't fetch network config",
        ConfigProblem::is_fatal,
        || usable_config(registry),
    )
    .await?;
    let Some(config) = found else {
        return Ok(None);
    };
    tracing::info!("network config: backend {:?}", config.backend.backend_type);
    if let Some(range) = &config.ipv4 {
        tracing::info!(
            "network config: Network {}, SubnetLen {}, SubnetMin {}, SubnetMax {}",
            range.network,
            range.subnet_len,
            range.subnet_min,
            range.subnet_max,
        );
    }
    if let Some(v6) = &config.ipv6 {
        tracing::info!(
            "network config: IPv6Network {}, IPv6SubnetLen {}, IPv6SubnetMin {}, IPv6SubnetMax {}",
            v6.network,
            v6.subnet_len,
            v6.subnet_min,
            v6.subnet_max
        );
    }
    Ok(Some(config))
}

/// Step 2: chooses the external interface and public IP (`--iface`, `--iface-regex`,
/// `--iface-can-reach`, `--public-ip`) for the config's address families and logs why.
pub(crate) async fn choose_interface(
    opts: &Options,
    nl: &Netlink,
    config: &subnet::NetworkConfig,
) -> Result<iface::SelectedInterface> {
    let read = "cannot read this host's interfaces, addresses and routes";
    let mut host = nl.host_view(opts.iface_can_reach).await.context(read)?;
    if config.ipv4.is_none() {
        host.default_route6_index = nl.default_route6_index().await.context(read)?;
    }
    let selection = Selection {
        iface: &opts.iface,
        iface_regex: &opts.iface_regex,
        can_reach: opts.iface_can_reach,
        public_ip: opts.public_ip,
        ipv6_only: config.ipv4.is_none(),
    };
    let mut selected = iface::select(&host, &selection)?;
    if config.ipv6.is_some() {
        selected.ipv6 = Some(iface::ipv6_side(&selected, opts.public_ipv6)?);
    }
    let (addr, public) = match (config.ipv4, selected.ipv6) {
        (None, Some((addr6, public6))) => {
            let addr6 = addr6.map_or("none".to_string(), |a| a.to_string());
            (addr6, format!("public IPv6 {public6}"))
        }
        _ => (
            selected.iface_addr.to_string(),
            format!("public IP {}", selected.public_ip),
        ),
    };
    tracing::info!(
        decision = "interface",
        iface = %selected.iface.name,
        public_ip = %selected.public_ip,
        reason = %selected.reason,
        "using interface {} (index {}, MTU {}) address {addr}, {public}: {}",
        selected.iface.name,
        selected.iface.index,
        selected.iface.mtu,
        selected.reason
    );
    Ok(selected)
}

/// The cluster networks of the config.
pub(crate) fn cluster_networks(config: &subnet::NetworkConfig) -> ClusterNetworks {
    ClusterNetworks {
        v4: config.ipv4.map(|r| r.network),
        v6: config.ipv6.map(|r| r.network),
    }
}

/// The policy peer leases are checked against: the config's ranges, our lease and public
/// addresses, per family.
pub(crate) fn lease_policy(
    config: &subnet::NetworkConfig,
    lease: &subnet::Lease,
    selected: &iface::SelectedInterface,
) -> Result<LeasePolicy> {
    let v6 = config.ipv6.zip(lease.key.ipv6).zip(selected.ipv6);
    let v6 = v6.map(|((range, own), (_, public))| {
        subnet::FamilyPolicy::new(range.network, range.subnet_len, own, public)
    });
    Ok(match (config.v4(), v6) {
        (Some(range), v6) => {
            let own = (range.network, range.subnet_len, lease.subnet());
            let policy = LeasePolicy::new(own.0, own.1, own.2, selected.public_ip);
            match v6 {
                Some(v6) => policy.with_ipv6(v6),
                None => policy,
            }
        }
        (None, Some(v6)) => LeasePolicy::ipv6_only(v6),
        (None, None) => anyhow::bail!("the lease {} has no subnet of the network", lease.key),
    })
}

/// The backend's view of the chosen interface.
pub(crate) fn external(selected: &iface::SelectedInterface) -> backends::ExternalInterface {
    backends::ExternalInterface {
        name: selected.iface.name.clone(),
        index: selected.iface.index,
        addr: Some(selected.iface_addr).filter(|a| !a.is_unspecified()),
        addr6: selected.ipv6.and_then(|(iface_addr6, _)| iface_addr6),
        mtu: selected.iface.mtu,
    }
}

/// Step 3: acquires the lease (retried; the manager logs which subnet and why). `None` when
/// `shutdown` fires first.
async fn acquire_lease<R: Registry>(
    registry: &R,
    config: &subnet::NetworkConfig,
    attrs: subnet::LeaseAttrs,
    previous: Option<subnet::SubnetKey>,
    opts: &Options,
    shutdown: &CancellationToken,
) -> Result<Option<LeaseManager<R>>> {
    let timing = LeaseTiming::with_renew_margin(opts.subnet_lease_renew_margin);
    let acquired = retry(
        shutdown,
        "Couldn't acquire a subnet lease",
        |e: &subnet::AcquireError| !e.is_retryable(),
        || LeaseManager::start(registry.clone(), config, attrs.clone(), previous, timing),
    )
    .await?;
    if let Some(manager) = &acquired {
        let lease = manager.lease();
        tracing::info!(
            subnet = %lease.subnet(),
            "lease acquired: {} (PublicIP {})",
            lease.subnet(),
            lease.attrs.public_ip
        );
    }
    Ok(acquired)
}

/// Step 4: the data plane for our lease (the vxlan device's address, up) and the iptables rules
/// for it; the first rule check (started before the lease when its rules could be known then)
/// runs on while the peers are listed and programmed.
async fn configure_data_plane(
    backend: &mut Backend,
    nl: &Netlink,
    (lease, networks): (&subnet::Lease, ClusterNetworks),
    (first_rules, previous, metrics): (FirstRules, PreviousEnv, &Arc<Metrics>),
) -> Result<(Option<Firewall>, Option<EnsureTask>)> {
    backend.configure(nl, lease, networks).await?;
    let targets = Targets::of(networks, lease.key);
    first_rules.finish(targets, previous, metrics).await
}

/// Why the network config cannot be used yet; all but a fatal registry error are waited on
/// (retried, one log line per distinct problem), so a bad config never makes supervisor loop.
#[derive(Debug, thiserror::Error)]
enum ConfigProblem {
    #[error(transparent)]
    Registry(#[from] subnet::RegistryError),
    #[error("invalid Backend section: {0}")]
    Backend(#[from] backends::Error),
}

impl ConfigProblem {
    fn is_fatal(&self) -> bool {
        matches!(self, ConfigProblem::Registry(e) if !e.is_retryable())
    }
}

/// The network config, once it is valid including its `Backend` section.
async fn usable_config<R: Registry>(registry: &R) -> Result<subnet::NetworkConfig, ConfigProblem> {
    let config = registry.network_config().await?;
    backends::check_config(&config.backend)?;
    Ok(config)
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
