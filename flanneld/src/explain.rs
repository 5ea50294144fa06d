//! `flanneld explain SRC DST [--json]`: which nat rule decides whether the flow's source address
//! is rewritten, and why, read from the live rules (ours and everyone else's, such as docker's)
//! and the host's routes; then whether that agrees with the egress policy. Exit status 0 when it
//! agrees (or the policy says nothing about the flow), 1 when the live rules disagree, 2 when
//! the question cannot be answered.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backends::Netlink;
use ipnet::Ipv4Net;
use netfilter::{Action, BackendChoice, EgressPolicy, Flow, Iptables, Outcome, Table, Verdict};
use serde_json::json;
use subnet::PreviousEnv;

use crate::cli::values::{self, Unset};

/// The subcommand's arguments.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// the flow's source address (a pod's address for pod traffic)
    src: Ipv4Addr,
    /// the flow's destination address
    dst: Ipv4Addr,
    /// print the answer as JSON
    #[arg(long)]
    json: bool,
    /// the agent's subnet.env, for the cluster Network
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    subnet_file: PathBuf,
    /// the agent's egress policy file, to compare the live rules with
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::path)]
    ip_masq_config: Unset<PathBuf>,
    /// iptables flavour holding the rules: auto, legacy or nft
    #[arg(long, default_value = "auto", value_parser = str::parse::<BackendChoice>)]
    iptables_backend: BackendChoice,
}

/// What the policy expects for the flow, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expectation {
    rewrite: bool,
    why: String,
}

/// Runs the subcommand with its parsed arguments; returns the exit status.
pub fn run(args: &Args) -> i32 {
    match answer(args) {
        Ok((text, agrees)) => {
            print!("{text}");
            i32::from(!agrees)
        }
        Err(e) => {
            eprintln!("flanneld explain: {e:#}");
            2
        }
    }
}

/// The answer as text or JSON, and whether the live rules agree with the policy.
fn answer(args: &Args) -> Result<(String, bool)> {
    let flow = host_flow(args.src, args.dst)?;
    let (iptables, _) = Iptables::detect(args.iptables_backend).context("cannot use iptables")?;
    let saved = iptables.save().context("cannot read the rules")?;
    let nat = saved.table(Table::Nat).cloned().unwrap_or_default();
    let verdict = netfilter::walk(&nat, &flow);
    let network = PreviousEnv::read(&args.subnet_file).network;
    let expected = expectation(&flow, network, args.ip_masq_config.as_deref())?;
    let agrees = expected
        .as_ref()
        .is_none_or(|e| e.rewrite == verdict.outcome.rewrites());
    let text = if args.json {
        format!(
            "{:#}\n",
            as_json(&flow, &verdict, expected.as_ref(), agrees)
        )
    } else {
        as_text(&flow, &verdict, expected.as_ref(), agrees)
    };
    Ok((text, agrees))
}

/// What the host says about the flow: the route's interface and source, and whether the
/// destination is local.
fn host_flow(src: Ipv4Addr, dst: Ipv4Addr) -> Result<Flow> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let view = runtime.block_on(async {
        let nl = Netlink::connect().context("cannot open a netlink socket")?;
        nl.host_view(Some(dst.into()))
            .await
            .context("cannot read this host's interfaces and routes")
    })?;
    let route = view.can_reach;
    let out = route.and_then(|(index, _)| view.interfaces.iter().find(|i| i.index == index));
    let route_src = route.and_then(|(_, src)| match src {
        Some(std::net::IpAddr::V4(src)) => Some(src),
        _ => None,
    });
    Ok(Flow {
        src,
        dst,
        out_iface: out.map(|i| i.name.clone()),
        out_addr: route_src.or_else(|| out.and_then(|i| i.addrs.first().copied())),
        dst_is_local: view.interfaces.iter().any(|i| i.addrs.contains(&dst)),
        mark: 0,
    })
}

/// What the agent's policy wants for the flow; `None` when it has no say (not pod traffic, no
/// subnet.env, multicast, a destination on this host).
fn expectation(
    flow: &Flow,
    network: Option<Ipv4Net>,
    policy_file: Option<&Path>,
) -> Result<Option<Expectation>> {
    let Some(network) = network.filter(|n| n.contains(&flow.src)) else {
        return Ok(None);
    };
    let expect = |rewrite, why: String| Ok(Some(Expectation { rewrite, why }));
    if network.contains(&flow.dst) {
        return expect(
            false,
            format!("pod to pod inside the cluster Network {network}"),
        );
    }
    // Multicast is never masqueraded by us; traffic to this host never reaches POSTROUTING.
    if flow.dst.is_multicast() || flow.dst_is_local {
        return Ok(None);
    }
    let Some(path) = policy_file else {
        return expect(
            true,
            "pod traffic leaving the cluster Network (no --ip-masq-config)".into(),
        );
    };
    let policy = match std::fs::read_to_string(path) {
        Ok(text) => {
            netfilter::parse_policy(&text).with_context(|| format!("invalid {}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => EgressPolicy::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let action = policy.classify(flow.dst);
    let why = format!("{} says {} for {}", path.display(), action, flow.dst);
    expect(action == Action::Masquerade, why)
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Kept => "the source address is kept".into(),
        Outcome::Masqueraded(Some(addr)) => format!("masqueraded to {addr}"),
        Outcome::Masqueraded(None) => "masqueraded to the out interface's address".into(),
        Outcome::Snat(to) => format!("rewritten to {to} (SNAT)"),
    }
}

fn as_text(flow: &Flow, verdict: &Verdict, expected: Option<&Expectation>, agrees: bool) -> String {
    let out = flow.out_iface.as_deref().unwrap_or("unknown");
    let mut text = format!("flow {} -> {} (out {out})\n", flow.src, flow.dst);
    match &verdict.decided_by {
        Some(step) => {
            text += &format!(
                "decided by nat/{} rule {}: {}\n",
                step.chain, step.position, step.rule
            )
        }
        None if flow.dst_is_local => {
            text += "delivered to this host (INPUT): nat POSTROUTING is not traversed\n"
        }
        None => text += "no rule decides: the end of nat/POSTROUTING (policy ACCEPT)\n",
    }
    text += &format!("result: {}\n", outcome_text(&verdict.outcome));
    for step in &verdict.path {
        text += &format!("  path: nat/{} rule {}\n", step.chain, step.position);
    }
    for step in &verdict.uncertain {
        text += &format!(
            "  not evaluated (assumed not to match): nat/{} rule {}: {}\n",
            step.chain, step.position, step.rule
        );
    }
    text += &match (expected, agrees) {
        (None, _) => "policy: no expectation for this flow\n".to_string(),
        (Some(e), true) => format!("policy: {}; the live rules agree\n", e.why),
        (Some(e), false) => format!("policy: {}; THE LIVE RULES DISAGREE\n", e.why),
    };
    text
}

fn as_json(
    flow: &Flow,
    verdict: &Verdict,
    expected: Option<&Expectation>,
    agrees: bool,
) -> serde_json::Value {
    let step =
        |s: &netfilter::Step| json!({"chain": s.chain, "position": s.position, "rule": s.rule});
    let source_after = match &verdict.outcome {
        Outcome::Kept => Some(flow.src.to_string()),
        Outcome::Masqueraded(addr) => addr.map(|a| a.to_string()),
        Outcome::Snat(to) => Some(to.clone()),
    };
    json!({
        "src": flow.src.to_string(),
        "dst": flow.dst.to_string(),
        "out_interface": flow.out_iface,
        "decided_by": verdict.decided_by.as_ref().map(step),
        "rewritten": verdict.outcome.rewrites(),
        "source_after": source_after,
        "result": outcome_text(&verdict.outcome),
        "path": verdict.path.iter().map(step).collect::<Vec<_>>(),
        "uncertain": verdict.uncertain.iter().map(step).collect::<Vec<_>>(),
        "policy": expected.map(|e| json!({"rewrite": e.rewrite, "why": e.why})),
        "agrees": agrees,
    })
}
