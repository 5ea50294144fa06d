//! `flanneld migrate-etcd --from v2 --to v3 [--dry-run] [-etcd-* flags]`: copies a flanneld v0.11
//! network (etcd v2 keyspace) into the v3 keyspace, so agents can move to v3 one host at a time.
//!
//! The config and every live lease are copied verbatim; a lease keeps its remaining lifetime (a
//! fresh v3 lease granted with the v2 node's remaining TTL; a key without TTL stays without). A
//! key that already exists in v3 is never overwritten: identical (or, for a lease, held by the
//! same PublicIP) counts as done, anything else is reported as a difference (exit status 1). So
//! running it again changes nothing. The `--etcd-*` flags (and `FLANNELD_ETCD_*` variables) are
//! the agent's.

use std::time::Duration;

use subnet::{
    EtcdRegistry, EtcdV2Registry, Export, ExportedLease, LeaseAttrs, NetworkConfig, RegistryError,
};

use crate::cli::options::EtcdFlags;

/// The subcommand's flags: the direction, `--dry-run`, and the agent's `--etcd-*` flags.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// the keyspace to copy from (only v2)
    #[arg(long, value_parser = ["v2"])]
    from: String,
    /// the keyspace to copy to (only v3)
    #[arg(long, value_parser = ["v3"])]
    to: String,
    /// print what would be done, write nothing
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    etcd: EtcdFlags,
}

/// Runs the subcommand with its parsed arguments, after printing `warnings` about the
/// `FLANNELD_*` variables; returns the exit code.
pub fn run(args: &Args, warnings: &[String]) -> i32 {
    for warning in warnings {
        eprintln!("flanneld migrate-etcd: {warning}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(migrate(&args.etcd.registry_options(), args.dry_run)) {
        Ok(report) => {
            println!("{}", report.summary(args.dry_run));
            i32::from(report.differ > 0)
        }
        Err(e) => {
            eprintln!("flanneld migrate-etcd: {e}");
            1
        }
    }
}

/// What a migration did (or would do).
#[derive(Debug, Default)]
struct Report {
    created: usize,
    unchanged: usize,
    differ: usize,
    skipped: usize,
}

impl Report {
    fn summary(&self, dry_run: bool) -> String {
        format!(
            "{}: {} {}, {} already in v3, {} differing in v3 (left as they are), {} skipped",
            if dry_run { "dry run" } else { "done" },
            self.created,
            if dry_run { "to create" } else { "created" },
            self.unchanged,
            self.differ,
            self.skipped
        )
    }
}

/// How a v3 key compares with its v2 original.
enum Existing {
    /// Absent: to be created.
    Absent,
    /// Present with the same content: nothing to do.
    Same(&'static str),
    /// Present with other content: reported, left alone.
    Differs(String),
}

async fn migrate(options: &subnet::EtcdOptions, dry_run: bool) -> Result<Report, RegistryError> {
    let v2 = EtcdV2Registry::connect(options)?;
    let v3 = EtcdRegistry::connect(options).await?;
    let Export {
        config,
        leases,
        skipped,
    } = v2.export().await?;
    let config_key = v3.config_key().to_string();
    let Some(config) = config else {
        return Err(RegistryError::ConfigNotFound {
            hint: "There is nothing to migrate from the v2 keyspace (check --etcd-prefix and \
                   --etcd-endpoints)."
                .into(),
            key: config_key,
        });
    };
    if let Err(e) = NetworkConfig::parse(config.as_bytes()) {
        println!("warning: the v2 config at {config_key} is not valid ({e}); copying it as is");
    }
    let mut report = Report {
        skipped: skipped.len(),
        ..Report::default()
    };
    for problem in &skipped {
        println!("skipped: {problem}");
    }
    let existing = compare_config(&config, v3.get_raw(&config_key).await?.as_deref());
    copy(
        &v3,
        &config_key,
        &config,
        None,
        existing,
        dry_run,
        &mut report,
    )
    .await?;
    for lease in &leases {
        let key = v3.lease_key(lease.key);
        let existing = compare_lease(lease, v3.get_raw(&key).await?.as_deref());
        copy(
            &v3,
            &key,
            &lease.value,
            lease.ttl,
            existing,
            dry_run,
            &mut report,
        )
        .await?;
    }
    Ok(report)
}

/// Compares configs as JSON (formatting aside).
fn compare_config(v2: &str, v3: Option<&[u8]>) -> Existing {
    let Some(v3) = v3 else {
        return Existing::Absent;
    };
    let json = |raw: &[u8]| serde_json::from_slice::<serde_json::Value>(raw).ok();
    if v2.as_bytes() == v3 || json(v2.as_bytes()).is_some_and(|a| json(v3) == Some(a)) {
        Existing::Same("identical")
    } else {
        Existing::Differs(String::from_utf8_lossy(v3).into_owned())
    }
}

/// Compares leases: identical, or held by the same PublicIP (a host that already moved to v3
/// rewrote it in the v3 format), is the same lease.
fn compare_lease(v2: &ExportedLease, v3: Option<&[u8]>) -> Existing {
    let Some(v3) = v3 else {
        return Existing::Absent;
    };
    if v2.value.as_bytes() == v3 {
        return Existing::Same("identical");
    }
    let holder = |raw: &[u8]| LeaseAttrs::from_json(raw).ok().map(|a| a.public_ip);
    match (holder(v2.value.as_bytes()), holder(v3)) {
        (Some(a), Some(b)) if a == b => Existing::Same("held by the same PublicIP"),
        _ => Existing::Differs(String::from_utf8_lossy(v3).into_owned()),
    }
}

/// Creates `key` in v3 unless it exists, printing what happens.
async fn copy(
    v3: &EtcdRegistry,
    key: &str,
    value: &str,
    ttl: Option<Duration>,
    existing: Existing,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), RegistryError> {
    let lifetime = ttl.map_or("no TTL".to_string(), |t| format!("TTL {}s", t.as_secs()));
    match existing {
        Existing::Same(how) => {
            println!("{key}: already in v3 ({how})");
            report.unchanged += 1;
        }
        Existing::Differs(current) => {
            println!("{key}: DIFFERS in v3, left as it is\n  v2: {value}\n  v3: {current}");
            report.differ += 1;
        }
        Existing::Absent if dry_run => {
            println!("{key}: would create with {lifetime}: {value}");
            report.created += 1;
        }
        Existing::Absent => {
            if v3.create_raw(key, value, ttl).await? {
                println!("{key}: created with {lifetime}: {value}");
                report.created += 1;
            } else {
                println!("{key}: DIFFERS: created in v3 by someone else meanwhile, left as it is");
                report.differ += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{self, CliError, Invocation, Tool};

    fn args(list: &[&str]) -> Result<Args, CliError> {
        let argv = std::iter::once(&"migrate-etcd").chain(list);
        match cli::parse(&argv.collect::<Vec<_>>(), std::iter::empty())? {
            Invocation::Tool(Tool::MigrateEtcd(args), _) => Ok(*args),
            other => panic!("not migrate-etcd: {other:?}"),
        }
    }

    #[test]
    fn flags_are_split_from_the_etcd_flags() {
        let a = args(&["--from", "v2", "-to=v3", "--dry-run", "-etcd-prefix=/x"]).unwrap();
        assert_eq!(
            (a.from.as_str(), a.to.as_str(), a.dry_run),
            ("v2", "v3", true)
        );
        assert_eq!(a.etcd.etcd_prefix, "/x");
        assert!(args(&["--from", "v3", "--to", "v2"]).is_err());
        assert!(args(&["--from", "v2"]).is_err());
        assert!(
            args(&["from", "v2", "--to", "v3"]).is_err(),
            "flags need dashes"
        );
    }

    #[test]
    fn leases_held_by_the_same_host_are_the_same() {
        let lease = ExportedLease {
            key: "10.5.1.0-24".parse().unwrap(),
            value: r#"{"PublicIP":"10.0.0.1","BackendType":"host-gw"}"#.into(),
            ttl: None,
        };
        let same_host = br#"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#;
        assert!(matches!(
            compare_lease(&lease, Some(same_host)),
            Existing::Same(_)
        ));
        let other = br#"{"PublicIP":"10.0.0.2","BackendType":"host-gw"}"#;
        assert!(matches!(
            compare_lease(&lease, Some(other)),
            Existing::Differs(_)
        ));
        assert!(matches!(compare_lease(&lease, None), Existing::Absent));
        assert!(matches!(
            compare_config(
                r#"{"Network":"10.5.0.0/16"}"#,
                Some(br#"{ "Network": "10.5.0.0/16" }"#)
            ),
            Existing::Same(_)
        ));
    }
}
