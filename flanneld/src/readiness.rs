//! Readiness, computed in one place from typed facts and published by its only writer,
//! [`ReadinessWriter`]: start-up reports its stage, then the control loop reports the facts it
//! owns (lease valid, data plane converged, rules in place, subnet.env written, etcd heard from).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::healthz::Readiness;

/// How long etcd may stay silent before `/readyz` reports it; the data plane is kept meanwhile.
pub(crate) const ETCD_CONTACT_GRACE: Duration = Duration::from_secs(30);

/// How far the agent got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before anything was asked of etcd.
    Starting,
    /// Waiting for a usable `<prefix>/config`.
    WaitingForConfig,
    /// Waiting for a subnet lease.
    AcquiringLease,
    /// Running the control loop, with the facts it owns.
    Serving(Facts),
}

/// The facts the control loop owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The own lease has not expired.
    pub lease_valid: bool,
    /// The last reconcile programmed every wanted route, neighbour and FDB entry.
    pub converged: bool,
    /// The last firewall check found or put the rules in place.
    pub rules_in_place: bool,
    /// subnet.env holds the current values.
    pub subnet_env_written: bool,
    /// Time since etcd last answered.
    pub etcd_silent_for: Duration,
    /// What the operator should know although the agent is ready (see [`crate::config_watch`]).
    pub config_note: Option<String>,
}

/// Readiness at `stage` (pure): ready only while serving with every fact true; otherwise every
/// reason, so `/readyz` and the log say all that is wrong at once.
pub(crate) fn assess(stage: &Stage, subnet_file: &Path) -> Readiness {
    let facts = match stage {
        Stage::Starting => return Readiness::NotReady("starting".into()),
        Stage::WaitingForConfig => {
            return Readiness::NotReady("waiting for the network config".into())
        }
        Stage::AcquiringLease => return Readiness::NotReady("acquiring a subnet lease".into()),
        Stage::Serving(facts) => facts,
    };
    let mut problems = BTreeSet::new();
    let mut unless = |fact: bool, problem: String| {
        if !fact {
            problems.insert(problem);
        }
    };
    unless(facts.lease_valid, "the subnet lease is not valid".into());
    unless(
        facts.converged,
        "the data plane has not converged (see the log)".into(),
    );
    unless(
        facts.rules_in_place,
        "iptables rules could not be applied".into(),
    );
    unless(
        facts.subnet_env_written,
        format!("{} is not written", subnet_file.display()),
    );
    unless(
        facts.etcd_silent_for <= ETCD_CONTACT_GRACE,
        format!(
            "no answer from etcd for more than {}s (the data plane is kept as it is)",
            ETCD_CONTACT_GRACE.as_secs()
        ),
    );
    if !problems.is_empty() {
        return Readiness::NotReady(problems.into_iter().collect::<Vec<_>>().join("; "));
    }
    match &facts.config_note {
        Some(note) => Readiness::ReadyNote(note.clone()),
        None => Readiness::Ready,
    }
}

/// The only writer of readiness: publishes [`assess`]'s answer to the health server and logs
/// each change once.
pub(crate) struct ReadinessWriter {
    tx: watch::Sender<Readiness>,
    last: Option<Readiness>,
    subnet_file: PathBuf,
}

impl ReadinessWriter {
    /// A writer starting at [`Stage::Starting`], and the receiver the health server reads.
    pub(crate) fn new(subnet_file: PathBuf) -> (ReadinessWriter, watch::Receiver<Readiness>) {
        let first = assess(&Stage::Starting, &subnet_file);
        let (tx, rx) = watch::channel(first.clone());
        let writer = ReadinessWriter {
            tx,
            last: Some(first),
            subnet_file,
        };
        (writer, rx)
    }

    /// Publishes readiness at `stage` if it changed; logs the change once it is serving.
    pub(crate) fn publish(&mut self, stage: &Stage) {
        let status = assess(stage, &self.subnet_file);
        if self.last.as_ref() == Some(&status) {
            return;
        }
        if matches!(stage, Stage::Serving(_)) {
            match &status {
                Readiness::Ready | Readiness::ReadyNote(_) => {
                    tracing::info!("ready: lease valid, data plane converged, rules in place")
                }
                Readiness::NotReady(why) => tracing::warn!("not ready: {why}"),
            }
        }
        self.tx.send_replace(status.clone());
        self.last = Some(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_true() -> Facts {
        Facts {
            lease_valid: true,
            converged: true,
            rules_in_place: true,
            subnet_env_written: true,
            etcd_silent_for: Duration::from_secs(1),
            config_note: None,
        }
    }

    fn serving(change: impl FnOnce(&mut Facts)) -> Readiness {
        let mut facts = all_true();
        change(&mut facts);
        assess(&Stage::Serving(facts), Path::new("/run/flannel/subnet.env"))
    }

    #[test]
    fn ready_only_while_serving_with_every_fact_true() {
        assert_eq!(serving(|_| {}), Readiness::Ready);
        let note = serving(|f| f.config_note = Some("restart to apply".into()));
        assert_eq!(note, Readiness::ReadyNote("restart to apply".into()));
        for stage in [
            Stage::Starting,
            Stage::WaitingForConfig,
            Stage::AcquiringLease,
        ] {
            let status = assess(&stage, Path::new("/x"));
            assert!(matches!(status, Readiness::NotReady(_)), "{stage:?}");
        }
    }

    #[test]
    fn each_false_fact_is_named_and_all_are_listed() {
        type Case = (fn(&mut Facts), &'static str);
        let cases: [Case; 5] = [
            (|f| f.lease_valid = false, "lease is not valid"),
            (|f| f.converged = false, "not converged"),
            (|f| f.rules_in_place = false, "iptables rules"),
            (
                |f| f.subnet_env_written = false,
                "/run/flannel/subnet.env is not written",
            ),
            (
                |f| f.etcd_silent_for = Duration::from_secs(31),
                "no answer from etcd",
            ),
        ];
        for (change, reason) in cases {
            match serving(change) {
                Readiness::NotReady(why) => assert!(why.contains(reason), "{why}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
        let everything = serving(|f| {
            f.converged = false;
            f.subnet_env_written = false;
            f.config_note = Some("ignored while not ready".into());
        });
        match everything {
            Readiness::NotReady(why) => assert_eq!(why.matches("; ").count(), 1, "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_writer_publishes_changes_only() {
        let (mut writer, mut rx) = ReadinessWriter::new("/x".into());
        assert!(matches!(*rx.borrow(), Readiness::NotReady(_)));
        writer.publish(&Stage::Serving(all_true()));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), Readiness::Ready);
        writer.publish(&Stage::Serving(all_true()));
        assert!(
            !rx.has_changed().unwrap(),
            "the same answer is not sent again"
        );
    }
}
