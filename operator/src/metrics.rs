//! The operator's metrics in Prometheus text format: whether this replica leads, reconciles, their
//! errors by a bounded kind, their durations, and membership steps taken by kind.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the reconcile duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Whether this replica holds the leader lease (and so reconciles).
    leading: bool,
    reconciles: u64,
    /// By error kind; the kinds are a fixed set (`ReconcileError::kind`).
    errors: BTreeMap<&'static str, u64>,
    /// By step kind (`Step::kind`).
    steps: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    duration_sum: f64,
}

impl Metrics {
    pub fn reconciled(&self, took: Duration, error: Option<&'static str>) {
        let mut counts = self.lock();
        counts.reconciles += 1;
        if let Some(kind) = error {
            *counts.errors.entry(kind).or_default() += 1;
        }
        let seconds = took.as_secs_f64();
        counts.duration_sum += seconds;
        for (bucket, bound) in counts.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    pub fn set_leading(&self, leading: bool) {
        self.lock().leading = leading;
    }

    pub fn step_taken(&self, kind: &'static str) {
        *self.lock().steps.entry(kind).or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while counting leaves numbers that are still worth serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The text `/metrics` serves.
    pub fn render(&self) -> String {
        let counts = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cairn_operator_leader Whether this replica leads (1) or stands by (0)."
        );
        let _ = writeln!(out, "# TYPE cairn_operator_leader gauge");
        let _ = writeln!(out, "cairn_operator_leader {}", u8::from(counts.leading));
        let _ = writeln!(out, "# HELP cairn_operator_reconciles_total Reconciles run.");
        let _ = writeln!(out, "# TYPE cairn_operator_reconciles_total counter");
        let _ = writeln!(out, "cairn_operator_reconciles_total {}", counts.reconciles);
        let _ = writeln!(
            out,
            "# HELP cairn_operator_reconcile_errors_total Reconciles that failed, by kind."
        );
        let _ = writeln!(out, "# TYPE cairn_operator_reconcile_errors_total counter");
        for (kind, n) in &counts.errors {
            let _ = writeln!(
                out,
                "cairn_operator_reconcile_errors_total{{kind=\"{kind}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP cairn_operator_membership_steps_total Membership steps taken, by kind."
        );
        let _ = writeln!(out, "# TYPE cairn_operator_membership_steps_total counter");
        for (kind, n) in &counts.steps {
            let _ = writeln!(
                out,
                "cairn_operator_membership_steps_total{{step=\"{kind}\"}} {n}"
            );
        }
        let name = "cairn_operator_reconcile_duration_seconds";
        let _ = writeln!(out, "# HELP {name} How long reconciles take.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (n, bound) in counts.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", counts.reconciles);
        let _ = writeln!(out, "{name}_sum {}", counts.duration_sum);
        let _ = writeln!(out, "{name}_count {}", counts.reconciles);
        out
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
