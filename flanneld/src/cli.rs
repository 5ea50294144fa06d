//! The command line, parsed with Go `flag` semantics so flanneld unit files work unchanged.
//!
//! `-name` and `--name` are equivalent; values come as `-name=v` or `-name v` (booleans only as
//! `-name` or `-name=false`); `iface` and `iface-regex` may repeat. Flags not given on the command
//! line are filled from `FLANNELD_<NAME>` environment variables (upper case, `-` ⇒ `_`); empty
//! values are ignored.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What a flag holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Int,
    /// Repeatable string flag; each occurrence appends.
    List,
}

/// Who uses a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Implemented by this agent.
    Supported,
    /// A Go flanneld flag this agent accepts but does not implement (reported at startup).
    Unsupported(&'static str),
    /// Accepted for compatibility and deliberately ignored (logging knobs of glog/klog).
    Ignored,
}

struct Spec {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
    scope: Scope,
}

const KUBE: Scope =
    Scope::Unsupported("it is only used with --kube-subnet-mgr; this agent runs in etcd mode");

const SPECS: &[Spec] = &[
    Spec { name: "etcd-endpoints", kind: Kind::Str, default: "http://127.0.0.1:4001,http://127.0.0.1:2379", help: "a comma-delimited list of etcd endpoints", scope: Scope::Supported },
    Spec { name: "etcd-prefix", kind: Kind::Str, default: "/coreos.com/network", help: "etcd prefix", scope: Scope::Supported },
    Spec { name: "etcd-keyfile", kind: Kind::Str, default: "", help: "SSL key file used to secure etcd communication", scope: Scope::Supported },
    Spec { name: "etcd-certfile", kind: Kind::Str, default: "", help: "SSL certification file used to secure etcd communication", scope: Scope::Supported },
    Spec { name: "etcd-cafile", kind: Kind::Str, default: "", help: "SSL Certificate Authority file used to secure etcd communication", scope: Scope::Supported },
    Spec { name: "etcd-username", kind: Kind::Str, default: "", help: "username for BasicAuth to etcd", scope: Scope::Supported },
    Spec { name: "etcd-password", kind: Kind::Str, default: "", help: "password for BasicAuth to etcd", scope: Scope::Supported },
    Spec { name: "etcd-api", kind: Kind::Str, default: "auto", help: "etcd keyspace holding the network: auto (the one holding <prefix>/config, v3 first), v3, or v2 (flanneld v0.11 clusters; etcd needs --enable-v2) (flanneld-rs only)", scope: Scope::Supported },
    Spec { name: "iface", kind: Kind::List, default: "", help: "interface to use (IP or name) for inter-host communication; may be repeated", scope: Scope::Supported },
    Spec { name: "iface-regex", kind: Kind::List, default: "", help: "regex expression to match the first interface to use (IP or name); may be repeated", scope: Scope::Supported },
    Spec { name: "iface-can-reach", kind: Kind::Str, default: "", help: "detect the interface and address used to reach this IP", scope: Scope::Supported },
    Spec { name: "subnet-file", kind: Kind::Str, default: "/run/flannel/subnet.env", help: "filename where env variables (subnet, MTU, ...) will be written to", scope: Scope::Supported },
    Spec { name: "public-ip", kind: Kind::Str, default: "", help: "IP accessible by other nodes for inter-host communication", scope: Scope::Supported },
    Spec { name: "public-ipv6", kind: Kind::Str, default: "", help: "IPv6 accessible by other nodes for inter-host communication", scope: Scope::Unsupported("IPv6 is not implemented yet") },
    Spec { name: "subnet-lease-renew-margin", kind: Kind::Int, default: "60", help: "subnet lease renewal margin, in minutes, ranging from 1 to 1439", scope: Scope::Supported },
    Spec { name: "ip-masq", kind: Kind::Bool, default: "false", help: "setup IP masquerade rule for traffic destined outside of overlay network", scope: Scope::Supported },
    Spec { name: "ip-masq-fully-random-disable", kind: Kind::Bool, default: "false", help: "don't use --random-fully in the MASQUERADE rule", scope: Scope::Supported },
    Spec { name: "iptables-resync", kind: Kind::Int, default: "5", help: "resync period for iptables rules, in seconds", scope: Scope::Supported },
    Spec { name: "iptables-forward-rules", kind: Kind::Bool, default: "true", help: "add default accept rules to FORWARD chain in iptables", scope: Scope::Supported },
    Spec { name: "iptables-backend", kind: Kind::Str, default: "auto", help: "iptables flavour to program: auto (the one holding the host's rules), legacy or nft (flanneld-rs only)", scope: Scope::Supported },
    Spec { name: "ip-blackhole-route", kind: Kind::Bool, default: "false", help: "add a blackhole route for the node's own subnet", scope: Scope::Unsupported("the blackhole route is not implemented yet") },
    Spec { name: "healthz-ip", kind: Kind::Str, default: "0.0.0.0", help: "the IP address for healthz server to listen", scope: Scope::Supported },
    Spec { name: "healthz-port", kind: Kind::Int, default: "0", help: "the port for healthz server to listen (0 to disable)", scope: Scope::Supported },
    Spec { name: "version", kind: Kind::Bool, default: "false", help: "print version and exit", scope: Scope::Supported },
    Spec { name: "v", kind: Kind::Int, default: "0", help: "log level for V logs", scope: Scope::Supported },
    Spec { name: "vmodule", kind: Kind::Str, default: "", help: "comma-separated list of pattern=N settings for file-filtered logging (accepted, ignored)", scope: Scope::Ignored },
    Spec { name: "log_backtrace_at", kind: Kind::Str, default: "", help: "when logging hits line file:N, emit a stack trace (accepted, ignored)", scope: Scope::Ignored },
    Spec { name: "kube-subnet-mgr", kind: Kind::Bool, default: "false", help: "contact the Kubernetes API for subnet assignment instead of etcd", scope: KUBE },
    Spec { name: "kube-api-url", kind: Kind::Str, default: "", help: "Kubernetes API server URL", scope: KUBE },
    Spec { name: "kubeconfig-file", kind: Kind::Str, default: "", help: "kubeconfig file location", scope: KUBE },
    Spec { name: "kube-annotation-prefix", kind: Kind::Str, default: "flannel.alpha.coreos.com", help: "Kubernetes annotation prefix", scope: KUBE },
    Spec { name: "net-config-path", kind: Kind::Str, default: "/etc/kube-flannel/net-conf.json", help: "path to the network configuration file", scope: KUBE },
    Spec { name: "set-node-network-unavailable", kind: Kind::Bool, default: "true", help: "set NodeNetworkUnavailable after ready", scope: KUBE },
];

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
        expected: &'static str,
    },
    /// A stray positional argument.
    #[error("unexpected argument {0:?} (flags take values as -flag=value)")]
    Positional(String),
}

/// The parsed options of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// etcd endpoints, split on `,`.
    pub etcd_endpoints: Vec<String>,
    /// Key prefix, e.g. `/coreos.com/network`.
    pub etcd_prefix: String,
    /// TLS client key file.
    pub etcd_keyfile: String,
    /// TLS client certificate file.
    pub etcd_certfile: String,
    /// TLS CA file.
    pub etcd_cafile: String,
    /// etcd user.
    pub etcd_username: String,
    /// etcd password.
    pub etcd_password: String,
    /// `--etcd-api`: `auto`, `v3` or `v2`.
    pub etcd_api: String,
    /// `--iface` values in order (names or IPs).
    pub iface: Vec<String>,
    /// `--iface-regex` values in order.
    pub iface_regex: Vec<String>,
    /// `--iface-can-reach` destination.
    pub iface_can_reach: String,
    /// Where subnet.env is written.
    pub subnet_file: String,
    /// `--public-ip`.
    pub public_ip: String,
    /// Minutes before expiry to renew the lease (1..=1439).
    pub subnet_lease_renew_margin: i64,
    /// Install masquerade rules.
    pub ip_masq: bool,
    /// Don't use `--random-fully`.
    pub ip_masq_fully_random_disable: bool,
    /// Seconds between firewall checks.
    pub iptables_resync: i64,
    /// Install FORWARD accept rules.
    pub iptables_forward_rules: bool,
    /// `auto`, `legacy` or `nft`.
    pub iptables_backend: String,
    /// healthz listen address.
    pub healthz_ip: String,
    /// healthz port; 0 disables the server.
    pub healthz_port: i64,
    /// `--version` was given.
    pub version: bool,
    /// Log verbosity.
    pub v: i64,
    /// Warnings about accepted-but-unsupported flags and bad environment values, to log once
    /// logging is set up.
    pub warnings: Vec<String>,
    /// `--kube-subnet-mgr` was requested (a fatal error for this agent).
    pub kube_subnet_mgr: bool,
}

fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

fn parse_bool(flag: &str, v: &str) -> Result<bool, CliError> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(CliError::BadValue {
            flag: flag.into(),
            value: v.into(),
            expected: "use true or false",
        }),
    }
}

fn parse_int(flag: &str, v: &str) -> Result<i64, CliError> {
    v.parse().map_err(|_| CliError::BadValue {
        flag: flag.into(),
        value: v.into(),
        expected: "use a whole number",
    })
}

/// Raw values by flag name; lists keep every occurrence.
type Values = BTreeMap<&'static str, Vec<String>>;

/// Parses `args` (without the program name) and overlays `env` (`FLANNELD_*` pairs).
pub fn parse<I, S>(args: &[S], env: I) -> Result<Options, CliError>
where
    S: AsRef<str>,
    I: IntoIterator<Item = (String, String)>,
{
    let mut given: Values = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_ref();
        i += 1;
        if arg == "--" {
            if let Some(extra) = args.get(i) {
                return Err(CliError::Positional(extra.as_ref().into()));
            }
            break;
        }
        let Some(body) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|b| !b.is_empty())
        else {
            return Err(CliError::Positional(arg.into()));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Err(CliError::Help);
        }
        let spec = spec(name).ok_or_else(|| CliError::Unknown(name.into()))?;
        let value = match (spec.kind, inline) {
            (_, Some(v)) => v,
            (Kind::Bool, None) => "true".into(),
            (_, None) => {
                let v = args
                    .get(i)
                    .ok_or_else(|| CliError::MissingValue(name.into()))?;
                i += 1;
                v.as_ref().to_string()
            }
        };
        let slot = given.entry(spec.name).or_default();
        if spec.kind != Kind::List {
            slot.clear();
        }
        slot.push(value);
    }

    let mut warnings = Vec::new();
    let mut values = given.clone();
    for (key, value) in env {
        let Some(flag) = key.strip_prefix("FLANNELD_") else {
            continue;
        };
        let name = flag.to_ascii_lowercase().replace('_', "-");
        let Some(spec) = SPECS
            .iter()
            .find(|s| s.name == name || s.name == flag.to_ascii_lowercase())
        else {
            continue;
        };
        if value.is_empty() || given.contains_key(spec.name) {
            continue;
        }
        let valid = match spec.kind {
            Kind::Bool => parse_bool(spec.name, &value).map(|_| ()),
            Kind::Int => parse_int(spec.name, &value).map(|_| ()),
            Kind::Str | Kind::List => Ok(()),
        };
        match valid {
            Ok(()) => {
                values.insert(spec.name, vec![value]);
            }
            Err(e) => warnings.push(format!("ignoring environment variable {key}: {e}")),
        }
    }

    for (name, _) in values.iter().filter(|(_, v)| !v.is_empty()) {
        match spec(name).map(|s| s.scope) {
            Some(Scope::Unsupported(why)) if *name != "kube-subnet-mgr" => warnings.push(format!(
                "flag -{name} is accepted but not supported by flanneld-rs: {why}; ignoring it"
            )),
            _ => {}
        }
    }

    let get = |name: &'static str| -> String {
        values
            .get(name)
            .and_then(|v| v.last().cloned())
            .unwrap_or_else(|| spec(name).map_or(String::new(), |s| s.default.to_string()))
    };
    let list = |name: &'static str| values.get(name).cloned().unwrap_or_default();
    let boolean = |name: &'static str| parse_bool(name, &get(name));
    let int = |name: &'static str| parse_int(name, &get(name));

    Ok(Options {
        etcd_endpoints: get("etcd-endpoints")
            .split(',')
            .map(str::to_string)
            .collect(),
        etcd_prefix: get("etcd-prefix"),
        etcd_keyfile: get("etcd-keyfile"),
        etcd_certfile: get("etcd-certfile"),
        etcd_cafile: get("etcd-cafile"),
        etcd_username: get("etcd-username"),
        etcd_password: get("etcd-password"),
        etcd_api: get("etcd-api"),
        iface: list("iface"),
        iface_regex: list("iface-regex"),
        iface_can_reach: get("iface-can-reach"),
        subnet_file: get("subnet-file"),
        public_ip: get("public-ip"),
        subnet_lease_renew_margin: int("subnet-lease-renew-margin")?,
        ip_masq: boolean("ip-masq")?,
        ip_masq_fully_random_disable: boolean("ip-masq-fully-random-disable")?,
        iptables_resync: int("iptables-resync")?,
        iptables_forward_rules: boolean("iptables-forward-rules")?,
        iptables_backend: get("iptables-backend"),
        healthz_ip: get("healthz-ip"),
        healthz_port: int("healthz-port")?,
        version: boolean("version")?,
        v: int("v")?,
        kube_subnet_mgr: boolean("kube-subnet-mgr")?,
        warnings,
    })
}

/// The usage text printed for `-h` and flag errors.
pub fn usage() -> String {
    let mut out = String::from(
        "Usage: flanneld [OPTION]...\n       flanneld mk-docker-opts [-f subnet.env] [-d file] [-i] [-c] [-k KEY] [-m]\n       flanneld migrate-etcd --from v2 --to v3 [--dry-run] [-etcd-* flags]\n\nOptions (single or double dash; every flag can also be set as FLANNELD_<FLAG>):\n",
    );
    for s in SPECS {
        let default = if s.default.is_empty() {
            String::new()
        } else {
            format!(" (default {:?})", s.default)
        };
        let note = match s.scope {
            Scope::Supported => "",
            Scope::Unsupported(_) => " [not supported by flanneld-rs]",
            Scope::Ignored => "",
        };
        let _ = writeln!(out, "  -{}\n        {}{}{}", s.name, s.help, default, note);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, CliError> {
        parse(args, Vec::<(String, String)>::new())
    }

    fn pe(args: &[&str], env: &[(&str, &str)]) -> Options {
        parse(
            args,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    }

    #[test]
    fn defaults_match_flanneld() {
        let o = p(&[]).unwrap();
        assert_eq!(
            o.etcd_endpoints,
            vec!["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(o.etcd_prefix, "/coreos.com/network");
        assert_eq!(o.etcd_api, "auto");
        assert_eq!(o.subnet_file, "/run/flannel/subnet.env");
        assert_eq!(o.subnet_lease_renew_margin, 60);
        assert!(!o.ip_masq);
        assert_eq!(o.iptables_resync, 5);
        assert!(o.iptables_forward_rules);
        assert_eq!(o.healthz_ip, "0.0.0.0");
        assert_eq!(o.healthz_port, 0);
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
            o.etcd_endpoints,
            vec!["https://10.4.7.21:2379", "https://10.4.7.22:2379"]
        );
        assert_eq!(o.iface, vec!["eth0", "10.4.7.21"]);
        assert!(!o.ip_masq);
        assert_eq!(o.v, 2);
        assert_eq!(o.subnet_file, "/x.env");
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
        assert_eq!(o.etcd_prefix, "/cli");
        assert!(o.ip_masq);
        assert_eq!(o.subnet_file, "/run/flannel/subnet.env");
        assert_eq!(
            o.iface,
            vec!["eth0,eth1"],
            "env values are one value, not split"
        );
        assert_eq!(o.v, 3);
    }

    #[test]
    fn bad_env_values_warn_and_keep_the_default() {
        let o = pe(&[], &[("FLANNELD_IPTABLES_RESYNC", "soon")]);
        assert_eq!(o.iptables_resync, 5);
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
        assert!(p(&["--kube-subnet-mgr"]).unwrap().kube_subnet_mgr);
        assert!(usage().contains("-etcd-endpoints"));
    }
}
