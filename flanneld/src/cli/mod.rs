//! The command line: one typed [`Options`] for the agent and one clap subcommand per tool, all
//! defined once with clap (so `--help` comes from the same definitions) and parsed with Go `flag`
//! semantics so flanneld unit files work unchanged.
//!
//! `-name` and `--name` are equivalent; values come as `-name=v` or `-name v` (booleans only as
//! `-name` or `-name=false`, in Go's spellings); `iface` and `iface-regex` may repeat, other flags
//! keep their last value. Flags not given on the command line are filled from `FLANNELD_<NAME>`
//! environment variables (upper case, `-` ⇒ `_`); empty values are ignored and invalid ones are
//! reported as warnings, as Go flanneld does. [`goflag`] holds the Go-compatibility layer.

mod goflag;
pub(crate) mod values;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use netfilter::BackendChoice;
use subnet::{EtcdApi, EtcdOptions};

pub use values::{go_bool, EtcdEndpoints, IfaceRegex, IfaceSpec, Unset};

/// Why the command line was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// `-h`/`--help` was given.
    #[error("help requested")]
    Help,
    /// An unknown flag.
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    /// A non-boolean flag without a value.
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    /// A value that does not parse for its flag.
    #[error("invalid value {value:?} for flag -{flag}: {expected}")]
    BadValue {
        /// The flag.
        flag: String,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// A stray positional argument.
    #[error("unexpected argument {0:?} (flags take values as -flag=value)")]
    Positional(String),
    /// Anything else clap rejects (its own message).
    #[error("{0}")]
    Other(String),
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Run the agent.
    Agent(Box<Options>),
    /// `flanneld mk-docker-opts ...`.
    MkDockerOpts(crate::mk_docker_opts::Args),
    /// `flanneld migrate-etcd ...`, with warnings about ignored environment variables.
    MigrateEtcd(crate::migrate::Args, Vec<String>),
    /// `flanneld explain SRC DST ...`.
    Explain(Box<crate::explain::Args>),
    /// `flanneld doctor ...`.
    Doctor(Box<crate::doctor::Args>),
    /// `flanneld plan ...`.
    Plan(Box<crate::plan::Args>),
    /// `flanneld cleanup ...`.
    Cleanup(Box<crate::cleanup::Args>),
}

/// The command line as clap sees it: the agent's flags, or a subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "flanneld",
    about = "flanneld-rs: a drop-in Rust reimplementation of the flanneld agent (etcd mode)",
    disable_help_flag = true,
    disable_version_flag = true,
    disable_help_subcommand = true,
    args_override_self = true,
    after_help = "Flags take one dash or two. Every agent flag can also be set as \
                  FLANNELD_<FLAG> (upper case, - as _); the command line wins."
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes docker options from subnet.env, like flannel's mk-docker-opts.sh.
    #[command(disable_help_flag = true)]
    MkDockerOpts(crate::mk_docker_opts::Args),
    /// Copies a flanneld v0.11 network from the etcd v2 keyspace to v3.
    #[command(disable_help_flag = true, args_override_self = true)]
    MigrateEtcd(crate::migrate::Args),
    /// Says which nat rule decides whether a flow's source address is rewritten, and whether
    /// that agrees with the egress policy.
    #[command(disable_help_flag = true, args_override_self = true)]
    Explain(crate::explain::Args),
    /// Checks this host and etcd for what breaks pod traffic, and says how to fix it.
    #[command(disable_help_flag = true, args_override_self = true)]
    Doctor(crate::doctor::Args),
    /// Prints what the agent (with these flags) would change on this host, changing nothing.
    #[command(disable_help_flag = true, args_override_self = true)]
    Plan(crate::plan::Args),
    /// Removes everything the agent owns on this host (routes, device, rules, subnet.env, and
    /// with --release-lease its lease), and nothing else.
    #[command(disable_help_flag = true, args_override_self = true)]
    Cleanup(crate::cleanup::Args),
}

/// How to reach etcd (shared by the agent and `migrate-etcd`).
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct EtcdFlags {
    /// a comma-delimited list of etcd endpoints
    #[arg(long, default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379", value_parser = str::parse::<EtcdEndpoints>)]
    pub etcd_endpoints: EtcdEndpoints,
    /// etcd prefix
    #[arg(long, default_value = "/coreos.com/network")]
    pub etcd_prefix: String,
    /// SSL key file used to secure etcd communication
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::path)]
    pub etcd_keyfile: Unset<PathBuf>,
    /// SSL certification file used to secure etcd communication
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::path)]
    pub etcd_certfile: Unset<PathBuf>,
    /// SSL Certificate Authority file used to secure etcd communication
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::path)]
    pub etcd_cafile: Unset<PathBuf>,
    /// username for BasicAuth to etcd
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::text)]
    pub etcd_username: Unset<String>,
    /// password for BasicAuth to etcd
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::text)]
    pub etcd_password: Unset<String>,
}

impl EtcdFlags {
    /// The registry options for these flags.
    pub fn registry_options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.etcd_endpoints.to_strings(),
            prefix: self.etcd_prefix.clone(),
            keyfile: self.etcd_keyfile.clone(),
            certfile: self.etcd_certfile.clone(),
            cafile: self.etcd_cafile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
            ..EtcdOptions::default()
        }
    }
}

/// The agent's options, typed and validated once. Field docs are the `--help` text (Go
/// flanneld's wording); flags Go has but this agent does not implement are accepted and warned
/// about ([`UNSUPPORTED`]).
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct Options {
    #[command(flatten)]
    pub etcd: EtcdFlags,
    /// etcd keyspace holding the network: auto (the one holding <prefix>/config, v3 first), v3, or v2 (flanneld v0.11 clusters; etcd needs --enable-v2) (flanneld-rs only)
    #[arg(long, default_value = "auto", value_parser = str::parse::<EtcdApi>)]
    pub etcd_api: EtcdApi,
    /// interface to use (IP or name) for inter-host communication; may be repeated
    #[arg(long, action = ArgAction::Append, value_parser = str::parse::<IfaceSpec>)]
    pub iface: Vec<IfaceSpec>,
    /// regex expression to match the first interface to use (IP or name); may be repeated
    #[arg(long, action = ArgAction::Append, value_parser = str::parse::<IfaceRegex>)]
    pub iface_regex: Vec<IfaceRegex>,
    /// detect the interface and address used to reach this IP
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::ip)]
    pub iface_can_reach: Unset<IpAddr>,
    /// filename where env variables (subnet, MTU, ...) will be written to
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// IP accessible by other nodes for inter-host communication
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::ipv4)]
    pub public_ip: Unset<Ipv4Addr>,
    /// IPv6 accessible by other nodes for inter-host communication
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::ipv6)]
    pub public_ipv6: Unset<Ipv6Addr>,
    /// subnet lease renewal margin, in minutes, ranging from 1 to 1439
    #[arg(long, default_value = "60", value_parser = values::renew_margin)]
    pub subnet_lease_renew_margin: Duration,
    /// setup IP masquerade rule for traffic destined outside of overlay network
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = values::go_bool)]
    pub ip_masq: bool,
    /// ip-masq-agent config file (YAML or JSON): destinations pod traffic keeps its address to (nonMasqueradeCIDRs, masqueradeCIDRs exceptions, masqLinkLocal); re-read on change (flanneld-rs only)
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::path)]
    pub ip_masq_config: Unset<PathBuf>,
    /// don't use --random-fully in the MASQUERADE rule
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = values::go_bool)]
    pub ip_masq_fully_random_disable: bool,
    /// resync period for iptables rules, in seconds
    #[arg(long, default_value = "5", value_parser = values::resync_period)]
    pub iptables_resync: Duration,
    /// add default accept rules to FORWARD chain in iptables
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = values::go_bool)]
    pub iptables_forward_rules: bool,
    /// iptables flavour to program: auto (the one holding the host's rules), legacy or nft; or nftables for the agent's own nftables tables, as EnableNFTables does (flanneld-rs only)
    #[arg(long, default_value = "auto", value_parser = str::parse::<BackendChoice>)]
    pub iptables_backend: BackendChoice,
    /// add a blackhole route for the node's own subnet
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = values::go_bool)]
    pub ip_blackhole_route: bool,
    /// how peer routes are installed: classic (<subnet> via <gateway>, like Go flanneld) or nexthop (IPv4 routes point to a nexthop object per gateway, inserted in linear time with thousands of peers; Linux 5.3+) (flanneld-rs only)
    #[arg(long, default_value = "classic", value_parser = values::route_style)]
    pub route_style: backends::RouteStyle,
    /// the IP address for healthz server to listen
    #[arg(long, default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// the port for healthz server to listen (0 to disable)
    #[arg(long, default_value = "0", value_parser = values::port)]
    pub healthz_port: u16,
    /// print version and exit
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = values::go_bool)]
    pub version: bool,
    /// log level for V logs: 0-1 info, 2-4 debug, 5 and more trace (RUST_LOG overrides)
    #[arg(long = "v", default_value = "0", value_parser = values::verbosity)]
    pub v: i32,
    /// log line format: text, or json (one object per line with the fields of each decision, for log shippers) (flanneld-rs only)
    #[arg(long, default_value = "text", value_parser = str::parse::<values::LogFormat>)]
    pub log_format: values::LogFormat,
    /// comma-separated list of pattern=N settings for file-filtered logging (accepted, ignored)
    #[arg(long, default_value = "", hide_default_value = true)]
    pub vmodule: String,
    /// when logging hits line file:N, emit a stack trace (accepted, ignored)
    #[arg(
        long = "log_backtrace_at",
        default_value = "",
        hide_default_value = true
    )]
    pub log_backtrace_at: String,
    #[command(flatten)]
    pub kube: KubeFlags,
    /// Warnings about accepted-but-unsupported flags and bad environment values, to log once
    /// logging is set up.
    #[arg(skip)]
    pub warnings: Vec<String>,
}

/// Go flanneld's Kubernetes-mode flags: accepted so unit files parse, never used
/// (`--kube-subnet-mgr` itself is a fatal error for this etcd-mode agent).
#[derive(Args, Clone, Debug, PartialEq, Eq)]
#[command(next_help_heading = "Kubernetes mode (not supported by flanneld-rs)")]
pub struct KubeFlags {
    /// contact the Kubernetes API for subnet assignment instead of etcd [not supported by flanneld-rs: etcd mode only]
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = values::go_bool)]
    pub kube_subnet_mgr: bool,
    /// Kubernetes API server URL [not supported by flanneld-rs: etcd mode only]
    #[arg(long, default_value = "", hide_default_value = true)]
    pub kube_api_url: String,
    /// kubeconfig file location [not supported by flanneld-rs: etcd mode only]
    #[arg(long, default_value = "", hide_default_value = true)]
    pub kubeconfig_file: String,
    /// Kubernetes annotation prefix [not supported by flanneld-rs: etcd mode only]
    #[arg(long, default_value = "flannel.alpha.coreos.com")]
    pub kube_annotation_prefix: String,
    /// path to the network configuration file [not supported by flanneld-rs: etcd mode only]
    #[arg(long, default_value = "/etc/kube-flannel/net-conf.json")]
    pub net_config_path: String,
    /// set NodeNetworkUnavailable after ready [not supported by flanneld-rs: etcd mode only]
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = values::go_bool)]
    pub set_node_network_unavailable: bool,
}

const KUBE: &str = "it is only used with --kube-subnet-mgr; this agent runs in etcd mode";

/// Go flanneld flags this agent accepts but does not implement, with the reason given in the
/// start-up warning (`kube-subnet-mgr` is handled as a fatal error instead).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("kube-api-url", KUBE),
    ("kubeconfig-file", KUBE),
    ("kube-annotation-prefix", KUBE),
    ("net-config-path", KUBE),
    ("set-node-network-unavailable", KUBE),
];

/// Parses `args` (without the program name) and overlays `env` (`FLANNELD_*` pairs) on the
/// agent's and `migrate-etcd`'s flags.
pub fn parse<I, S>(args: &[S], env: I) -> Result<Invocation, CliError>
where
    S: AsRef<str>,
    I: IntoIterator<Item = (String, String)>,
{
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let parsed = goflag::parse(command(), &args, env)?;
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&parsed.matches)
        .map_err(|e| CliError::Other(e.to_string()))?;
    Ok(match cli.command {
        None => {
            let mut options = cli.options;
            options.warnings = parsed.warnings;
            options
                .warnings
                .extend(parsed.given.iter().filter_map(|name| unsupported(name)));
            Invocation::Agent(Box::new(options))
        }
        Some(Command::MkDockerOpts(args)) => Invocation::MkDockerOpts(args),
        Some(Command::MigrateEtcd(args)) => Invocation::MigrateEtcd(args, parsed.warnings),
        Some(Command::Explain(args)) => Invocation::Explain(Box::new(args)),
        Some(Command::Doctor(args)) => Invocation::Doctor(Box::new(args)),
        Some(Command::Plan(args)) => Invocation::Plan(Box::new(args)),
        Some(Command::Cleanup(args)) => Invocation::Cleanup(Box::new(args)),
    })
}

/// The warning for a given flag that this agent does not implement.
fn unsupported(name: &str) -> Option<String> {
    let (_, why) = UNSUPPORTED.iter().find(|(flag, _)| *flag == name)?;
    Some(format!(
        "flag -{name} is accepted but not supported by flanneld-rs: {why}; ignoring it"
    ))
}

/// Parses the arguments after the subcommand `name` (and the `FLANNELD_*` variables) and takes
/// its arguments out with `pick`. `Err` is the exit status after printing what was asked for:
/// 0 for `-h`, 2 with the error and the usage for a bad command line.
pub fn parse_subcommand<T>(
    name: &str,
    args: &[String],
    pick: impl FnOnce(Invocation) -> Option<T>,
) -> Result<T, i32> {
    parse_subcommand_with_env(name, args, std::env::vars(), pick)
}

/// [`parse_subcommand`] with the `FLANNELD_*` variables taken from `env` (e.g. those of the
/// running agent's process) instead of this process's environment.
pub fn parse_subcommand_with_env<T>(
    name: &str,
    args: &[String],
    env: impl IntoIterator<Item = (String, String)>,
    pick: impl FnOnce(Invocation) -> Option<T>,
) -> Result<T, i32> {
    let argv: Vec<&str> = std::iter::once(name)
        .chain(args.iter().map(String::as_str))
        .collect();
    let problem = match parse(&argv, env) {
        Ok(invocation) => match pick(invocation) {
            Some(args) => return Ok(args),
            None => format!("{name}: unexpected command line"),
        },
        Err(CliError::Help) => {
            eprint!("{}", subcommand_usage(name));
            return Err(0);
        }
        Err(e) => e.to_string(),
    };
    eprintln!("flanneld {name}: {problem}\n\n{}", subcommand_usage(name));
    Err(2)
}

/// The names of the tools (`mk-docker-opts`, `doctor`, ...), as the first argument gives them.
pub fn subcommand_names() -> Vec<String> {
    command()
        .get_subcommands()
        .map(|tool| tool.get_name().to_string())
        .collect()
}

/// The whole command line's definition, help flags included.
fn command() -> clap::Command {
    goflag::with_help(<Cli as clap::CommandFactory>::command())
}

/// The agent's flags as the Markdown table of `docs/configuration.md` (generated from the
/// definitions; a test keeps the page equal to it).
#[cfg(test)]
pub(crate) fn reference_table() -> String {
    let mut table =
        String::from("| flag | default | environment | meaning |\n| --- | --- | --- | --- |\n");
    let command = command();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if !arg.get_action().takes_values() {
            continue;
        }
        let defaults: Vec<String> = (arg.get_default_values().iter())
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| !v.is_empty())
            .collect();
        let default = match defaults.as_slice() {
            [] => String::new(),
            values => format!("`{}`", values.join(",")),
        };
        let env = format!("FLANNELD_{}", long.to_ascii_uppercase().replace('-', "_"));
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        table += &format!(
            "| `--{long}` | {default} | `{env}` | {} |\n",
            help.replace('|', "\\|")
        );
    }
    table
}

/// The usage text printed for `-h`, generated from the flag definitions.
pub fn usage() -> String {
    command()
        .before_help(crate::build_info::describe())
        .render_help()
        .to_string()
}

/// The usage text of the subcommand `name` (`mk-docker-opts`, `migrate-etcd`).
pub fn subcommand_usage(name: &str) -> String {
    let mut command = command();
    command.build();
    command
        .find_subcommand_mut(name)
        .map(|sub| sub.render_help().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(parsed: Result<Invocation, CliError>) -> Result<Options, CliError> {
        match parsed? {
            Invocation::Agent(options) => Ok(*options),
            other => panic!("not the agent: {other:?}"),
        }
    }

    fn p(args: &[&str]) -> Result<Options, CliError> {
        agent(parse(args, Vec::<(String, String)>::new()))
    }

    fn pe(args: &[&str], env: &[(&str, &str)]) -> Options {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        agent(parse(args, env)).unwrap()
    }

    fn endpoints(o: &Options) -> Vec<String> {
        o.etcd.etcd_endpoints.to_strings()
    }

    fn names(values: &[&str]) -> Vec<IfaceSpec> {
        values.iter().map(|v| v.parse().unwrap()).collect()
    }

    #[test]
    fn defaults_match_flanneld() {
        let o = p(&[]).unwrap();
        assert_eq!(
            endpoints(&o),
            vec!["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(o.etcd.etcd_prefix, "/coreos.com/network");
        assert_eq!(o.etcd_api, EtcdApi::Auto);
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(o.subnet_lease_renew_margin, Duration::from_secs(60 * 60));
        assert!(!o.ip_masq);
        assert_eq!(o.iptables_resync, Duration::from_secs(5));
        assert!(o.iptables_forward_rules);
        assert_eq!(o.healthz_ip, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(o.healthz_port, 0);
        assert_eq!(o.iptables_backend, BackendChoice::Auto);
        assert_eq!((o.public_ip, o.iface_can_reach), (None, None));
        assert_eq!(o.etcd.registry_options(), EtcdOptions::default());
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn go_spellings_work() {
        let o = p(&[
            "-etcd-endpoints=https://10.4.7.21:2379,https://10.4.7.22:2379",
            "--iface=eth0",
            "-iface",
            "10.4.7.21",
            "-ip-masq=false",
            "-v",
            "2",
            "--subnet-file",
            "/x.env",
            "-iptables-forward-rules=F",
            "--healthz-port=2401",
        ])
        .unwrap();
        assert_eq!(
            endpoints(&o),
            vec!["https://10.4.7.21:2379", "https://10.4.7.22:2379"]
        );
        assert_eq!(o.iface, names(&["eth0", "10.4.7.21"]));
        assert!(!o.ip_masq);
        assert_eq!(o.v, 2);
        assert_eq!(o.subnet_file, PathBuf::from("/x.env"));
        assert!(!o.iptables_forward_rules);
        assert_eq!(o.healthz_port, 2401);
        assert!(p(&["-ip-masq"]).unwrap().ip_masq);
        assert!(p(&["--ip-masq=1"]).unwrap().ip_masq);
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(
            p(&["--bogus"]).unwrap_err(),
            CliError::Unknown("bogus".into())
        );
        assert_eq!(p(&["-h"]).unwrap_err(), CliError::Help);
        assert_eq!(
            p(&["-etcd-prefix"]).unwrap_err(),
            CliError::MissingValue("etcd-prefix".into())
        );
        assert!(matches!(
            p(&["-ip-masq=maybe"]).unwrap_err(),
            CliError::BadValue { .. }
        ));
        assert!(matches!(
            p(&["-v=x"]).unwrap_err(),
            CliError::BadValue { .. }
        ));
        assert_eq!(
            p(&["-ip-masq", "false"]).unwrap_err(),
            CliError::Positional("false".into())
        );
    }

    #[test]
    fn env_fills_only_flags_not_given_and_ignores_empty_values() {
        let o = pe(
            &["--etcd-prefix=/cli"],
            &[
                ("FLANNELD_ETCD_PREFIX", "/env"),
                ("FLANNELD_IP_MASQ", "true"),
                ("FLANNELD_SUBNET_FILE", ""),
                ("FLANNELD_IFACE", "eth0,eth1"),
                ("FLANNELD_V", "3"),
                ("OTHER", "x"),
            ],
        );
        assert_eq!(o.etcd.etcd_prefix, "/cli");
        assert!(o.ip_masq);
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(
            o.iface,
            names(&["eth0,eth1"]),
            "env values are one value, not split"
        );
        assert_eq!(o.v, 3);
    }

    #[test]
    fn bad_env_values_warn_and_keep_the_default() {
        let o = pe(&[], &[("FLANNELD_IPTABLES_RESYNC", "soon")]);
        assert_eq!(o.iptables_resync, Duration::from_secs(5));
        assert_eq!(o.warnings.len(), 1);
        assert!(
            o.warnings[0].contains("FLANNELD_IPTABLES_RESYNC"),
            "{:?}",
            o.warnings
        );
    }

    #[test]
    fn kube_flags_are_accepted_and_reported() {
        let o = p(&["--kube-api-url=https://k", "-vmodule=x=2"]).unwrap();
        assert_eq!(o.warnings.len(), 1);
        assert!(o.warnings[0].contains("-kube-api-url"), "{:?}", o.warnings);
        assert!(p(&["--kube-subnet-mgr"]).unwrap().kube.kube_subnet_mgr);
        assert!(usage().contains("-etcd-endpoints"));
    }

    #[test]
    fn typed_values_are_checked_once_with_the_flag_and_a_valid_value() {
        let bad = |args: &[&str]| match p(args).unwrap_err() {
            CliError::BadValue { flag, expected, .. } => (flag, expected),
            other => panic!("{args:?}: {other:?}"),
        };
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["-etcd-endpoints=ftp://10.4.7.21:2379"],
                "etcd-endpoints",
                "https://10.4.7.21:2379",
            ),
            (&["-public-ip=10.4.7"], "public-ip", "10.4.7.21"),
            (&["--iface-can-reach", "x"], "iface-can-reach", "10.4.7.1"),
            (
                &["--public-ipv6", "10.4.7.1"],
                "public-ipv6",
                "fd00:4:7::21",
            ),
            (&["-iface-regex=("], "iface-regex", "^eth[0-9]$"),
            (
                &["-subnet-lease-renew-margin=1440"],
                "subnet-lease-renew-margin",
                "1439",
            ),
            (&["-healthz-port=70000"], "healthz-port", "65535"),
            (&["-healthz-ip=localhost"], "healthz-ip", "IP"),
            (&["-etcd-api=v4"], "etcd-api", "auto, v3 or v2"),
            (
                &["-iptables-backend=iptables"],
                "iptables-backend",
                "auto, legacy, nft (iptables-nft) or nftables",
            ),
        ];
        for (args, flag, hint) in cases {
            let (got_flag, expected) = bad(args);
            assert_eq!(&got_flag, flag, "{args:?}");
            assert!(expected.contains(hint), "{args:?}: {expected}");
        }
    }

    #[test]
    fn empty_values_mean_unset_and_last_value_wins() {
        let o = p(&[
            "-public-ip=",
            "--etcd-cafile=",
            "-etcd-prefix=/a",
            "-etcd-prefix=/b",
        ])
        .unwrap();
        assert_eq!(o.public_ip, None);
        assert_eq!(o.etcd.etcd_cafile, None);
        assert_eq!(o.etcd.etcd_prefix, "/b");
        let o = p(&[
            "-public-ip",
            "10.4.7.21",
            "-iptables-backend=nft",
            "-iptables-resync=0",
        ])
        .unwrap();
        assert_eq!(o.public_ip, Some(Ipv4Addr::new(10, 4, 7, 21)));
        assert_eq!(o.iptables_backend, BackendChoice::Nft);
        assert_eq!(
            o.iptables_resync,
            Duration::from_secs(1),
            "below 1 s means 1 s, as before"
        );
    }

    #[test]
    fn subcommands_are_parsed_by_clap() {
        assert!(matches!(
            parse(&["mk-docker-opts", "-c"], std::iter::empty()),
            Ok(Invocation::MkDockerOpts(_))
        ));
        let env = [("FLANNELD_ETCD_PREFIX".to_string(), "/env".to_string())];
        match parse(&["migrate-etcd", "-from=v2", "-to", "v3"], env) {
            Ok(Invocation::MigrateEtcd(_, warnings)) => assert!(warnings.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(usage().contains("mk-docker-opts"));
        assert!(subcommand_usage("migrate-etcd").contains("--dry-run"));
    }

    #[test]
    fn the_configuration_reference_is_generated_from_the_flag_definitions() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let page = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let table = reference_table();
        assert!(
            page.contains(&table),
            "docs/configuration.md must contain the generated flag table; replace it with:\n{table}"
        );
        for sub in [
            "mk-docker-opts",
            "migrate-etcd",
            "explain",
            "doctor",
            "plan",
            "cleanup",
        ] {
            assert!(
                page.contains(&format!("`flanneld {sub}")),
                "{sub} is not documented"
            );
        }
    }

    #[test]
    fn every_network_config_key_is_documented() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let page = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let sources = ["subnet/src/config.rs", "backends/src/vxlan/config.rs"];
        for source in sources {
            let text = std::fs::read_to_string(root.join(source)).unwrap();
            // The keys the parsers read: `get_*(&f, "Key"` and `get("Key")`.
            let keys = text
                .split("(&f, \"")
                .chain(text.split("get(\""))
                .skip(1)
                .filter_map(|rest| rest.split('"').next())
                .filter(|k| k.chars().next().is_some_and(|c| c.is_ascii_uppercase()));
            for key in keys {
                assert!(
                    page.contains(&format!("`{key}`")),
                    "config key {key} ({source}) is not in docs/configuration.md"
                );
            }
        }
    }
}
