//! The operator's metrics in Prometheus text format (the `prometheus` crate): whether this replica
//! leads, reconciles, their errors by a bounded kind, their durations, membership steps taken
//! by kind, and each cluster's backups.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Upper bounds of the reconcile duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct Metrics {
    registry: Registry,
    /// Whether this replica holds the leader lease (and so reconciles).
    leading: IntGauge,
    reconciles: IntCounter,
    /// By error kind; the kinds are a fixed set (`ReconcileError::kind`).
    errors: IntCounterVec,
    /// By step kind (`Step::kind`).
    steps: IntCounterVec,
    durations: Histogram,
    /// Backups that finished, by cluster and result (`succeeded`, `failed`).
    backups: IntCounterVec,
    /// Of each cluster's last successful backup: when its snapshot was taken, its size, and how
    /// long it took.
    backup_time: IntGaugeVec,
    backup_size: IntGaugeVec,
    backup_seconds: GaugeVec,
}

fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are distinct");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let leading = IntGauge::new(
            "cairn_operator_leader",
            "Whether this replica leads (1) or stands by (0).",
        )
        .expect("valid metric");
        let reconciles =
            IntCounter::new("cairn_operator_reconciles_total", "Reconciles run.").expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "cairn_operator_reconcile_errors_total",
                "Reconciles that failed, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let steps = IntCounterVec::new(
            Opts::new(
                "cairn_operator_membership_steps_total",
                "Membership steps taken, by kind.",
            ),
            &["step"],
        )
        .expect("valid metric");
        let durations = Histogram::with_opts(
            HistogramOpts::new(
                "cairn_operator_reconcile_duration_seconds",
                "How long reconciles take.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let cluster = ["namespace", "cluster"];
        let backups = IntCounterVec::new(
            Opts::new(
                "cairn_operator_backups_total",
                "Backups that finished, by cluster and result.",
            ),
            &["namespace", "cluster", "result"],
        )
        .expect("valid metric");
        let backup_time = IntGaugeVec::new(
            Opts::new(
                "cairn_operator_backup_last_success_timestamp_seconds",
                "When the snapshot of the cluster's last successful backup was taken.",
            ),
            &cluster,
        )
        .expect("valid metric");
        let backup_size = IntGaugeVec::new(
            Opts::new(
                "cairn_operator_backup_last_size_bytes",
                "The size of the cluster's last successful backup.",
            ),
            &cluster,
        )
        .expect("valid metric");
        let backup_seconds = GaugeVec::new(
            Opts::new(
                "cairn_operator_backup_last_duration_seconds",
                "How long the cluster's last successful backup took, verification included.",
            ),
            &cluster,
        )
        .expect("valid metric");
        Metrics {
            backups: registered(&registry, backups),
            backup_time: registered(&registry, backup_time),
            backup_size: registered(&registry, backup_size),
            backup_seconds: registered(&registry, backup_seconds),
            leading: registered(&registry, leading),
            reconciles: registered(&registry, reconciles),
            errors: registered(&registry, errors),
            steps: registered(&registry, steps),
            durations: registered(&registry, durations),
            registry,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        if let Some(kind) = error {
            self.errors.with_label_values(&[kind]).inc();
        }
        self.durations.observe(took.as_secs_f64());
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }

    pub fn step_taken(&self, kind: &'static str) {
        self.steps.with_label_values(&[kind]).inc();
    }

    pub fn backup_succeeded(
        &self,
        namespace: &str,
        cluster: &str,
        size: u64,
        seconds: Option<f64>,
        taken_at: k8s_openapi::jiff::Timestamp,
    ) {
        let labels = [namespace, cluster];
        self.backups
            .with_label_values(&[namespace, cluster, "succeeded"])
            .inc();
        self.backup_time
            .with_label_values(&labels)
            .set(taken_at.as_second());
        self.backup_size
            .with_label_values(&labels)
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        if let Some(seconds) = seconds {
            self.backup_seconds.with_label_values(&labels).set(seconds);
        }
    }

    pub fn backup_failed(&self, namespace: &str, cluster: &str) {
        self.backups
            .with_label_values(&[namespace, cluster, "failed"])
            .inc();
    }

    /// The text `/metrics` serves.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text() {
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(30), None);
        metrics.reconciled(Duration::from_secs(3), Some("api"));
        metrics.step_taken("add_learner");
        metrics.backup_failed("prod", "kv");
        let taken = k8s_openapi::jiff::Timestamp::from_second(1_765_000_000).unwrap();
        metrics.backup_succeeded("prod", "kv", 4096, Some(1.5), taken);
        assert!(metrics.render().lines().any(|l| l == "cairn_operator_leader 0"));
        metrics.set_leading(true);
        let text = metrics.render();
        for line in [
            "cairn_operator_leader 1",
            "cairn_operator_reconciles_total 2",
            "cairn_operator_reconcile_errors_total{kind=\"api\"} 1",
            "cairn_operator_membership_steps_total{step=\"add_learner\"} 1",
            "cairn_operator_reconcile_duration_seconds_bucket{le=\"0.025\"} 0",
            "cairn_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 1",
            "cairn_operator_reconcile_duration_seconds_bucket{le=\"5\"} 2",
            "cairn_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "cairn_operator_reconcile_duration_seconds_count 2",
            "cairn_operator_backups_total{cluster=\"kv\",namespace=\"prod\",result=\"failed\"} 1",
            "cairn_operator_backups_total{cluster=\"kv\",namespace=\"prod\",result=\"succeeded\"} 1",
            "cairn_operator_backup_last_success_timestamp_seconds{cluster=\"kv\",namespace=\"prod\"} 1765000000",
            "cairn_operator_backup_last_size_bytes{cluster=\"kv\",namespace=\"prod\"} 4096",
            "cairn_operator_backup_last_duration_seconds{cluster=\"kv\",namespace=\"prod\"} 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
