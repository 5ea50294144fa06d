//! Keys under `<prefix>/subnets/` that are not used as leases, reported at a bounded rate.
//!
//! Whoever can write the prefix can put thousands of bad keys there, and every agent reads them
//! (at start-up, on every re-listing and through its watch): one log line per key on every host
//! would fill the disks of the whole cluster. So the first [`NAMED_KEYS`] distinct keys get a line
//! each, naming the key and the problem; after that one summary line a minute says how many more
//! were ignored, by reason. The totals by reason count every key ignored, for `/metrics`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How many distinct keys get a log line of their own.
pub const NAMED_KEYS: usize = 20;
/// How often the summary of the keys not named is logged, at most.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

/// Why a key under the subnets prefix is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IgnoreReason {
    /// The key is not `<prefix>/subnets/<A.B.C.D-LEN>` (a bad name, or nested deeper).
    BadKey,
    /// The value is not a lease's JSON.
    BadValue,
    /// The value is far larger than a lease; it is dropped unparsed.
    TooLarge,
    /// A well-formed lease the lease policy rejects (outside the Network, a host's LAN, ...).
    Rejected,
}

impl IgnoreReason {
    /// Every reason, in the order of their labels.
    pub const ALL: [IgnoreReason; 4] = [
        IgnoreReason::BadKey,
        IgnoreReason::BadValue,
        IgnoreReason::TooLarge,
        IgnoreReason::Rejected,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            IgnoreReason::BadKey => "bad_key",
            IgnoreReason::BadValue => "bad_value",
            IgnoreReason::TooLarge => "too_large",
            IgnoreReason::Rejected => "rejected",
        }
    }
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The bounded reporter; one per process ([`ignored_keys`]), or one per test.
#[derive(Debug, Default)]
pub struct IgnoredKeys {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The keys that got a line of their own.
    named: HashSet<String>,
    /// Keys ignored (not named) since the last summary, by reason.
    unsummarized: BTreeMap<IgnoreReason, u64>,
    /// When the last summary was logged.
    last_summary: Option<Instant>,
    /// Every key ignored, by reason.
    totals: BTreeMap<IgnoreReason, u64>,
}

/// What [`IgnoredKeys::report`] decided.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a Named key is logged by the caller, with its own fields"]
pub enum Logged {
    /// The caller logs the key's own line now.
    Named,
    /// Nothing now (counted for the next summary, or a key already named).
    Counted,
    /// The summary line, with the counts it gave.
    Summary(String),
}

impl IgnoredKeys {
    /// Counts `key`, ignored for `reason`. Returns [`Logged::Named`] if it is among the first
    /// [`NAMED_KEYS`] distinct keys: the caller then logs its line (a key already named is not
    /// logged again); past them, the summary is logged here when one is due.
    pub fn report(&self, reason: IgnoreReason, key: &str) -> Logged {
        self.report_at(reason, key, Instant::now())
    }

    fn report_at(&self, reason: IgnoreReason, key: &str, now: Instant) -> Logged {
        let mut state = self.lock();
        *state.totals.entry(reason).or_default() += 1;
        if state.named.contains(key) {
            return Logged::Counted;
        }
        if state.named.len() < NAMED_KEYS {
            state.named.insert(key.to_string());
            if state.named.len() == NAMED_KEYS {
                // The summaries start a period after the last key named.
                state.last_summary = Some(now);
            }
            return Logged::Named;
        }
        *state.unsummarized.entry(reason).or_default() += 1;
        state
            .summary_if_due(now)
            .map_or(Logged::Counted, Logged::Summary)
    }

    /// Logs the summary if a period has passed since the last one and keys were ignored since;
    /// the control loop calls this on its timer, so the last counts are not held back.
    pub fn summarize_if_due(&self) -> Option<String> {
        self.lock().summary_if_due(Instant::now())
    }

    /// Every key ignored so far, by reason.
    pub fn totals(&self) -> BTreeMap<IgnoreReason, u64> {
        self.lock().totals.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn summary_if_due(&mut self, now: Instant) -> Option<String> {
        let due = self
            .last_summary
            .is_none_or(|last| now.duration_since(last) >= SUMMARY_PERIOD);
        if !due || self.unsummarized.is_empty() {
            return None;
        }
        let unsummarized = std::mem::take(&mut self.unsummarized);
        let keys: u64 = unsummarized.values().sum();
        let counts: Vec<String> = unsummarized
            .into_iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        let line = format!(
            "ignored {keys} more keys under the subnets prefix since the last report ({}); the \
             first {NAMED_KEYS} were named one by one, flannel_ignored_keys_total counts them all",
            counts.join(", ")
        );
        tracing::warn!("{line}");
        self.last_summary = Some(now);
        Some(line)
    }
}

/// The process's reporter, shared by the registries and the lease policy.
pub fn ignored_keys() -> &'static IgnoredKeys {
    static REPORTER: OnceLock<IgnoredKeys> = OnceLock::new();
    REPORTER.get_or_init(IgnoredKeys::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_keys_are_named_once_then_counted_into_a_summary_a_minute() {
        let reporter = IgnoredKeys::default();
        let t0 = Instant::now();
        for i in 0..NAMED_KEYS {
            let key = format!("k{i}");
            assert_eq!(
                reporter.report_at(IgnoreReason::BadKey, &key, t0),
                Logged::Named
            );
        }
        // A named key seen again is not logged again.
        let again = reporter.report_at(IgnoreReason::BadKey, "k0", t0);
        assert_eq!(again, Logged::Counted);
        // The ones after are counted, and summarized a minute after the last one named.
        let logged = reporter.report_at(IgnoreReason::TooLarge, "x", t0);
        assert_eq!(logged, Logged::Counted);
        for i in 0..1000 {
            let key = format!("y{i}");
            let logged = reporter.report_at(IgnoreReason::BadValue, &key, t0);
            assert_eq!(logged, Logged::Counted);
        }
        let later = t0 + SUMMARY_PERIOD;
        let Logged::Summary(summary) = reporter.report_at(IgnoreReason::Rejected, "z", later)
        else {
            panic!("expected the summary a minute later");
        };
        assert!(
            summary.contains("ignored 1002 more keys")
                && summary.contains("1000 bad_value")
                && summary.contains("1 too_large")
                && summary.contains("1 rejected"),
            "{summary}"
        );
        let totals = reporter.totals();
        assert_eq!(totals[&IgnoreReason::BadKey], NAMED_KEYS as u64 + 1);
        assert_eq!(totals[&IgnoreReason::BadValue], 1000);
    }

    #[test]
    fn nothing_to_summarize_logs_nothing() {
        let reporter = IgnoredKeys::default();
        assert_eq!(reporter.summarize_if_due(), None);
        assert_eq!(reporter.report(IgnoreReason::BadKey, "k"), Logged::Named);
        assert_eq!(
            reporter.summarize_if_due(),
            None,
            "a named key is no summary"
        );
    }
}
