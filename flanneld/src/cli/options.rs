//! The agent's flags as typed values: [`Options`], with the etcd flags ([`EtcdFlags`], shared
//! with the tools) and Go's Kubernetes-mode flags ([`KubeFlags`], accepted and unused).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};
use netfilter::BackendChoice;
use subnet::{EtcdApi, EtcdOptions};

use super::values::{self, EtcdEndpoints, IfaceRegex, IfaceSpec, Unset};

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
    #[arg(long)]
    pub ip_masq: bool,
    /// ip-masq-agent config file (YAML or JSON): destinations pod traffic keeps its address to (nonMasqueradeCIDRs, masqueradeCIDRs exceptions, masqLinkLocal); re-read on change (flanneld-rs only)
    #[arg(long, default_value = "", hide_default_value = true, value_parser = values::path)]
    pub ip_masq_config: Unset<PathBuf>,
    /// don't use --random-fully in the MASQUERADE rule
    #[arg(long)]
    pub ip_masq_fully_random_disable: bool,
    /// resync period for iptables rules, in seconds
    #[arg(long, default_value = "5", value_parser = values::resync_period)]
    pub iptables_resync: Duration,
    /// add default accept rules to FORWARD chain in iptables
    #[arg(long, default_value = "true")]
    pub iptables_forward_rules: bool,
    /// iptables flavour to program: auto (the one holding the host's rules), legacy or nft; or nftables for the agent's own nftables tables, as EnableNFTables does (flanneld-rs only)
    #[arg(long, default_value = "auto", value_parser = str::parse::<BackendChoice>)]
    pub iptables_backend: BackendChoice,
    /// add a blackhole route for the node's own subnet
    #[arg(long)]
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
    #[arg(long)]
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
    #[arg(long)]
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
    #[arg(long, default_value = "true")]
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

/// The warning for a given flag that this agent does not implement.
pub(super) fn unsupported(name: &str) -> Option<String> {
    let (_, why) = UNSUPPORTED.iter().find(|(flag, _)| *flag == name)?;
    Some(format!(
        "flag -{name} is accepted but not supported by flanneld-rs: {why}; ignoring it"
    ))
}
