//! `flanneld doctor [--json] [agent flags]`: checks this host (kernel settings, interfaces,
//! iptables of both flavours, subnet.env) and etcd (leases against routes, subnet.env against the
//! lease, clock skew) and prints each finding with its fix. It takes every agent flag (and the
//! `FLANNELD_*` variables); given none, it reads them from the agent running here
//! ([`crate::running_agent`]). Exit status 0 when nothing is a problem, 1 otherwise, 2 when the
//! checks could not run.

mod checks;

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result};
use backends::Netlink;
use ipnet::Ipv4Net;
use netfilter::{Flavour, Saved};
use serde_json::json;
use subnet::{Detector, EtcdOptions, EtcdV2Registry, Keyspace, Registry, SubnetEnv};

use checks::{diagnose, EtcdFacts, Facts, Finding, LinkFacts, Severity};

use crate::cli::options::Options;

/// The subcommand's arguments: its own, and every agent flag (`--subnet-file` and the `--etcd-*`
/// flags are used, the rest accepted so the agent's own command line can be given).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// print the findings as JSON
    #[arg(long)]
    json: bool,
    /// skip the checks that need etcd
    #[arg(long)]
    no_etcd: bool,
    /// with no agent flags given, do not read them from the agent running here
    #[arg(long)]
    no_agent: bool,
    #[command(flatten)]
    agent: Options,
}

/// The flags of the doctor itself, which do not count as agent flags.
pub(crate) const OWN_FLAGS: [&str; 3] = ["json", "no-etcd", "no-agent"];

impl Args {
    /// Whether, given no agent flags, the flags of the agent running here may be used.
    pub(crate) fn may_adopt_running_agent(&self) -> bool {
        !self.no_agent
    }

    /// The doctor's own flags as command-line arguments, to add to an adopted command line.
    pub(crate) fn own_flags(&self) -> [String; 2] {
        [
            format!("--json={}", self.json),
            format!("--no-etcd={}", self.no_etcd),
        ]
    }
}

/// Runs the checks with the parsed arguments (see `crate::doctor_flags` for the flags of the
/// running agent); returns the exit status.
pub fn run(args: &Args) -> i32 {
    match gather(args) {
        Ok(facts) => {
            let findings = diagnose(&facts);
            print!("{}", render(&findings, args.json));
            i32::from(findings.iter().any(|f| f.severity == Severity::Problem))
        }
        Err(e) => {
            eprintln!("flanneld doctor: {e:#}");
            2
        }
    }
}

/// Reads everything the checks look at.
fn gather(args: &Args) -> Result<Facts> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let env = SubnetEnv::read(&args.agent.subnet_file);
    let (links, routes) = runtime.block_on(host_links_and_routes())?;
    let etcd = match (args.no_etcd, &env) {
        (false, Some(_)) => Some(runtime.block_on(etcd_facts(&args.agent.etcd.registry_options()))),
        _ => None,
    };
    Ok(Facts {
        ip_forward: sysctl("net/ipv4/ip_forward").map(|v| v == 1),
        bridge_nf_call_iptables: sysctl("net/bridge/bridge-nf-call-iptables").map(|v| v == 1),
        links,
        routes,
        env,
        iptables: [Flavour::Legacy, Flavour::Nft]
            .into_iter()
            .filter_map(iptables_rules)
            .collect(),
        etcd,
    })
}

fn sysctl(path: &str) -> Option<u8> {
    let text = std::fs::read_to_string(Path::new("/proc/sys").join(path)).ok()?;
    text.trim().parse().ok()
}

/// The interfaces (with rp_filter and, for vxlan devices, the checksum offload) and routes.
async fn host_links_and_routes() -> Result<(Vec<LinkFacts>, Vec<(Ipv4Net, bool)>)> {
    let nl = Netlink::connect().context("cannot open a netlink socket")?;
    let view = nl
        .host_view(None)
        .await
        .context("cannot read the interfaces")?;
    let routes = nl.host_routes().await.context("cannot read the routes")?;
    let all = sysctl("net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let name_of = |index: u32| {
        (view.interfaces.iter())
            .find(|i| i.index == index)
            .map(|i| i.name.clone())
    };
    let masters: Vec<Option<String>> = (view.interfaces.iter())
        .map(|i| i.master.and_then(name_of))
        .collect();
    let links = view
        .interfaces
        .into_iter()
        .zip(masters)
        .filter(|(i, _)| i.name != "lo")
        .map(|(i, master)| LinkFacts {
            rp_filter: sysctl(&format!("net/ipv4/conf/{}/rp_filter", i.name))
                .map(|own| own.max(all)),
            tx_checksum: i
                .name
                .starts_with("flannel.")
                .then(|| tx_checksum(&i.name))
                .flatten(),
            name: i.name,
            mtu: i.mtu,
            addrs: i.addrs,
            master,
        })
        .collect();
    Ok((links, routes.iter().map(|r| (r.dst, r.ours)).collect()))
}

/// Whether `ethtool -k <device>` says tx-checksum-ip-generic is on; `None` without ethtool.
fn tx_checksum(device: &str) -> Option<bool> {
    let out = Command::new("ethtool").args(["-k", device]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("tx-checksum-ip-generic:"))?;
    Some(line.contains(": on"))
}

/// The rules of one iptables flavour; `None` when its binaries do not work here.
fn iptables_rules(flavour: Flavour) -> Option<(Flavour, Saved)> {
    let out = Command::new(flavour.save_command(netfilter::IpFamily::V4))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Saved::parse(&String::from_utf8_lossy(&out.stdout))
        .ok()
        .map(|s| (flavour, s))
}

/// The network config, the leases and the clock skew, from whichever keyspace holds the config.
async fn etcd_facts(options: &EtcdOptions) -> Result<EtcdFacts, String> {
    let detector = Detector::connect(options)
        .await
        .map_err(|e| e.to_string())?;
    let keyspace = detector.detect().await.map_err(|e| e.to_string())?;
    let (config, leases) = match &keyspace {
        Keyspace::V3(r) => (r.network_config().await, r.list_leases().await),
        Keyspace::V2(r) => (r.network_config().await, r.list_leases().await),
    };
    let config = config.map_err(|e| e.to_string())?;
    let network = config
        .v4()
        .map(|r| r.network)
        .ok_or("the config has no IPv4 Network")?;
    let leases = leases.map_err(|e| e.to_string())?;
    Ok(EtcdFacts {
        network,
        leases: leases.iter().map(|l| l.lease.subnet()).collect(),
        skew: clock_skew(options).await,
    })
}

/// etcd's clock against ours, from the `Date` of its answer to `GET /version` (1 s resolution).
async fn clock_skew(options: &EtcdOptions) -> Option<(bool, std::time::Duration)> {
    let client = EtcdV2Registry::connect(options).ok()?;
    let before = SystemTime::now();
    let theirs = client.server_time().await.ok()??;
    let ours = before + before.elapsed().ok()? / 2;
    match theirs.duration_since(ours) {
        Ok(ahead) => Some((true, ahead)),
        Err(behind) => Some((false, behind.duration())),
    }
}

fn render(findings: &[Finding], as_json: bool) -> String {
    let link = |id: &str| format!("docs/troubleshooting.md#{id}");
    if as_json {
        let items: Vec<_> = findings
            .iter()
            .map(|f| json!({"id": f.id, "severity": format!("{:?}", f.severity).to_lowercase(), "summary": f.summary, "fix": f.fix, "doc": link(f.id)}))
            .collect();
        let healthy = !findings.iter().any(|f| f.severity == Severity::Problem);
        return format!("{:#}\n", json!({"healthy": healthy, "findings": items}));
    }
    if findings.is_empty() {
        return "healthy: no findings\n".into();
    }
    let mut text = String::new();
    for f in findings {
        let tag = match f.severity {
            Severity::Problem => "PROBLEM",
            Severity::Note => "note",
        };
        text += &format!(
            "[{tag}] {}: {}\n    fix: {}\n    see: {}\n",
            f.id,
            f.summary,
            f.fix,
            link(f.id)
        );
    }
    text
}
