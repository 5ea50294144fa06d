//! `--ip-masq-config FILE`: the egress policy file, read at start-up and re-read when its
//! directory reports a change (inotify; ConfigMap symlink swaps included) and every
//! `resyncInterval` as a fallback. A valid file replaces the policy as a whole; an invalid one
//! keeps the last good policy and is logged once per distinct error; a missing file means
//! ip-masq-agent's defaults.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{Inotify, WatchMask};
use netfilter::{EgressPolicy, EgressRule};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// How long to wait after a change notification for the writer to finish.
const SETTLE: Duration = Duration::from_millis(200);

/// The compiled rules in force; `None` is no policy (everything leaving the Network is
/// masqueraded, Go flanneld's behaviour): only when the file was invalid from the start.
pub(crate) type Rules = Option<Vec<EgressRule>>;

/// The file and what was last read from it.
pub(crate) struct PolicySource {
    path: PathBuf,
    /// The file's text at the last read (`None`: missing); `Some(None)` never read.
    last_text: Option<Option<String>>,
    /// The policy in force.
    policy: Option<EgressPolicy>,
    /// The last error logged, so a broken file is reported once, not every resync.
    last_error: Option<String>,
}

impl PolicySource {
    /// Reads `path` for the first time.
    pub(crate) fn load(path: &Path) -> PolicySource {
        let mut source = PolicySource {
            path: path.to_path_buf(),
            last_text: None,
            policy: None,
            last_error: None,
        };
        source.reload();
        if source.policy.is_none() {
            tracing::error!(
                "no egress policy until {} is fixed: pod traffic leaving the cluster Network is masqueraded",
                path.display()
            );
        }
        source
    }

    /// The compiled rules in force.
    pub(crate) fn rules(&self) -> Rules {
        self.policy.as_ref().map(EgressPolicy::compile)
    }

    /// How long to wait before re-reading without a notification.
    fn resync_interval(&self) -> Duration {
        (self.policy.as_ref()).map_or(EgressPolicy::default().resync_interval, |p| {
            p.resync_interval
        })
    }

    /// Reads the file again; `true` when the policy in force changed.
    fn reload(&mut self) -> bool {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                self.report(format!(
                    "cannot read {}: {e}; the policy in force is kept",
                    self.path.display()
                ));
                return false;
            }
        };
        if self.last_text.as_ref() == Some(&text) {
            return false;
        }
        self.last_text = Some(text.clone());
        let Some(text) = text else {
            tracing::info!("{} does not exist: ip-masq-agent's defaults apply (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and link-local keep pod addresses)", self.path.display());
            return self.adopt(EgressPolicy::default());
        };
        match netfilter::parse_policy(&text) {
            Ok(policy) => self.adopt(policy),
            Err(e) => {
                self.report(format!(
                    "invalid {}: {e}; the policy in force is kept until the file is fixed",
                    self.path.display()
                ));
                false
            }
        }
    }

    fn adopt(&mut self, policy: EgressPolicy) -> bool {
        self.last_error = None;
        if self.policy.as_ref() == Some(&policy) {
            return false;
        }
        tracing::info!(
            "egress policy from {}: not masqueraded {:?}, masqueraded anyway {:?}, link-local {}, {} rules",
            self.path.display(),
            policy.non_masquerade.iter().map(ToString::to_string).collect::<Vec<_>>(),
            policy.masquerade.iter().map(ToString::to_string).collect::<Vec<_>>(),
            if policy.masq_link_local { "masqueraded" } else { "not masqueraded" },
            policy.compile().len()
        );
        self.policy = Some(policy);
        true
    }

    fn report(&mut self, error: String) {
        if self.last_error.as_ref() != Some(&error) {
            tracing::error!("{error}");
            self.last_error = Some(error);
        }
    }
}

/// Follows the file in a task; the receiver holds the rules in force.
pub(crate) fn spawn(source: PolicySource) -> watch::Receiver<Rules> {
    let (tx, rx) = watch::channel(source.rules());
    let changes = DirChanges::watch(&source.path);
    tokio::spawn(follow(source, tx, changes));
    rx
}

/// Re-reads the file on each change `changes` reports and every resyncInterval (only then
/// without `changes`), sending each new policy's rules.
async fn follow(
    mut source: PolicySource,
    tx: watch::Sender<Rules>,
    mut changes: Option<DirChanges>,
) {
    loop {
        let interval = source.resync_interval();
        match &mut changes {
            Some(dir) => {
                tokio::select! {
                    _ = dir.next() => {}
                    _ = tokio::time::sleep(interval) => {}
                    _ = tx.closed() => return,
                }
            }
            None => tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tx.closed() => return,
            },
        }
        if source.reload() {
            tx.send_replace(source.rules());
        }
    }
}

/// Change notifications for the directory holding the file.
struct DirChanges {
    inotify: AsyncFd<Inotify>,
}

impl DirChanges {
    /// `None` (polling only, logged) when the directory cannot be watched.
    fn watch(file: &Path) -> Option<DirChanges> {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::CREATE
            | WatchMask::DELETE;
        let watched = Inotify::init().and_then(|inotify| {
            inotify.watches().add(dir, mask)?;
            // SAFETY: `Inotify` owns its file descriptor, and nothing replaces or closes it
            // while the `AsyncFd` holds it.
            unsafe { AsyncFd::register(inotify) }.map_err(|e| e.into_parts().1)
        });
        match watched {
            Ok(inotify) => Some(DirChanges { inotify }),
            Err(e) => {
                tracing::info!(
                    "cannot watch {} for changes ({e}); re-reading it every resyncInterval",
                    dir.display()
                );
                None
            }
        }
    }

    /// Waits for a change, then for the writer to settle; drains every event seen meanwhile.
    async fn next(&mut self) {
        if let Ok(mut ready) = self.inotify.readable_mut().await {
            ready.clear_ready();
        }
        tokio::time::sleep(SETTLE).await;
        let mut buffer = [0u8; 4096];
        while self
            .inotify
            .get_mut()
            .read_events(&mut buffer)
            .is_ok_and(|mut e| e.next().is_some())
        {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(source: &PolicySource) -> Vec<String> {
        let rules = source.rules().unwrap_or_default();
        rules
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.action))
            .collect()
    }

    #[test]
    fn a_bad_file_keeps_the_last_good_policy_and_a_missing_one_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ip-masq-agent");
        std::fs::write(
            &path,
            "nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqLinkLocal: true\n",
        )
        .unwrap();
        let mut source = PolicySource::load(&path);
        assert_eq!(rules_of(&source), ["10.0.0.0/8 Exempt"]);
        assert!(!source.reload(), "unchanged file, unchanged policy");

        std::fs::write(&path, "nonMasqueradeCIDRs: [10.1.2.3/8]\n").unwrap();
        assert!(!source.reload());
        assert_eq!(rules_of(&source), ["10.0.0.0/8 Exempt"], "last good kept");
        assert!(source
            .last_error
            .as_deref()
            .unwrap()
            .contains("use 10.0.0.0/8"));

        std::fs::write(&path, "nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqueradeCIDRs: [10.100.10.0/24]\nmasqLinkLocal: true\n").unwrap();
        assert!(source.reload());
        assert_eq!(
            rules_of(&source),
            ["10.100.10.0/24 Masquerade", "10.0.0.0/8 Exempt"]
        );
        assert_eq!(source.last_error, None);

        std::fs::remove_file(&path).unwrap();
        assert!(source.reload());
        assert_eq!(source.policy, Some(EgressPolicy::default()));
    }

    #[tokio::test]
    async fn without_change_notifications_the_file_is_read_every_resync_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ip-masq-agent");
        let policy = |cidr: &str| format!("nonMasqueradeCIDRs: [{cidr}]\nresyncInterval: 50ms\n");
        std::fs::write(&path, policy("10.0.0.0/8")).unwrap();
        let source = PolicySource::load(&path);
        let (tx, mut rx) = watch::channel(source.rules());
        let task = tokio::spawn(follow(source, tx, None));
        std::fs::write(&path, policy("10.9.0.0/16")).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
        assert!(
            changed.is_ok_and(|sent| sent.is_ok()),
            "no re-read within 5 s"
        );
        let rules = rx.borrow().clone().unwrap_or_default();
        let dsts: Vec<String> = rules.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(
            dsts,
            ["10.9.0.0/16", "169.254.0.0/16"],
            "link-local stays exempt"
        );
        task.abort();
    }

    #[test]
    fn a_file_invalid_from_the_start_means_no_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ip-masq-agent");
        std::fs::write(&path, "bogus: 1\n").unwrap();
        assert_eq!(PolicySource::load(&path).rules(), None);
    }
}
