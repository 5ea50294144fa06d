//! The flags `flanneld doctor` checks with: those given, or, given no agent flag and no
//! `FLANNELD_*` variable, those of the agent running in this network namespace (its command
//! line, variables and working directory, from [`crate::running_agent`]).

use crate::cli::{self, Invocation, Tool};
use crate::doctor::{Args, OWN_FLAGS};
use crate::running_agent;

/// The doctor's arguments to run with: `parsed` (from `given`, the arguments after `doctor`),
/// or the running agent's flags with the doctor's own. `Err` is the exit status after saying why.
pub fn resolve(given: &[String], parsed: Box<Args>) -> Result<Box<Args>, i32> {
    let has_env_flags = std::env::vars().any(|(name, _)| name.starts_with("FLANNELD_"));
    if !parsed.may_adopt_running_agent() || has_env_flags || gives_agent_flags(given) {
        return Ok(parsed);
    }
    Ok(flags_of_running_agent(&parsed)?.unwrap_or(parsed))
}

/// Whether the command line holds any flag besides the doctor's own.
fn gives_agent_flags(args: &[String]) -> bool {
    args.iter().any(|arg| {
        let name = arg.trim_start_matches('-');
        let name = name.split_once('=').map_or(name, |(name, _)| name);
        !OWN_FLAGS.contains(&name)
    })
}

/// The doctor's arguments with the flags, variables and working directory of the agent running
/// in this network namespace (said on stderr); `Ok(None)` when none runs here.
fn flags_of_running_agent(ours: &Args) -> Result<Option<Box<Args>>, i32> {
    let agent = match running_agent::find(&cli::subcommand_names()) {
        Ok(Some(agent)) => agent,
        Ok(None) => {
            eprintln!("flanneld doctor: no agent runs in this network namespace; using the default flags (give the agent's flags to check another set-up)");
            return Ok(None);
        }
        Err(e) => {
            eprintln!("flanneld doctor: {e}");
            return Err(2);
        }
    };
    eprintln!(
        "flanneld doctor: using the flags of the running agent, pid {} in {}: {}",
        agent.pid,
        agent.cwd.display(),
        agent.command_line()
    );
    // Relative paths in its flags (flanneld.sh's ./certs/...) are the agent's.
    if let Err(e) = std::env::set_current_dir(&agent.cwd) {
        eprintln!("flanneld doctor: cannot enter the agent's directory ({e}); relative paths in its flags are read from here");
    }
    let argv = std::iter::once("doctor".to_string())
        .chain(agent.args.iter().skip(1).cloned())
        .chain(ours.own_flags());
    match cli::parse(&argv.collect::<Vec<_>>(), agent.env) {
        Ok(Invocation::Tool(Tool::Doctor(args), _)) => Ok(Some(args)),
        Ok(other) => {
            eprintln!(
                "flanneld doctor: the running agent's command line is not the agent's: {other:?}"
            );
            Err(2)
        }
        Err(e) => {
            eprintln!("flanneld doctor: the running agent's flags: {e}");
            Err(2)
        }
    }
}
