//! Helpers for loops that retry against an unreliable datastore: exponential backoff with jitter,
//! and a warning log that does not repeat the same message over and over.

use std::time::{Duration, Instant};

use rand::Rng;

/// Exponential backoff: each wait doubles up to a cap; the actual sleep is drawn uniformly from
/// the upper half of the current delay, so many agents do not reconnect in lock step.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and doubling up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// Starts again from the smallest delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay to sleep, with jitter, advancing the backoff.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(self.max);
        let half = delay / 2;
        half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Sleeps for the next delay.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// How long an identical warning stays suppressed.
const REPEAT_AFTER: Duration = Duration::from_secs(60);

/// Logs warnings, but an identical message at most once a minute (with a count of the ones
/// suppressed meanwhile), so a long outage does not fill the disk.
#[derive(Debug, Default)]
pub(crate) struct WarnOnce {
    last: Option<(String, Instant)>,
    suppressed: u32,
}

impl WarnOnce {
    /// Logs `message` unless it was just logged.
    pub(crate) fn warn(&mut self, message: String) {
        if let Some((last, at)) = &self.last {
            if *last == message && at.elapsed() < REPEAT_AFTER {
                self.suppressed += 1;
                return;
            }
        }
        if self.suppressed > 0 {
            tracing::warn!("{message} (and {} similar since)", self.suppressed);
        } else {
            tracing::warn!("{message}");
        }
        self.suppressed = 0;
        self.last = Some((message, Instant::now()));
    }

    /// Forgets the last message (after a recovery), so the next failure is logged at once.
    pub(crate) fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let expected = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for ms in expected {
            let d = backoff.next_delay();
            let full = Duration::from_millis(ms);
            assert!(
                d >= full / 2 && d <= full,
                "{d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn identical_warnings_are_suppressed() {
        let mut warn = WarnOnce::default();
        warn.warn("etcd down".into());
        warn.warn("etcd down".into());
        warn.warn("etcd down".into());
        assert_eq!(warn.suppressed, 2);
        warn.warn("something else".into());
        assert_eq!(warn.suppressed, 0);
        warn.reset();
        assert!(warn.last.is_none());
    }
}
