//! `flanneld plan [agent flags]`: what the agent would change on this host, without changing
//! anything: the kernel objects (routes, neighbours, FDB entries) in the reconciler's own typed
//! terms, the vxlan device, the iptables rules and subnet.env. Takes the agent's flags (and
//! `FLANNELD_*` variables), so it plans exactly what that agent would do. Exit status 0 when
//! nothing would change, 1 when something would, 2 when the plan cannot be made.

use std::fmt::Write as _;

use anyhow::{anyhow, Context, Result};
use backends::{Backend, Change, ClusterNetworks, Netlink, Reconciler};
use netfilter::{Iptables, RuleSet};
use subnet::{Detector, Keyspace, Lease, Registry, SubnetEnv};

use crate::cli::options::Options;
use crate::daemon;
use crate::egress_watch::PolicySource;
use crate::firewall::rule_config;

/// The subcommand's arguments: the agent's own flags.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Args {
    #[command(flatten)]
    agent: Options,
}

/// Runs the subcommand with its parsed arguments; returns the exit status.
pub fn run(args: &Args) -> i32 {
    let planned = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(plan(&args.agent)));
    match planned {
        Ok((text, changes)) => {
            print!("{text}");
            i32::from(changes > 0)
        }
        Err(e) => {
            eprintln!("flanneld plan: {e:#}");
            2
        }
    }
}

/// The plan as text, and how many changes it holds.
async fn plan(opts: &Options) -> Result<(String, usize)> {
    let etcd = opts.etcd.registry_options();
    let detector = Detector::connect(&etcd)
        .await
        .context("cannot reach etcd")?;
    match detector
        .detect()
        .await
        .context("cannot read the network config")?
    {
        Keyspace::V3(registry) => plan_on(&*registry, opts).await,
        Keyspace::V2(registry) => plan_on(&registry, opts).await,
    }
}

/// A plan being written: its text and the number of changes.
#[derive(Default)]
struct Text {
    text: String,
    changes: usize,
}

impl Text {
    fn section(&mut self, title: &str, lines: Vec<String>) {
        let _ = writeln!(self.text, "{title}:");
        if lines.is_empty() {
            self.text += "  in place\n";
        }
        for line in &lines {
            let _ = writeln!(self.text, "  {line}");
        }
        self.changes += lines.len();
    }
}

/// The host as the agent would see it: the config's Network, our lease, the backend attached to
/// the kernel as it is, and the peers the agent would program.
struct Host {
    /// `Network` (plan reads IPv4 networks).
    network: ipnet::Ipv4Net,
    networks: ClusterNetworks,
    backend_type: String,
    own: Lease,
    backend: Backend,
    desired: backends::DesiredState,
}

async fn plan_on<R: Registry>(registry: &R, opts: &Options) -> Result<(String, usize)> {
    let nl = Netlink::connect().context("cannot open a netlink socket")?;
    let host = read_host(registry, opts, &nl).await?;
    let preview = Reconciler::new(nl.clone()).preview(&host.desired).await?;
    let mut out = Text::default();
    let (own, public_ip) = (host.own.subnet(), host.own.attrs.public_ip);
    let _ = writeln!(
        out.text,
        "plan for lease {own} (PublicIP {public_ip}, {})",
        host.backend_type
    );
    let changes = preview
        .changes
        .iter()
        .map(|c| format!("{} {}", sign(c.change), c.object));
    let conflicts = preview
        .conflicts
        .iter()
        .map(|c| format!("! {}: {}", c.object, c.message));
    out.section(
        "kernel objects (+ add, ~ replace, - delete)",
        changes.chain(conflicts).collect(),
    );
    let drift = host.backend.drift(&nl).await;
    out.section(
        "device and interface",
        drift.iter().map(ToString::to_string).collect(),
    );
    out.section("iptables rules", rule_changes(opts, host.network, own)?);
    let env = crate::control::subnet_env(
        host.networks,
        host.own.key,
        host.backend.mtu(),
        opts.ip_masq,
    );
    out.section(
        &format!("subnet.env ({})", opts.subnet_file.display()),
        env_changes(opts, &env),
    );
    out.text += &match out.changes {
        0 => "in sync: nothing would change\n".to_string(),
        n => format!("{n} changes would be made\n"),
    };
    Ok((out.text, out.changes))
}

/// Reads the config and leases, chooses the interface like the agent, finds our lease (by
/// PublicIP) and attaches the backend to the kernel as it is.
async fn read_host<R: Registry>(registry: &R, opts: &Options, nl: &Netlink) -> Result<Host> {
    let config = registry.network_config().await?;
    let range = config
        .v4()
        .ok_or_else(|| anyhow!("the config has no IPv4 Network"))?;
    let selected = daemon::choose_interface(opts, nl, &config).await?;
    let public_ip = selected.public_ip;
    let leases: Vec<Lease> = (registry.list_leases().await?)
        .into_iter()
        .map(|s| s.lease)
        .collect();
    let own = (leases
        .iter()
        .find(|l| l.attrs.public_ip == public_ip)
        .cloned())
    .ok_or_else(|| {
        anyhow!(
            "no lease in etcd holds PublicIP {public_ip}: the agent has not run on this host yet"
        )
    })?;
    let public_ipv6 = selected.ipv6.map(|(_, public)| public);
    let ext = daemon::external(&selected);
    let mut backend = Backend::new(&config.backend, ext, Some(public_ip), public_ipv6)?
        .with_route_style(opts.route_style);
    let networks = daemon::cluster_networks(&config);
    backend.attach(nl, &own, networks).await?;
    let local = nl
        .connected_networks()
        .await
        .context("cannot read this host's networks")?;
    let policy = daemon::lease_policy(&config, &own, &selected)?.with_local_networks(local);
    let peers = leases
        .iter()
        .filter(|l| l.subnet() != own.subnet() && policy.check(l).is_ok());
    let desired = backend.desired_for(peers);
    Ok(Host {
        network: range.network,
        networks,
        backend_type: config.backend.backend_type.clone(),
        own,
        backend,
        desired,
    })
}

fn sign(change: Change) -> char {
    match change {
        Change::Added => '+',
        Change::Replaced => '~',
        Change::Deleted => '-',
    }
}

/// Why the rules would be rewritten (the reasons of `netfilter::plan`), for the agent's flags.
fn rule_changes(
    opts: &Options,
    network: ipnet::Ipv4Net,
    subnet: ipnet::Ipv4Net,
) -> Result<Vec<String>> {
    if !opts.ip_masq && !opts.iptables_forward_rules {
        return Ok(Vec::new());
    }
    let egress = (opts.ip_masq_config.as_deref())
        .filter(|_| opts.ip_masq)
        .and_then(|path| PolicySource::load(path).rules());
    let options = daemon::firewall_options(opts, egress);
    let (iptables, _) = Iptables::detect(opts.iptables_backend).context("cannot use iptables")?;
    let random_fully = iptables.supports_random_fully() && !opts.ip_masq_fully_random_disable;
    let config = rule_config(&options, random_fully, network.into(), subnet.into());
    let rules = RuleSet::build(&config, None);
    let saved = iptables.save().context("cannot read the rules")?;
    let flavour = iptables.flavour();
    Ok(netfilter::plan(&rules, &saved)
        .reasons
        .iter()
        .map(|r| format!("{flavour}: {r}"))
        .collect())
}

/// How subnet.env differs from what the agent would write.
fn env_changes(opts: &Options, env: &SubnetEnv) -> Vec<String> {
    let want = env.render();
    match std::fs::read_to_string(&opts.subnet_file) {
        Ok(have) if have == want => Vec::new(),
        Ok(have) => {
            let missing = want.lines().filter(|l| !have.lines().any(|h| h == *l));
            missing.map(|l| format!("would write {l}")).collect()
        }
        Err(_) => vec![format!(
            "would create it: {}",
            want.trim_end().replace('\n', " ")
        )],
    }
}
