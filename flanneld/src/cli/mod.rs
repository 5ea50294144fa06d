//! The command line: one typed [`Options`] for the agent and one clap subcommand per tool, all
//! defined once with clap (so `--help` comes from the same definitions) and parsed with Go `flag`
//! semantics so flanneld unit files work unchanged.
//!
//! `-name` and `--name` are equivalent; values come as `-name=v` or `-name v` (booleans only as
//! `-name` or `-name=false`, in Go's spellings); `iface` and `iface-regex` may repeat, other flags
//! keep their last value. Flags not given on the command line are filled from `FLANNELD_<NAME>`
//! environment variables (upper case, `-` ⇒ `_`); empty values are ignored and invalid ones are
//! reported as warnings, as Go flanneld does. [`goflag`] holds the Go-compatibility layer.

pub(crate) mod error;
mod goflag;
pub(crate) mod options;
pub(crate) mod values;

use clap::{Parser, Subcommand};

pub use error::CliError;
pub use options::Options;

/// What the command line asks for: the agent, or one of the tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Run the agent.
    Agent(Box<Options>),
    /// Run a tool, with warnings about ignored `FLANNELD_*` variables.
    Tool(Tool, Vec<String>),
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
    tool: Option<Tool>,
}

/// The tools, one per subcommand, each with its own clap arguments (defined in its file).
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Tool {
    /// Writes docker options from subnet.env, like flannel's mk-docker-opts.sh.
    #[command(disable_help_flag = true)]
    MkDockerOpts(Box<crate::mk_docker_opts::Args>),
    /// Copies a flanneld v0.11 network from the etcd v2 keyspace to v3.
    #[command(disable_help_flag = true, args_override_self = true)]
    MigrateEtcd(Box<crate::migrate::Args>),
    /// Says which nat rule decides whether a flow's source address is rewritten, and whether
    /// that agrees with the egress policy.
    #[command(disable_help_flag = true, args_override_self = true)]
    Explain(Box<crate::explain::Args>),
    /// Checks this host and etcd for what breaks pod traffic, and says how to fix it.
    #[command(disable_help_flag = true, args_override_self = true)]
    Doctor(Box<crate::doctor::Args>),
    /// Prints what the agent (with these flags) would change on this host, changing nothing.
    #[command(disable_help_flag = true, args_override_self = true)]
    Plan(Box<crate::plan::Args>),
    /// Removes everything the agent owns on this host (routes, device, rules, subnet.env, and
    /// with --release-lease its lease), and nothing else.
    #[command(disable_help_flag = true, args_override_self = true)]
    Cleanup(Box<crate::cleanup::Args>),
}

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
    Ok(match cli.tool {
        None => {
            let mut options = cli.options;
            options.warnings = parsed.warnings;
            options.warnings.extend(
                parsed
                    .given
                    .iter()
                    .filter_map(|name| options::unsupported(name)),
            );
            Invocation::Agent(Box::new(options))
        }
        Some(tool) => Invocation::Tool(tool, parsed.warnings),
    })
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
    goflag::with_help(goflag::with_go_booleans(
        <Cli as clap::CommandFactory>::command(),
    ))
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
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;
    use std::time::Duration;

    use netfilter::BackendChoice;
    use subnet::{EtcdApi, EtcdOptions};
    use values::IfaceSpec;

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
            Ok(Invocation::Tool(Tool::MkDockerOpts(_), _))
        ));
        let env = [("FLANNELD_ETCD_PREFIX".to_string(), "/env".to_string())];
        match parse(&["migrate-etcd", "-from=v2", "-to", "v3"], env) {
            Ok(Invocation::Tool(Tool::MigrateEtcd(_), warnings)) => assert!(warnings.is_empty()),
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
