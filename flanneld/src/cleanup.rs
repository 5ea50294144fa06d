//! `flanneld cleanup [--release-lease] [agent flags]`: removes everything the agent owns on this
//! host, and nothing else, and says what it removed: the routes and nexthop objects tagged
//! `proto 70` (routes inside the Network of subnet.env, or all of them without one), the
//! `flannel.<VNI>` vxlan devices (their neighbours and FDB entries go with them), the `FLANNEL-POSTRTG` and `FLANNEL-FWD` chains and
//! their jumps in both iptables flavours, subnet.env, and with `--release-lease` this host's lease
//! in etcd. Stop the agent first: a running agent puts everything back. With `--go-leftovers`
//! it removes only Go flanneld's rules left in the built-in chains after an in-place switch
//! ([`netfilter::go_leftovers`]); the agent may keep running. Exit status 0 when everything went,
//! 1 when something could not be removed.

use anyhow::{anyhow, Context, Result};
use backends::{DesiredState, Netlink, Reconciler};
use ipnet::IpNet;
use netfilter::{Flavour, IpFamily, Iptables};
use subnet::{Detector, Keyspace, PreviousEnv, Registry, SubnetKey};

use crate::cli::options::Options;

/// The subcommand's arguments: the agent's own flags, `--release-lease` and `--go-leftovers`.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// also delete this host's lease from etcd (only if its PublicIP is this host's)
    #[arg(long)]
    release_lease: bool,
    /// remove only Go flanneld's rules for the Network and subnet of subnet.env from the built-in chains (left after an in-place switch), nothing of ours
    #[arg(long)]
    go_leftovers: bool,
    #[command(flatten)]
    agent: Options,
}

/// Runs the subcommand with its parsed arguments; returns the exit status.
pub fn run(args: &Args) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flanneld cleanup: cannot start the async runtime: {e}");
            return 2;
        }
    };
    let failures = if args.go_leftovers {
        remove_go_leftovers(&args.agent)
    } else {
        runtime.block_on(cleanup(args))
    };
    i32::from(failures > 0)
}

/// Runs every step, reporting each; returns how many failed.
async fn cleanup(args: &Args) -> usize {
    let opts = &args.agent;
    let previous = PreviousEnv::read(&opts.subnet_file);
    let mut failures = 0;
    let mut report = |step: &str, outcome: Result<Vec<String>>| match outcome {
        Ok(removed) if removed.is_empty() => println!("{step}: nothing of ours"),
        Ok(removed) => removed.iter().for_each(|r| println!("{step}: removed {r}")),
        Err(e) => {
            failures += 1;
            eprintln!("{step}: {e:#}");
        }
    };
    if args.release_lease {
        report("etcd lease", release_lease(opts, &previous).await);
    }
    let nl = Netlink::connect().context("cannot open a netlink socket");
    match nl {
        Ok(nl) => {
            report("routes", remove_routes(&nl, &previous).await);
            report(
                "devices",
                backends::remove_devices(&nl).await.map_err(Into::into),
            );
        }
        Err(e) => report("kernel", Err(e)),
    }
    report(
        "iptables",
        crate::firewall::remove_iptables_rules().map_err(Into::into),
    );
    if netfilter::Nftables::probe().is_ok() {
        report("nftables", netfilter::remove_tables().map_err(Into::into));
    }
    report("subnet.env", remove_file(opts));
    failures
}

/// `--go-leftovers`: removes Go flanneld's rules for subnet.env's Network and subnet, per
/// flavour and family, saying each rule removed; returns how many steps failed.
fn remove_go_leftovers(opts: &Options) -> usize {
    let previous = PreviousEnv::read(&opts.subnet_file);
    let v4 = previous
        .network
        .zip(previous.subnet)
        .map(|(n, s)| (n.into(), s.into()));
    let v6 = (previous.ipv6_network.zip(previous.ipv6_subnet)).map(|(n, s)| (n.into(), s.into()));
    let targets: Vec<(IpFamily, (IpNet, IpNet))> = [(IpFamily::V4, v4), (IpFamily::V6, v6)]
        .into_iter()
        .filter_map(|(family, nets)| Some((family, nets?)))
        .collect();
    if targets.is_empty() {
        eprintln!(
            "go leftovers: {} names no Network and subnet, so which rules were Go flanneld's is unknown (give the agent's --subnet-file)",
            opts.subnet_file.display()
        );
        return 1;
    }
    let mut failures = 0;
    for flavour in [Flavour::Legacy, Flavour::Nft] {
        for (family, (network, subnet)) in &targets {
            let Ok(iptables) = Iptables::probe(flavour, *family) else {
                continue;
            };
            let command = flavour.iptables_command(*family);
            match iptables.remove_go_leftovers(*network, *subnet) {
                Ok(removed) if removed.is_empty() => {
                    println!("{command}: no Go flanneld rule for {network}")
                }
                Ok(removed) => removed
                    .iter()
                    .for_each(|r| println!("{command}: removed {r}")),
                Err(e) => {
                    failures += 1;
                    eprintln!("{command}: {e}");
                }
            }
        }
    }
    failures
}

/// Deletes our tagged routes: those inside the networks of subnet.env (IPv4 and IPv6), or all
/// of them.
async fn remove_routes(nl: &Netlink, previous: &PreviousEnv) -> Result<Vec<String>> {
    let v4 = previous.network.map(IpNet::from);
    let v6 = previous.ipv6_network.map(IpNet::from);
    let nothing = DesiredState {
        networks: v4.into_iter().chain(v6).collect(),
        ..DesiredState::default()
    };
    let mut reconciler = Reconciler::new(nl.clone());
    let preview = reconciler
        .preview(&nothing)
        .await
        .context("cannot read the routes")?;
    let report = reconciler.reconcile(&nothing).await;
    if let Some(e) = report.errors.first() {
        return Err(anyhow!("{}: {}", e.object, e.message));
    }
    Ok(preview.changes.into_iter().map(|c| c.object).collect())
}

fn remove_file(opts: &Options) -> Result<Vec<String>> {
    let path = &opts.subnet_file;
    match std::fs::remove_file(path) {
        Ok(()) => Ok(vec![path.display().to_string()]),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Deletes the lease of subnet.env's subnet, if etcd says this host holds it.
async fn release_lease(opts: &Options, previous: &PreviousEnv) -> Result<Vec<String>> {
    let subnet = previous.subnet.ok_or_else(|| {
        anyhow!(
            "{} names no subnet: which lease is ours is unknown",
            opts.subnet_file.display()
        )
    })?;
    let detector = Detector::connect(&opts.etcd.registry_options()).await?;
    match detector.detect().await? {
        Keyspace::V3(registry) => delete_own(&*registry, SubnetKey::v4(subnet), opts).await,
        Keyspace::V2(registry) => delete_own(&registry, SubnetKey::v4(subnet), opts).await,
    }
}

async fn delete_own<R: Registry>(
    registry: &R,
    key: SubnetKey,
    opts: &Options,
) -> Result<Vec<String>> {
    let Some(stored) = registry.get_lease(key).await? else {
        return Ok(Vec::new());
    };
    let holder = stored.lease.attrs.public_ip;
    if !is_ours(holder, opts).await? {
        return Err(anyhow!(
            "lease {key} is held by {holder}, which is not this host; left in etcd"
        ));
    }
    match registry.delete_lease(key, stored.mod_revision).await? {
        true => Ok(vec![format!("lease {key} (PublicIP {holder})")]),
        false => Err(anyhow!(
            "lease {key} changed while it was being deleted; left in etcd"
        )),
    }
}

/// Whether `ip` is `--public-ip` or an address of this host.
async fn is_ours(ip: std::net::Ipv4Addr, opts: &Options) -> Result<bool> {
    if opts.public_ip == Some(ip) {
        return Ok(true);
    }
    let nl = Netlink::connect()?;
    let view = nl.host_view(None).await?;
    Ok(view.interfaces.iter().any(|i| i.addrs.contains(&ip)))
}
