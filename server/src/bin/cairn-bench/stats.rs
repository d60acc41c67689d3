//! Latency summary of one benchmark run: throughput and percentiles, as text or one JSON line.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub workload: String,
    pub requests: usize,
    pub errors: usize,
    pub seconds: f64,
    pub ops_per_second: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The latency under which `fraction` of the (sorted) samples fall.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Report {
    pub fn new(workload: String, mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Report {
        latencies.sort_unstable();
        let requests = latencies.len();
        let total: Duration = latencies.iter().sum();
        Report {
            workload,
            requests,
            errors,
            seconds: elapsed.as_secs_f64(),
            ops_per_second: requests as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            mean_ms: if requests == 0 {
                0.0
            } else {
                ms(total) / requests as f64
            },
            p50_ms: ms(percentile(&latencies, 0.50)),
            p90_ms: ms(percentile(&latencies, 0.90)),
            p99_ms: ms(percentile(&latencies, 0.99)),
            max_ms: ms(latencies.last().copied().unwrap_or_default()),
        }
    }

    pub fn text(&self) -> String {
        format!(
            "Summary ({}):\n  Total:\t{:.4} secs.\n  Requests/sec:\t{:.1}\n  Requests:\t{} ok, {} failed\n  \
             Average:\t{:.4} ms\n  Latency:\tp50 {:.4} ms, p90 {:.4} ms, p99 {:.4} ms, max {:.4} ms",
            self.workload,
            self.seconds,
            self.ops_per_second,
            self.requests,
            self.errors,
            self.mean_ms,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let report = Report::new("put".into(), samples, 2, Duration::from_secs(2));
        assert_eq!(report.requests, 100);
        assert_eq!(report.ops_per_second, 50.0);
        assert_eq!(
            (report.p50_ms, report.p90_ms, report.p99_ms, report.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(report.mean_ms, 50.5);
        let empty = Report::new("range".into(), Vec::new(), 0, Duration::from_secs(1));
        assert_eq!(empty.p99_ms, 0.0);
    }
}
