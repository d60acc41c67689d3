//! The operator's metrics in Prometheus text format (the `prometheus` crate): whether this replica
//! leads, reconciles, their errors by a bounded kind, their durations, and membership steps taken
//! by kind.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
        Metrics {
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
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
