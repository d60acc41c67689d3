//! Server metrics in Prometheus text format, named after etcd's where the meaning is the same so
//! existing dashboards and `etcdctl check datascale` work.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the WAL fsync histogram, in seconds (etcd's buckets).
const FSYNC_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
];

#[derive(Default)]
pub struct Metrics {
    leader_changes: AtomicU64,
    proposals_committed: AtomicU64,
    proposals_failed: AtomicU64,
    proposals_pending: AtomicI64,
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len()],
    fsync_count: AtomicU64,
    fsync_sum_micros: AtomicU64,
    /// Handled gRPC requests by (path, code): both come from fixed sets (the served methods and
    /// gRPC's codes), so the label cardinality is bounded.
    grpc: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// Point-in-time figures the node supplies when metrics are rendered.
pub struct Snapshot {
    pub has_leader: bool,
    pub is_leader: bool,
    pub db_size_bytes: u64,
    pub applied_index: u64,
    pub committed_index: u64,
    pub term: u64,
}

impl Metrics {
    pub fn leader_changed(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn proposal_pending(&self, delta: i64) {
        self.proposals_pending.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn proposal_done(&self, ok: bool) {
        let counter = if ok {
            &self.proposals_committed
        } else {
            &self.proposals_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_wal_fsync(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, bucket) in FSYNC_BUCKETS.iter().zip(&self.fsync_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.fsync_count.fetch_add(1, Ordering::Relaxed);
        self.fsync_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn grpc_handled(&self, method: &str, code: tonic::Code) {
        let code = grpc_code_name(code);
        let mut grpc = self.grpc.lock().expect("metrics lock poisoned");
        match grpc.get_mut(&(method.to_owned(), code)) {
            Some(count) => *count += 1,
            None => {
                grpc.insert((method.to_owned(), code), 1);
            }
        }
    }

    pub fn render(&self, now: &Snapshot) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether a leader exists (1) or not (0).",
            f64::from(u8::from(now.has_leader)),
        );
        gauge(
            &mut out,
            "etcd_server_is_leader",
            "Whether this member leads (1) or not (0).",
            f64::from(u8::from(now.is_leader)),
        );
        counter(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "Leader changes seen.",
            self.leader_changes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "etcd_server_proposals_committed_total",
            "Proposals committed and applied.",
            self.proposals_committed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "etcd_server_proposals_failed_total",
            "Proposals that failed.",
            self.proposals_failed.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_pending",
            "Proposals waiting for commit.",
            self.proposals_pending.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_applied_total",
            "Index of the last applied entry.",
            now.applied_index as f64,
        );
        gauge(
            &mut out,
            "etcd_server_committed_index",
            "Index of the last committed entry.",
            now.committed_index as f64,
        );
        gauge(
            &mut out,
            "etcd_server_term",
            "Current Raft term.",
            now.term as f64,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Bytes held by the key space, history included.",
            now.db_size_bytes as f64,
        );
        let name = "etcd_disk_wal_fsync_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of write-ahead log fsyncs.\n# TYPE {name} histogram"
        );
        for (bound, bucket) in FSYNC_BUCKETS.iter().zip(&self.fsync_buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.fsync_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.fsync_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        let name = "grpc_server_handled_total";
        let _ = writeln!(
            out,
            "# HELP {name} gRPC requests handled, by method and code.\n# TYPE {name} counter"
        );
        for ((method, code), value) in self.grpc.lock().expect("metrics lock poisoned").iter() {
            let _ = writeln!(
                out,
                "{name}{{grpc_method=\"{method}\",grpc_code=\"{code}\"}} {value}"
            );
        }
        let rss = resident_memory_bytes();
        gauge(
            &mut out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss as f64,
        );
        out
    }
}

fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
        Unknown => "Unknown",
    }
}

fn resident_memory_bytes() -> u64 {
    // /proc/self/statm: size resident ... in pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}
