//! `flanneld mk-docker-opts`: docker options from subnet.env, like flannel's mk-docker-opts.sh.
//!
//! Same options (`-f -d -i -c -k -m`, getopts style), same output file and format, same exit
//! codes as the script at flannel HEAD, plus `-a` for Docker 28's `--allow-direct-routing`:
//!
//! * the variables are the environment plus the `KEY=value` assignments of the env file (which
//!   the script sources), so pre-set `DOCKER_OPT_*` variables and a pre-set combined key are
//!   carried along exactly as the shell would;
//! * `DOCKER_OPT_BIP="--bip=$FLANNEL_SUBNET"`, `DOCKER_OPT_MTU="--mtu=$FLANNEL_MTU"`, and
//!   `FLANNEL_IPMASQ` `true`/`false` map to `--ip-masq=false`/`--ip-masq=true` (anything else:
//!   exit 1 before the output is touched);
//! * every variable whose name contains `DOCKER_OPT_` is written as `NAME="value"` in `set`
//!   (name) order, then the combined `KEY=" ..."` line;
//! * last, if `ip route show` has a `via` route for the subnet (`a.b.c.(d-1)/len`, matched as
//!   grep would), it says so and exits 1, after the file was written.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use crate::cli::error::CliError;

/// The subcommand's options as clap parses them (getopts `f:d:icmk:`, `-h`/`-?` for help;
/// parsing stops at `--` or the first operand, like getopts).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// Path to flannel env file
    #[arg(
        short = 'f',
        value_name = "FLANNEL-ENV-FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    env_file: String,
    /// Path to Docker env file to write to
    #[arg(
        short = 'd',
        value_name = "DOCKER-ENV-FILE",
        default_value = "/run/docker_opts.env"
    )]
    docker_env: String,
    /// Output each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
    #[arg(short = 'i')]
    individual: bool,
    /// Output combined Docker options into DOCKER_OPTS var
    #[arg(short = 'c')]
    combined: bool,
    /// Set the combined options key to this value
    #[arg(
        short = 'k',
        value_name = "COMBINED-KEY",
        default_value = "DOCKER_OPTS"
    )]
    key: String,
    /// Do not output --ip-masq (useful for older Docker version)
    #[arg(short = 'm')]
    no_ip_masq: bool,
    /// Output --allow-direct-routing=true, so Docker 28.2+ lets other hosts' pods reach containers on docker0 (older Docker rejects it) (flanneld-rs only)
    #[arg(short = 'a')]
    allow_direct_routing: bool,
    /// Operands, ignored as the script ignores them (getopts stops at the first).
    #[arg(hide = true, trailing_var_arg = true)]
    operands: Vec<String>,
}

/// The command line, after defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Options {
    env_file: String,
    docker_env: String,
    individual: bool,
    combined: bool,
    key: String,
    ip_masq: bool,
    allow_direct_routing: bool,
}

impl From<Args> for Options {
    /// Neither `-i` nor `-c` means both, as in the script.
    fn from(args: Args) -> Options {
        let both = !args.individual && !args.combined;
        Options {
            env_file: args.env_file,
            docker_env: args.docker_env,
            individual: args.individual || both,
            combined: args.combined || both,
            key: args.key,
            ip_masq: !args.no_ip_masq,
            allow_direct_routing: args.allow_direct_routing,
        }
    }
}

/// Runs the subcommand with its parsed arguments; returns the exit code.
pub fn run(args: Args) -> i32 {
    let options = Options::from(args);
    let mut vars: BTreeMap<String, String> = std::env::vars().collect();
    if fs::metadata(&options.env_file).is_ok_and(|m| m.is_file()) {
        match fs::read_to_string(&options.env_file) {
            Ok(text) => vars.extend(shell_assignments(&text)),
            Err(e) => {
                eprintln!("cannot read {}: {e}", options.env_file);
                return 1;
            }
        }
    }
    let text = match render(&options, &vars) {
        Ok(text) => text,
        Err(message) => {
            eprintln!("{message}");
            return 1;
        }
    };
    if let Err(e) = fs::write(&options.docker_env, text) {
        eprintln!("cannot write {}: {e}", options.docker_env);
        return 1;
    }
    let Some(subnet) = vars.get("FLANNEL_SUBNET").filter(|s| !s.is_empty()) else {
        return 0;
    };
    // Like the script, an `ip` that cannot run counts as an empty routing table.
    let routes = Command::new("ip")
        .args(["route", "show"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    match route_conflict(subnet, &routes) {
        Some(conflict) => {
            eprintln!("Your routing table already contains the subnet: {conflict}");
            1
        }
        None => 0,
    }
}

/// What the script says about a command line it rejects (`None` for `-h`/`-?`); either way the
/// usage follows and the exit code is 1, as the script's.
pub fn complaint(rejected: &CliError) -> Option<String> {
    match rejected {
        CliError::Help => None,
        CliError::Unknown(option) => Some(format!("Illegal option -{option}")),
        CliError::MissingValue(option) => Some(format!("No arg for -{option} option")),
        other => Some(other.to_string()),
    }
}

/// The `NAME=value` assignments of a file the script sources (subnet.env): blank lines and
/// `#` comments skipped, an optional `export `, values optionally in single or double quotes.
fn shell_assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            let (name, value) = line.split_once('=')?;
            let valid_name = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            valid_name.then(|| (name.to_string(), unquote(value)))
        })
        .collect()
}

fn unquote(value: &str) -> String {
    let quoted = |q: char| {
        value
            .strip_prefix(q)
            .and_then(|v| v.strip_suffix(q))
            .filter(|_| value.len() >= 2)
    };
    if let Some(inner) = quoted('\'') {
        return inner.to_string();
    }
    if let Some(inner) = quoted('"') {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match (c, chars.clone().next()) {
                ('\\', Some(next @ ('"' | '\\' | '$' | '`'))) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push(c),
            }
        }
        return out;
    }
    value.to_string()
}

/// The output file's content for these variables, or the error message for a bad
/// `FLANNEL_IPMASQ`.
fn render(options: &Options, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut vars = vars.clone();
    let set = |vars: &BTreeMap<String, String>, name: &str| {
        vars.get(name).filter(|v| !v.is_empty()).cloned()
    };
    if let Some(subnet) = set(&vars, "FLANNEL_SUBNET") {
        vars.insert("DOCKER_OPT_BIP".into(), format!("--bip={subnet}"));
    }
    if let Some(mtu) = set(&vars, "FLANNEL_MTU") {
        vars.insert("DOCKER_OPT_MTU".into(), format!("--mtu={mtu}"));
    }
    if let Some(masq) = set(&vars, "FLANNEL_IPMASQ").filter(|_| options.ip_masq) {
        let docker = match masq.as_str() {
            "true" => "--ip-masq=false",
            "false" => "--ip-masq=true",
            _ => return Err(format!("Invalid value of FLANNEL_IPMASQ: {masq}")),
        };
        vars.insert("DOCKER_OPT_IPMASQ".into(), docker.into());
    }
    if options.allow_direct_routing {
        // Docker 28 drops packets addressed to a container unless they come from its bridge
        // (raw PREROUTING); flannel's come from eth0 or flannel.1 (docs/troubleshooting.md).
        let opt = "--allow-direct-routing=true";
        vars.insert("DOCKER_OPT_ALLOW_DIRECT_ROUTING".into(), opt.into());
    }
    let mut combined = vars.get(&options.key).cloned().unwrap_or_default();
    if !combined.is_empty() {
        combined.push(' ');
    }
    let mut out = String::new();
    for (name, value) in vars.iter().filter(|(name, _)| name.contains("DOCKER_OPT_")) {
        if options.individual {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
        combined.push(' ');
        combined.push_str(value);
    }
    if options.combined {
        out.push_str(&format!("{}=\"{combined}\"\n", options.key));
    }
    Ok(out)
}

/// The lines of `ip route show` output that contain `a.b.c.(d-1)/len` (derived from
/// `FLANNEL_SUBNET` = `a.b.c.d/len`, `.` matching any character as in grep) and `via`.
fn route_conflict(flannel_subnet: &str, routes: &str) -> Option<String> {
    let (address, length) = flannel_subnet.split_once('/')?;
    let (prefix, last) = address.rsplit_once('.')?;
    let last: i64 = last.parse().ok()?;
    let pattern = format!("{prefix}.{}/{length}", last - 1);
    let conflicts: Vec<&str> = routes
        .lines()
        .filter(|line| grep_matches(line, &pattern) && line.contains("via"))
        .collect();
    (!conflicts.is_empty()).then(|| conflicts.join("\n"))
}

/// Whether `line` contains `pattern`, where `.` in the pattern matches any character.
fn grep_matches(line: &str, pattern: &str) -> bool {
    let line: Vec<char> = line.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    line.windows(pattern.len().max(1)).any(|window| {
        window
            .iter()
            .zip(&pattern)
            .all(|(c, p)| *p == '.' || c == p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{self, Invocation, Tool};

    /// The command line after `mk-docker-opts`, parsed as `flanneld` does.
    fn tool_args(args: &[String]) -> Result<Args, CliError> {
        let argv = std::iter::once("mk-docker-opts").chain(args.iter().map(String::as_str));
        match cli::parse(&argv.collect::<Vec<_>>(), std::iter::empty())? {
            Invocation::Tool(Tool::MkDockerOpts(args), _) => Ok(*args),
            other => panic!("not mk-docker-opts: {other:?}"),
        }
    }

    /// The options after defaults; `Err` holds the script's complaint.
    fn parse_args(args: &[String]) -> Result<Options, Option<String>> {
        tool_args(args)
            .map(Options::from)
            .map_err(|e| complaint(&e))
    }

    /// flannel's dist/sample_subnet.env.
    const SAMPLE: &str = "FLANNEL_NETWORK=10.1.0.0/16
FLANNEL_SUBNET=10.1.74.1/24
FLANNEL_MTU=1472
FLANNEL_IPMASQ=false
";

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn sample_output(flags: &[&str]) -> String {
        let mut all = vec!["-f", "/tmp/subnet.env", "-d", "/tmp/docker_opts.env"];
        all.extend_from_slice(flags);
        let options = parse_args(&args(&all)).unwrap();
        render(&options, &shell_assignments(SAMPLE).into_iter().collect()).unwrap()
    }

    #[test]
    fn default_individual_and_combined() {
        assert_eq!(
            sample_output(&[]),
            r#"DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
"#
        );
    }

    #[test]
    fn dash_a_adds_dockers_allow_direct_routing() {
        assert_eq!(
            sample_output(&["-a", "-c"]),
            "DOCKER_OPTS=\" --allow-direct-routing=true --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
        assert!(!sample_output(&[]).contains("allow-direct-routing"));
    }

    #[test]
    fn individual_only() {
        assert_eq!(
            sample_output(&["-i"]),
            r#"DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
"#
        );
    }

    #[test]
    fn combined_only() {
        assert_eq!(
            sample_output(&["-c"]),
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
    }

    #[test]
    fn custom_key() {
        assert_eq!(
            sample_output(&["-k", "CUSTOM_KEY"]),
            r#"DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
CUSTOM_KEY=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
"#
        );
    }

    #[test]
    fn strip_ip_masq() {
        assert_eq!(
            sample_output(&["-m"]),
            r#"DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"
"#
        );
    }

    #[test]
    fn ip_masq_mapping_and_invalid_values() {
        let options = parse_args(&[]).unwrap();
        let vars = |masq: &str| BTreeMap::from([("FLANNEL_IPMASQ".into(), masq.into())]);
        assert_eq!(
            render(&options, &vars("true")).unwrap(),
            "DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPTS=\" --ip-masq=false\"\n"
        );
        assert_eq!(
            render(&options, &vars("True")).unwrap_err(),
            "Invalid value of FLANNEL_IPMASQ: True"
        );
        let mut no_masq = options.clone();
        no_masq.ip_masq = false;
        assert_eq!(
            render(&no_masq, &vars("yes")).unwrap(),
            "DOCKER_OPTS=\"\"\n"
        );
    }

    #[test]
    fn existing_variables_are_carried_like_the_shell_does() {
        let options = parse_args(&args(&["-c"])).unwrap();
        let vars = BTreeMap::from([
            ("DOCKER_OPTS".into(), "--debug".into()),
            ("DOCKER_OPT_LOG".into(), "--log-level=warn".into()),
            ("FLANNEL_MTU".into(), "1450".into()),
        ]);
        assert_eq!(
            render(&options, &vars).unwrap(),
            "DOCKER_OPTS=\"--debug  --log-level=warn --mtu=1450\"\n"
        );
    }

    #[test]
    fn getopts_style_arguments() {
        let options = parse_args(&args(&["-ic", "-f/x.env", "-dout", "-k", "K", "-m"])).unwrap();
        assert_eq!(
            options,
            Options {
                env_file: "/x.env".into(),
                docker_env: "out".into(),
                individual: true,
                combined: true,
                key: "K".into(),
                ip_masq: false,
                allow_direct_routing: false,
            }
        );
        let stopped = parse_args(&args(&["-i", "--", "-c"])).unwrap();
        assert!(stopped.individual && !stopped.combined);
        let stopped = parse_args(&args(&["-c", "file", "-i"])).unwrap();
        assert!(!stopped.individual && stopped.combined);
        assert_eq!(
            parse_args(&args(&["-x"])),
            Err(Some("Illegal option -x".into()))
        );
        assert_eq!(
            parse_args(&args(&["-f"])),
            Err(Some("No arg for -f option".into()))
        );
        assert_eq!(parse_args(&args(&["-h"])), Err(None));
    }

    #[test]
    fn sourced_file_syntax() {
        let vars = shell_assignments(
            "# comment\n\nexport A=1\nB='two words'\nC=\"q\\\"x\"\nnot an assignment\n1X=bad\n",
        );
        assert_eq!(
            vars,
            [
                ("A".to_string(), "1".to_string()),
                ("B".into(), "two words".into()),
                ("C".into(), "q\"x".into()),
            ]
        );
    }

    #[test]
    fn route_conflicts_need_the_subnet_and_via() {
        let routes = "default via 192.168.1.1 dev eth0\n\
                      10.1.74.0/24 dev docker0 proto kernel scope link src 10.1.74.1\n\
                      10.1.74.0/24 via 192.168.1.9 dev eth0\n";
        assert_eq!(
            route_conflict("10.1.74.1/24", routes).as_deref(),
            Some("10.1.74.0/24 via 192.168.1.9 dev eth0")
        );
        assert_eq!(route_conflict("10.1.75.1/24", routes), None);
        // grep semantics: `.` matches any character.
        assert!(route_conflict("10.1.74.1/24", "10x1.74.0/24 via 1.2.3.4\n").is_some());
        assert_eq!(route_conflict("garbage", routes), None);
    }

    #[test]
    fn run_writes_the_file_and_fails_on_bad_ipmasq() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("subnet.env");
        let out = dir.path().join("docker_opts.env");
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        // A subnet no test host routes via a gateway.
        fs::write(
            &env,
            "FLANNEL_SUBNET=10.251.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let argv = args(&["-f", &path(&env), "-d", &path(&out), "-c"]);
        assert_eq!(run(tool_args(&argv).unwrap()), 0);
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "DOCKER_OPTS=\" --bip=10.251.74.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        fs::write(&env, "FLANNEL_IPMASQ=maybe\n").unwrap();
        assert_eq!(run(tool_args(&argv).unwrap()), 1);
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "DOCKER_OPTS=\" --bip=10.251.74.1/24 --ip-masq=false --mtu=1450\"\n",
            "an invalid FLANNEL_IPMASQ leaves the output alone"
        );
    }
}
