//! `/metrics` on the health server: the agent's state and activity in Prometheus' text format,
//! through the `prometheus-client` crate. Every name starts with `flannel_`; counters end in
//! `_total`, durations are seconds. `docs/metrics.md` lists them all.
//!
//! The control loop and the firewall record what they do as they do it; the lease manager's
//! counters and the seconds since etcd last answered are copied in on the loop's 1 s tick. etcd
//! requests are counted by [`Instrumented`], a [`Registry`] wrapper every store user goes
//! through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry as MetricRegistry, Unit};

use subnet::{
    ConfigWatch, LeaseAttrs, LeaseCounters, NetworkConfig, PutGuard, Registry, RegistryError,
    StoredLease, SubnetKey, WatchScope, WatchUpdate,
};
use tokio::sync::mpsc;

use crate::build_info;

macro_rules! label_set {
    ($type:ident, $($field:ident),+) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $type {
            $($field: String,)+
        }
    };
}

label_set!(CauseLabel, cause);
label_set!(OpLabel, op);
label_set!(ReasonLabel, reason);
label_set!(BackendLabel, backend);
label_set!(StateLabel, state);
label_set!(ChangeLabels, kind, op);
label_set!(LeaseLabels, subnet, public_ip);

/// Every metric of the agent.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: MetricRegistry,
    lease_info: Family<LeaseLabels, Gauge>,
    lease_expires_in: Gauge<f64, AtomicU64>,
    lease_renewals: Counter,
    lease_reclaims: Counter,
    lease_races_lost: Counter,
    peers: Family<StateLabel, Gauge>,
    peers_skipped: Family<ReasonLabel, Gauge>,
    ignored_keys: Family<ReasonLabel, Counter>,
    peers_by_backend: Family<BackendLabel, Gauge>,
    reconcile_runs: Family<CauseLabel, Counter>,
    reconcile_changes: Family<ChangeLabels, Counter>,
    reconcile_errors: Counter,
    reconcile_duration: Histogram,
    etcd_requests: Family<OpLabel, Counter>,
    etcd_errors: Family<OpLabel, Counter>,
    etcd_watch_restarts: Counter,
    etcd_watch_relists: Counter,
    etcd_silence: Gauge<f64, AtomicU64>,
    netfilter_checks: Counter,
    netfilter_repairs: Counter,
    netfilter_foreign: Gauge,
}

impl Metrics {
    /// Every metric, registered, with the build info set.
    pub(crate) fn new() -> Arc<Metrics> {
        let mut registry = MetricRegistry::with_prefix("flannel");
        let build = Info::new(vec![
            ("version".to_string(), build_info::VERSION.to_string()),
            ("commit".to_string(), build_info::COMMIT.to_string()),
            ("target".to_string(), build_info::TARGET.to_string()),
        ]);
        registry.register("build", "flanneld-rs build information", build);
        let metrics = Metrics {
            lease_info: registered(&mut registry, "lease_info", "this host's lease (1), with its subnet and PublicIP as labels"),
            lease_expires_in: registered_unit(&mut registry, "lease_expires_in", "time until this host's lease expires (0 when it is not valid)"),
            lease_renewals: registered(&mut registry, "lease_renewals", "lease renewals written"),
            lease_reclaims: registered(&mut registry, "lease_reclaims", "re-claims of our subnet after the lease vanished"),
            lease_races_lost: registered(&mut registry, "lease_races_lost", "subnet creation races lost to another host"),
            peers: registered(&mut registry, "peers", "peer leases by state: known (valid), programmed, skipped by the backend, rejected by the lease policy"),
            peers_skipped: registered(&mut registry, "peers_skipped", "peer leases not programmed, by reason"),
            ignored_keys: registered(&mut registry, "ignored_keys", "keys under the subnets prefix not used as leases (bad key, bad value, too large, rejected by the lease policy); logged by name only for the first few"),
            peers_by_backend: registered(&mut registry, "peers_by_backend", "known peer leases by backend type"),
            reconcile_runs: registered(&mut registry, "reconcile_runs", "data plane reconciles, by what caused them"),
            reconcile_changes: registered(&mut registry, "reconcile_changes", "kernel objects written, by kind (route, neighbour, fdb) and op (add, replace, delete)"),
            reconcile_errors: registered(&mut registry, "reconcile_errors", "kernel objects that could not be programmed"),
            reconcile_duration: registered_unit_with(&mut registry, "reconcile_duration", "duration of data plane reconciles", Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            etcd_requests: registered(&mut registry, "etcd_requests", "etcd requests, by operation"),
            etcd_errors: registered(&mut registry, "etcd_errors", "failed etcd requests, by operation"),
            etcd_watch_restarts: registered(&mut registry, "etcd_watch_restarts", "restarts of the peer lease watch"),
            etcd_watch_relists: registered(&mut registry, "etcd_watch_relists", "complete re-listings of the peer leases after the first (compaction, restore or lost connection)"),
            etcd_silence: registered_unit(&mut registry, "etcd_last_contact_age", "time since etcd last answered the lease manager"),
            netfilter_checks: registered(&mut registry, "netfilter_checks", "iptables rule checks run"),
            netfilter_repairs: registered(&mut registry, "netfilter_repairs", "iptables rule checks that (re)applied rules"),
            netfilter_foreign: registered(&mut registry, "netfilter_foreign_masquerade_rules", "foreign MASQUERADE/SNAT rules seen for the cluster Network (docker's)"),
            registry,
        };
        Arc::new(metrics)
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        self.sync_ignored_keys();
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Brings `flannel_ignored_keys_total` up to the counts of the process's reporter, which the
    /// registries and the lease policy feed (`subnet::ignored_keys`), every reason from zero.
    fn sync_ignored_keys(&self) {
        let totals = subnet::ignored_keys().totals();
        // Every reason from zero, so a rate alert works before the first junk key.
        for reason in subnet::IgnoreReason::ALL {
            let total = totals.get(&reason).copied().unwrap_or(0);
            let counter = self.ignored_keys.get_or_create(&ReasonLabel {
                reason: reason.label().to_string(),
            });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// This host's lease and the time until it expires.
    pub(crate) fn set_lease(&self, subnet: &str, public_ip: &str, expires_in: Option<Duration>) {
        let labels = LeaseLabels {
            subnet: subnet.into(),
            public_ip: public_ip.into(),
        };
        if self.lease_info.get_or_create(&labels).get() == 0 {
            self.lease_info.clear();
            self.lease_info.get_or_create(&labels).set(1);
        }
        self.lease_expires_in
            .set(expires_in.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// Copies the lease manager's counters and the seconds since etcd's last answer.
    pub(crate) fn sync_lease(&self, counters: &LeaseCounters, etcd_silence: Duration) {
        let copy = |to: &Counter, from: &AtomicU64| {
            to.inner()
                .store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        copy(&self.lease_renewals, &counters.renewals);
        copy(&self.lease_reclaims, &counters.reclaims);
        copy(&self.lease_races_lost, &counters.races_lost);
        self.etcd_silence.set(etcd_silence.as_secs_f64());
    }

    /// The peer counts after a reconcile.
    pub(crate) fn set_peers(&self, counts: &PeerCounts) {
        for (state, n) in [
            ("known", counts.known),
            ("programmed", counts.programmed),
            ("skipped", counts.skipped.iter().map(|(_, n)| n).sum()),
            ("rejected", counts.rejected),
        ] {
            self.peers
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(gauge(n));
        }
        self.peers_skipped.clear();
        for (reason, n) in &counts.skipped {
            self.peers_skipped
                .get_or_create(&ReasonLabel {
                    reason: (*reason).into(),
                })
                .set(gauge(*n));
        }
        self.peers_by_backend.clear();
        for (backend, n) in &counts.by_backend {
            self.peers_by_backend
                .get_or_create(&BackendLabel {
                    backend: backend.clone(),
                })
                .set(gauge(*n));
        }
    }

    /// One reconcile: its cause, what it wrote, its errors and how long it took.
    pub(crate) fn record_reconcile(&self, cause: &str, report: &backends::Report, took: Duration) {
        self.reconcile_runs
            .get_or_create(&CauseLabel {
                cause: cause.into(),
            })
            .inc();
        for ((kind, change), n) in &report.changed {
            let labels = ChangeLabels {
                kind: kind.label().into(),
                op: change.label().into(),
            };
            self.reconcile_changes
                .get_or_create(&labels)
                .inc_by(*n as u64);
        }
        self.reconcile_errors.inc_by(report.errors.len() as u64);
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// One rule check: whether it (re)applied rules, and the foreign rules it saw.
    pub(crate) fn record_rule_check(&self, applied: bool, foreign: usize) {
        self.netfilter_checks.inc();
        if applied {
            self.netfilter_repairs.inc();
        }
        self.netfilter_foreign.set(gauge(foreign));
    }

    /// The peer watch was restarted.
    pub(crate) fn record_watch_restart(&self) {
        self.etcd_watch_restarts.inc();
    }

    /// The peer watch delivered a complete listing after its first.
    pub(crate) fn record_relist(&self) {
        self.etcd_watch_relists.inc();
    }

    fn record_etcd(&self, op: &'static str, failed: bool) {
        let labels = OpLabel { op: op.into() };
        self.etcd_requests.get_or_create(&labels).inc();
        if failed {
            self.etcd_errors.get_or_create(&labels).inc();
        }
    }
}

/// Peer counts for [`Metrics::set_peers`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerCounts {
    pub known: usize,
    pub programmed: usize,
    pub rejected: usize,
    pub skipped: Vec<(&'static str, usize)>,
    pub by_backend: Vec<(String, usize)>,
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn registered<M: Default + Clone + prometheus_client::registry::Metric>(
    registry: &mut MetricRegistry,
    name: &str,
    help: &str,
) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

fn registered_unit<M: Default + Clone + prometheus_client::registry::Metric>(
    registry: &mut MetricRegistry,
    name: &str,
    help: &str,
) -> M {
    registered_unit_with(registry, name, help, M::default())
}

fn registered_unit_with<M: Clone + prometheus_client::registry::Metric>(
    registry: &mut MetricRegistry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

/// A [`Registry`] whose every etcd request is counted by operation (and its failures).
#[derive(Clone)]
pub(crate) struct Instrumented<R> {
    inner: R,
    metrics: Arc<Metrics>,
}

impl<R> Instrumented<R> {
    /// Counts `inner`'s requests into `metrics`.
    pub(crate) fn new(inner: R, metrics: Arc<Metrics>) -> Self {
        Instrumented { inner, metrics }
    }

    fn counted<T>(
        &self,
        op: &'static str,
        result: Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        self.metrics.record_etcd(op, result.is_err());
        result
    }
}

impl<R: Registry> Registry for Instrumented<R> {
    async fn network_config(&self) -> Result<NetworkConfig, RegistryError> {
        self.counted("get_config", self.inner.network_config().await)
    }

    async fn list_leases(&self) -> Result<Vec<StoredLease>, RegistryError> {
        self.counted("list_leases", self.inner.list_leases().await)
    }

    async fn get_lease(&self, key: SubnetKey) -> Result<Option<StoredLease>, RegistryError> {
        self.counted("get_lease", self.inner.get_lease(key).await)
    }

    async fn put_lease(
        &self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
        guard: PutGuard,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>, RegistryError> {
        let result = self.inner.put_lease(key, attrs, guard, ttl).await;
        self.counted("put_lease", result)
    }

    async fn delete_lease(&self, key: SubnetKey, mod_revision: i64) -> Result<bool, RegistryError> {
        self.counted(
            "delete_lease",
            self.inner.delete_lease(key, mod_revision).await,
        )
    }

    fn stored_attrs(&self, attrs: &LeaseAttrs) -> LeaseAttrs {
        self.inner.stored_attrs(attrs)
    }

    fn watch_leases(&self, scope: WatchScope) -> mpsc::Receiver<WatchUpdate> {
        self.metrics.record_etcd("watch", false);
        self.inner.watch_leases(scope)
    }

    fn watch_config(&self) -> mpsc::Receiver<ConfigWatch> {
        self.metrics.record_etcd("watch", false);
        self.inner.watch_config()
    }

    fn watch_is_open(&self) -> bool {
        self.inner.watch_is_open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_by_convention() {
        let metrics = Metrics::new();
        metrics.set_lease("10.5.1.0/24", "192.168.1.5", Some(Duration::from_secs(90)));
        metrics.record_rule_check(true, 1);
        let text = metrics.render();
        let families: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        for (family, kind) in &families {
            assert!(family.starts_with("flannel_"), "{family}");
            if *kind == "counter" {
                assert!(text.contains(&format!("{family}_total")), "{family}");
            }
        }
        assert!(
            text.contains("flannel_lease_info{subnet=\"10.5.1.0/24\",public_ip=\"192.168.1.5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flannel_lease_expires_in_seconds 90.0"),
            "{text}"
        );
        assert!(text.contains("flannel_netfilter_repairs_total 1"), "{text}");
    }

    /// Metrics with every family holding a value.
    fn populated() -> Arc<Metrics> {
        let metrics = Metrics::new();
        metrics.set_lease("10.5.1.0/24", "192.168.1.5", None);
        metrics.sync_lease(&LeaseCounters::default(), Duration::from_secs(1));
        metrics.set_peers(&PeerCounts {
            known: 2,
            programmed: 1,
            rejected: 0,
            skipped: vec![("backend_type", 1)],
            by_backend: vec![("vxlan".into(), 2)],
        });
        let mut report = backends::Report::default();
        report
            .changed
            .insert((backends::ObjectKind::Route, backends::Change::Added), 1);
        metrics.record_reconcile("start", &report, Duration::from_millis(3));
        metrics.record_etcd("list_leases", true);
        metrics.record_watch_restart();
        metrics.record_relist();
        metrics
    }

    #[test]
    fn docs_and_dashboard_name_exactly_the_exported_metrics() {
        let text = populated().render();
        let exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(|family| {
                match text.contains(&format!("{family}_total "))
                    || text.contains(&format!("{family}_total{{"))
                {
                    true => format!("{family}_total"),
                    false if family == "flannel_build" => "flannel_build_info".into(),
                    false => family.to_string(),
                }
            })
            .collect();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
        let documented: std::collections::BTreeSet<String> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `flannel_"))
            .filter_map(|l| l.split('`').next())
            .map(|name| format!("flannel_{name}"))
            .collect();
        assert_eq!(
            documented, exported,
            "docs/metrics.md lists exactly the exported metrics"
        );
        let dashboard =
            std::fs::read_to_string(root.join("contrib/grafana/flanneld-rs.json")).unwrap();
        let used = dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for name in used.filter(|w| w.starts_with("flannel_")) {
            let base = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                exported.contains(base),
                "the dashboard queries {name}, which is not exported"
            );
        }
    }
}
