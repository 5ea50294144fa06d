//! flanneld-rs: a drop-in Rust reimplementation of the flanneld agent (etcd mode).
//!
//! `flanneld [flags]` runs the agent; `flanneld mk-docker-opts [options]` writes docker options
//! from subnet.env like flannel's mk-docker-opts.sh; `flanneld migrate-etcd --from v2 --to v3`
//! copies a flanneld v0.11 network from the etcd v2 keyspace to v3; `flanneld explain SRC DST`
//! says which nat rule decides a flow's source address.

mod build_info;
mod cleanup;
mod cli;
mod config_watch;
mod control;
mod daemon;
mod decide;
mod doctor;
mod doctor_flags;
mod egress_watch;
mod explain;
mod firewall;
mod footprint;
mod healthz;
mod iface;
mod metrics;
mod migrate;
mod mk_docker_opts;
mod peers;
mod plan;
mod readiness;
mod running_agent;
mod sdnotify;

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args, std::env::vars()) {
        Ok(cli::Invocation::Agent(opts)) => *opts,
        Ok(cli::Invocation::Tool(tool, warnings)) => {
            return exit_code(run_tool(tool, &warnings, &args[1..]));
        }
        Err(rejected) => return reject(args.first().map(String::as_str), &rejected),
    };
    if opts.version {
        eprintln!("{}", build_info::VERSION);
        return ExitCode::SUCCESS;
    }
    init_logging(opts.v, opts.log_format);
    tracing::info!("{} starting", build_info::describe());
    for w in &opts.warnings {
        tracing::warn!("{w}");
    }
    if opts.kube.kube_subnet_mgr {
        tracing::error!("--kube-subnet-mgr is not supported: flanneld-rs runs in etcd mode only");
        return ExitCode::FAILURE;
    }
    run_agent(opts)
}

/// Runs one tool with its parsed arguments (`given`: the arguments after its name); returns its
/// exit status.
fn run_tool(tool: cli::Tool, warnings: &[String], given: &[String]) -> i32 {
    use cli::Tool;
    match tool {
        Tool::MkDockerOpts(args) => mk_docker_opts::run(*args),
        Tool::MigrateEtcd(args) => migrate::run(&args, warnings),
        Tool::Explain(args) => explain::run(&args),
        Tool::Doctor(args) => match doctor_flags::resolve(given, args) {
            Ok(args) => doctor::run(&args),
            Err(status) => status,
        },
        Tool::Plan(args) => plan::run(&args),
        Tool::Cleanup(args) => cleanup::run(&args),
    }
}

/// Answers a command line that did not parse, or asked for help: the usage of the agent or of
/// the tool named first, on stderr. Exit 0 for help and 2 for an error, except `mk-docker-opts`,
/// which exits 1 either way with the script's words.
fn reject(first: Option<&str>, rejected: &cli::CliError) -> ExitCode {
    let tool = first.filter(|name| cli::subcommand_names().iter().any(|t| t == name));
    let Some(tool) = tool else {
        if *rejected == cli::CliError::Help {
            eprint!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        eprintln!("flanneld: {rejected}\nRun `flanneld -h` for the list of flags.");
        return ExitCode::from(2);
    };
    let usage = cli::subcommand_usage(tool);
    if tool == "mk-docker-opts" {
        if let Some(complaint) = mk_docker_opts::complaint(rejected) {
            eprintln!("flanneld mk-docker-opts: {complaint}");
        }
        eprint!("{usage}");
        return ExitCode::from(1);
    }
    if *rejected == cli::CliError::Help {
        eprint!("{usage}");
        return ExitCode::SUCCESS;
    }
    eprintln!("flanneld {tool}: {rejected}\n\n{usage}");
    ExitCode::from(2)
}

/// Runs the agent on a single-threaded runtime until SIGTERM/SIGINT.
fn run_agent(opts: cli::options::Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        match daemon::run(opts, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `-v N` maps to levels like Go flanneld's glog verbosity: 0-1 info, 2-4 debug, 5+ trace;
/// `RUST_LOG` (`level` and `target=level` items, comma-separated) overrides. Logs go to stderr,
/// as text or (`--log-format=json`) one JSON object per line with each event's fields.
fn init_logging(v: i32, format: cli::values::LogFormat) {
    let filter = log_filter(v, std::env::var("RUST_LOG").ok().as_deref());
    // The filter is a layer of its own: the subscriber's level hint is then the filter's, and
    // the `log` records of dependencies (netlink-proto logs every message at debug and trace)
    // are dropped at the call site instead of being formatted and matched.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        cli::values::LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
        cli::values::LogFormat::Text => registry
            .with(fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init(),
    }
}

/// Which events are logged: `rust_log` when it parses, else the agent's crates at the level of
/// `-v` and everything else at warn.
fn log_filter(v: i32, rust_log: Option<&str>) -> Targets {
    if let Some(filter) = rust_log.and_then(|spec| spec.parse().ok()) {
        return filter;
    }
    let level = match v {
        i32::MIN..=1 => Level::INFO,
        2..=4 => Level::DEBUG,
        _ => Level::TRACE,
    };
    ["flanneld", "subnet", "backends", "netfilter"]
        .into_iter()
        .fold(Targets::new().with_default(Level::WARN), |t, krate| {
            t.with_target(krate, level)
        })
}

/// First SIGTERM, SIGINT or SIGQUIT (which Go flanneld's supervisor programs use): clean
/// shutdown. A second one: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    ) else {
        tracing::warn!(
            "cannot install signal handlers; SIGTERM will kill the agent without cleanup"
        );
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = quit.recv() => "SIGQUIT",
    };
    tracing::info!("received {name}, shutting down");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = quit.recv() => {}
    }
    tracing::warn!("second signal: exiting immediately");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_level_hint_is_the_filters_so_debug_logs_of_dependencies_cost_nothing() {
        init_logging(0, cli::values::LogFormat::Text);
        // A subscriber whose hint were TRACE would make every `log::debug!` of netlink-proto
        // reach the filter (a tenth of an idle agent's CPU).
        assert_eq!(
            tracing::level_filters::LevelFilter::current(),
            tracing::level_filters::LevelFilter::INFO
        );
    }

    #[test]
    fn v_maps_to_the_level_of_the_agents_crates_and_rust_log_overrides() {
        let info = log_filter(0, None);
        assert!(info.would_enable("flanneld::control", &Level::INFO));
        assert!(!info.would_enable("flanneld::control", &Level::DEBUG));
        assert!(!info.would_enable("h2::proto", &Level::INFO));
        assert!(info.would_enable("h2::proto", &Level::WARN));
        let debug = log_filter(2, None);
        assert!(debug.would_enable("subnet::manager", &Level::DEBUG));
        assert!(!debug.would_enable("subnet::manager", &Level::TRACE));
        assert!(log_filter(5, None).would_enable("backends", &Level::TRACE));
        let custom = log_filter(0, Some("error,netfilter=trace"));
        assert!(custom.would_enable("netfilter::plan", &Level::TRACE));
        assert!(!custom.would_enable("flanneld", &Level::WARN));
        // A RUST_LOG that does not parse is ignored.
        let bad = log_filter(2, Some("flanneld=loud"));
        assert!(bad.would_enable("flanneld", &Level::DEBUG));
    }
}
