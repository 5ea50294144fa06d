//! Go `flag` compatibility on top of clap: single-dash long flags, `-h`/`-help`, the
//! `FLANNELD_*` environment overlay (invalid values warned about, not fatal, as Go flanneld does)
//! and clap's errors mapped to [`CliError`] in Go's wording.
//!
//! A command whose flags are all long (the agent, `migrate-etcd`) is parsed Go-style; one with
//! short flags (`mk-docker-opts`, getopts-style like the shell script it replaces) is left to
//! clap as it is.

use std::error::Error as _;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::error::CliError;

/// A parsed command line.
pub(super) struct Parsed {
    /// clap's matches, the environment overlay included.
    pub matches: ArgMatches,
    /// Environment variables that were ignored, and why.
    pub warnings: Vec<String>,
    /// The long names of the flags set (on the command line or by the environment).
    pub given: Vec<String>,
}

/// Adds the help flags: `-h`/`-help`/`--help` on Go-style commands, `-h`/`-?` on getopts ones.
pub(super) fn with_help(command: Command) -> Command {
    let go_help = || {
        Arg::new("help")
            .long("help")
            .alias("h")
            .action(ArgAction::Help)
            .help("print this help")
    };
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut command = command.arg(go_help());
    for name in names {
        command = command.mut_subcommand(name, |sub| {
            let help = if is_go_style(&sub) {
                go_help()
            } else {
                Arg::new("help")
                    .short('h')
                    .short_alias('?')
                    .action(ArgAction::Help)
            };
            sub.arg(help)
        });
    }
    command
}

/// Gives the boolean flags of Go-style commands (declared as plain `bool` fields) Go's syntax:
/// `-name` or `-name=<bool>` in Go's spellings, never `-name <bool>`; false unless the field
/// declares another default. Getopts-style commands keep clap's switches.
pub(super) fn with_go_booleans(command: Command) -> Command {
    let command = if is_go_style(&command) {
        command.mut_args(go_boolean)
    } else {
        command
    };
    command.mut_subcommands(with_go_booleans)
}

/// `arg` as a Go boolean flag, when clap made it a switch.
fn go_boolean(arg: Arg) -> Arg {
    if !matches!(arg.get_action(), ArgAction::SetTrue) {
        return arg;
    }
    let declared_default = !arg.get_default_values().is_empty();
    let arg = arg
        .action(ArgAction::Set)
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("true")
        .value_parser(super::values::go_bool);
    if declared_default {
        arg
    } else {
        arg.default_value("false")
    }
}

/// Whether `command` takes Go-style flags (no short flags at all).
fn is_go_style(command: &Command) -> bool {
    command.get_arguments().all(|a| a.get_short().is_none())
}

/// Parses `args` (without the program name) against `command` and its subcommands.
pub(super) fn parse(
    command: Command,
    args: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Parsed, CliError> {
    let sub = args
        .first()
        .and_then(|a| command.find_subcommand(a))
        .cloned();
    let (prefix, rest) = match &sub {
        Some(s) => (vec![s.get_name().to_string()], &args[1..]),
        None => (Vec::new(), args),
    };
    let target = sub.as_ref().unwrap_or(&command);
    let go_style = is_go_style(target);
    let given_args = if go_style {
        double_dash(target, rest)
    } else {
        rest.to_vec()
    };
    let argv = |overlay: &[String]| {
        let head = ["flanneld".to_string()].into_iter().chain(prefix.clone());
        let tail = overlay.iter().chain(&given_args).cloned();
        head.chain(tail).collect::<Vec<String>>()
    };
    let first = (command.clone().try_get_matches_from(argv(&[]))).map_err(to_cli_error)?;
    let (overlay, warnings) = if go_style {
        env_overlay(target, scope(&first, &sub), env)
    } else {
        (Vec::new(), Vec::new())
    };
    // The command line alone is the answer when no variable adds to it.
    let matches = match overlay.is_empty() {
        true => first,
        false => (command.clone().try_get_matches_from(argv(&overlay))).map_err(to_cli_error)?,
    };
    let given = given_flags(target, scope(&matches, &sub));
    Ok(Parsed {
        matches,
        warnings,
        given,
    })
}

/// The matches of the subcommand `sub` (or of the top-level command).
fn scope<'a>(matches: &'a ArgMatches, sub: &Option<Command>) -> &'a ArgMatches {
    sub.as_ref()
        .and_then(|s| matches.subcommand_matches(s.get_name()))
        .unwrap_or(matches)
}

/// The long names of the flags of `command` set on its (possibly overlaid) command line.
fn given_flags(command: &Command, matches: &ArgMatches) -> Vec<String> {
    command
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// Rewrites Go's `-name[=value]` as `--name[=value]`, leaving flag values (the argument after a
/// flag that takes one without `=`) and everything after `--` alone.
fn double_dash(command: &Command, args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            out.push(arg.clone());
            out.extend(rest.by_ref().cloned());
            break;
        }
        let Some(body) = arg.strip_prefix('-').filter(|b| !b.is_empty()) else {
            out.push(arg.clone());
            continue;
        };
        let body = body.strip_prefix('-').unwrap_or(body);
        out.push(format!("--{body}"));
        if !body.contains('=') && takes_next_arg(command, body) {
            out.extend(rest.next().cloned());
        }
    }
    out
}

/// Whether the flag `name` consumes the next argument as its value (not booleans, which take
/// theirs only as `-name=value`).
fn takes_next_arg(command: &Command, name: &str) -> bool {
    command
        .get_arguments()
        .find(|a| {
            a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|all| all.contains(&name))
        })
        .is_some_and(|a| {
            a.get_action().takes_values() && a.get_num_args().is_none_or(|n| n.min_values() > 0)
        })
}

/// The `--flag=value` arguments for the `FLANNELD_<FLAG>` variables of flags not given on the
/// command line; a variable whose value the flag rejects is skipped with a warning.
fn env_overlay(
    command: &Command,
    given: &ArgMatches,
    env: impl IntoIterator<Item = (String, String)>,
) -> (Vec<String>, Vec<String>) {
    let mut overlay = Vec::new();
    let mut warnings = Vec::new();
    for (key, value) in env {
        let Some(flag) = key.strip_prefix("FLANNELD_") else {
            continue;
        };
        let Some(arg) = command.get_arguments().find(|a| {
            a.get_action().takes_values()
                && a.get_long().is_some_and(|l| {
                    l.to_ascii_uppercase().replace('-', "_") == flag.to_ascii_uppercase()
                })
        }) else {
            continue;
        };
        let given_here =
            given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine);
        if value.is_empty() || given_here {
            continue;
        }
        // The flag alone, so the check ignores what other flags require.
        let candidate = format!("--{}={value}", arg.get_long().unwrap_or_default());
        let check = Command::new("flanneld")
            .no_binary_name(true)
            .arg(arg.clone().required(false))
            .try_get_matches_from([&candidate]);
        match check {
            Ok(_) => overlay.push(candidate),
            Err(e) => warnings.push(format!(
                "ignoring environment variable {key}: {}",
                to_cli_error(e)
            )),
        }
    }
    (overlay, warnings)
}

/// clap's error as a [`CliError`], in Go's terms.
fn to_cli_error(error: clap::Error) -> CliError {
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag_name = |arg: String| {
        let name = arg.trim_start_matches('-');
        name.split([' ', '=']).next().unwrap_or(name).to_string()
    };
    match error.kind() {
        ErrorKind::DisplayHelp => CliError::Help,
        ErrorKind::InvalidSubcommand => match context(ContextKind::InvalidSubcommand) {
            Some(arg) => CliError::Positional(arg),
            None => CliError::Other(error.to_string()),
        },
        ErrorKind::UnknownArgument => match context(ContextKind::InvalidArg) {
            Some(arg) if arg.starts_with('-') => CliError::Unknown(flag_name(arg)),
            Some(arg) => CliError::Positional(arg),
            None => CliError::Other(error.to_string()),
        },
        kind @ (ErrorKind::InvalidValue | ErrorKind::ValueValidation) => {
            let flag = context(ContextKind::InvalidArg)
                .map(flag_name)
                .unwrap_or_default();
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            if kind == ErrorKind::InvalidValue && value.is_empty() {
                return CliError::MissingValue(flag);
            }
            let expected = error
                .source()
                .map_or_else(|| error.to_string(), |s| s.to_string());
            CliError::BadValue {
                flag,
                value,
                expected,
            }
        }
        _ => CliError::Other(error.to_string()),
    }
}
