//! Server metrics in Prometheus text format (the `prometheus` crate), named after etcd's where the
//! meaning is the same so existing dashboards and `etcdctl check datascale` work.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Upper bounds of the WAL fsync histogram, in seconds (etcd's buckets).
const FSYNC_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
];

/// Upper bounds of the write stage histogram, in seconds: fine below a millisecond, where one put's
/// stages are, and coarse above.
const STAGE_BUCKETS: [f64; 20] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_4, 0.000_5, 0.000_6, 0.000_8,
    0.001, 0.001_25, 0.001_5, 0.002, 0.003, 0.005, 0.01, 0.1, 1.0,
];

/// The stages a write passes through, timed apart so a slow write can be traced to where its time
/// went (the README's latency breakdown of one put reads these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStage {
    /// A write inside this member: from its arrival at the node to its applied answer (through
    /// the leader, forwarded if need be).
    Write,
    /// Entries handed to the write-ahead log until they are durable (queue, write, fsync).
    WalAppend,
    /// The leader's AppendEntries round trip to one follower.
    PeerAppend,
    /// A follower's handling of one AppendEntries, its log append and fsync included.
    PeerAppendHandled,
    /// Applying one committed client entry to the state machine, the wait for its lock included.
    Apply,
}

impl WriteStage {
    pub const ALL: [WriteStage; 5] = [
        WriteStage::Write,
        WriteStage::WalAppend,
        WriteStage::PeerAppend,
        WriteStage::PeerAppendHandled,
        WriteStage::Apply,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WriteStage::Write => "write",
            WriteStage::WalAppend => "wal_append",
            WriteStage::PeerAppend => "peer_append",
            WriteStage::PeerAppendHandled => "peer_append_handled",
            WriteStage::Apply => "apply",
        }
    }
}

/// Where one stage's timings go, for parts that know nothing of metrics (storage, the network).
pub type StageObserver = Arc<dyn Fn(Duration) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    write_stages: HistogramVec,
    leader_changes: IntCounter,
    proposals_committed: IntCounter,
    proposals_failed: IntCounter,
    proposals_pending: IntGauge,
    wal_fsync: Histogram,
    /// Handled gRPC requests by method and code: both come from fixed sets (the served methods and
    /// gRPC's codes), so the label cardinality is bounded.
    grpc_handled: IntCounterVec,
    has_leader: IntGauge,
    is_leader: IntGauge,
    applied_index: IntGauge,
    committed_index: IntGauge,
    term: IntGauge,
    db_size_bytes: IntGauge,
    watch_streams: IntGauge,
    watchers: IntGauge,
    watch_history_reads: IntCounter,
}

/// Point-in-time figures the node supplies when metrics are rendered.
pub struct Snapshot {
    pub has_leader: bool,
    pub is_leader: bool,
    pub db_size_bytes: u64,
    pub applied_index: u64,
    pub committed_index: u64,
    pub term: u64,
    pub watch_streams: i64,
    pub watchers: i64,
    /// Catch-ups of watchers served from the store's history since start.
    pub watch_history_reads: u64,
}

fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are distinct");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help).expect("valid metric"))
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        // Memory, CPU and file descriptors of this process, as every Prometheus client reports them.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are distinct");
        let wal_fsync = Histogram::with_opts(
            HistogramOpts::new(
                "etcd_disk_wal_fsync_duration_seconds",
                "Latency of write-ahead log fsyncs.",
            )
            .buckets(FSYNC_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "gRPC requests handled, by method and code.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("valid metric");
        let write_stages = HistogramVec::new(
            HistogramOpts::new(
                "cairn_write_stage_duration_seconds",
                "Time writes spend in each stage: write (in the member, end to end), wal_append, \
                 peer_append (the leader's round trip), peer_append_handled (on the follower), apply.",
            )
            .buckets(STAGE_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        Metrics {
            write_stages: registered(&registry, write_stages),
            leader_changes: counter(
                &registry,
                "etcd_server_leader_changes_seen_total",
                "Leader changes seen.",
            ),
            proposals_committed: counter(
                &registry,
                "etcd_server_proposals_committed_total",
                "Proposals committed and applied.",
            ),
            proposals_failed: counter(
                &registry,
                "etcd_server_proposals_failed_total",
                "Proposals that failed.",
            ),
            proposals_pending: gauge(
                &registry,
                "etcd_server_proposals_pending",
                "Proposals waiting for commit.",
            ),
            wal_fsync: registered(&registry, wal_fsync),
            grpc_handled: registered(&registry, grpc_handled),
            has_leader: gauge(
                &registry,
                "etcd_server_has_leader",
                "Whether a leader exists (1) or not (0).",
            ),
            is_leader: gauge(
                &registry,
                "etcd_server_is_leader",
                "Whether this member leads (1) or not (0).",
            ),
            applied_index: gauge(
                &registry,
                "etcd_server_proposals_applied_total",
                "Index of the last applied entry.",
            ),
            committed_index: gauge(
                &registry,
                "etcd_server_committed_index",
                "Index of the last committed entry.",
            ),
            term: gauge(&registry, "etcd_server_term", "Current Raft term."),
            db_size_bytes: gauge(
                &registry,
                "etcd_mvcc_db_total_size_in_bytes",
                "Bytes held by the key space, history included.",
            ),
            watch_streams: gauge(
                &registry,
                "etcd_debugging_mvcc_watch_stream_total",
                "Open watch streams.",
            ),
            watchers: gauge(
                &registry,
                "etcd_debugging_mvcc_watcher_total",
                "Watchers on all watch streams.",
            ),
            watch_history_reads: counter(
                &registry,
                "cairn_watch_history_reads_total",
                "Times a watcher behind the newest revisions caught up from the store's history.",
            ),
            registry,
        }
    }
}

impl Metrics {
    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    pub fn proposal_pending(&self, delta: i64) {
        self.proposals_pending.add(delta);
    }

    pub fn proposal_done(&self, ok: bool) {
        if ok {
            self.proposals_committed.inc();
        } else {
            self.proposals_failed.inc();
        }
    }

    pub fn observe_stage(&self, stage: WriteStage, took: Duration) {
        self.write_stages
            .with_label_values(&[stage.label()])
            .observe(took.as_secs_f64());
    }

    /// An observer of `stage` for a part that must not know the metrics.
    pub fn stage_observer(&self, stage: WriteStage) -> StageObserver {
        let histogram = self.write_stages.with_label_values(&[stage.label()]);
        Arc::new(move |took: Duration| histogram.observe(took.as_secs_f64()))
    }

    pub fn observe_wal_fsync(&self, took: Duration) {
        self.wal_fsync.observe(took.as_secs_f64());
    }

    /// One handled call of `path` (`/package.Service/Method`, or "unknown"), labelled as etcd's
    /// gRPC metrics label it: type, service, method and code.
    pub fn grpc_handled(&self, path: &str, code: tonic::Code) {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        let kind = match method {
            "Watch" | "LeaseKeepAlive" => "bidi_stream",
            "Snapshot" | "Observe" => "server_stream",
            _ => "unary",
        };
        self.grpc_handled
            .with_label_values(&[kind, service, method, grpc_code_name(code)])
            .inc();
    }

    pub fn render(&self, now: &Snapshot) -> String {
        let as_gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.has_leader.set(i64::from(now.has_leader));
        self.is_leader.set(i64::from(now.is_leader));
        self.applied_index.set(as_gauge(now.applied_index));
        self.committed_index.set(as_gauge(now.committed_index));
        self.term.set(as_gauge(now.term));
        self.db_size_bytes.set(as_gauge(now.db_size_bytes));
        self.watch_streams.set(now.watch_streams);
        self.watchers.set(now.watchers);
        let reads = now
            .watch_history_reads
            .saturating_sub(self.watch_history_reads.get());
        self.watch_history_reads.inc_by(reads);
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_render_under_etcds_names() {
        let metrics = Metrics::default();
        metrics.leader_changed();
        metrics.proposal_done(true);
        metrics.proposal_done(false);
        metrics.observe_wal_fsync(Duration::from_millis(3));
        metrics.observe_stage(WriteStage::PeerAppend, Duration::from_micros(450));
        (metrics.stage_observer(WriteStage::Apply))(Duration::from_micros(70));
        metrics.grpc_handled("/etcdserverpb.KV/Put", tonic::Code::Ok);
        let text = metrics.render(&Snapshot {
            has_leader: true,
            is_leader: false,
            db_size_bytes: 4096,
            applied_index: 12,
            committed_index: 13,
            term: 2,
            watch_streams: 2,
            watchers: 5,
            watch_history_reads: 3,
        });
        for line in [
            "# TYPE etcd_server_has_leader gauge",
            "etcd_server_has_leader 1",
            "etcd_debugging_mvcc_watch_stream_total 2",
            "etcd_debugging_mvcc_watcher_total 5",
            "cairn_watch_history_reads_total 3",
            "etcd_server_is_leader 0",
            "# TYPE etcd_server_leader_changes_seen_total counter",
            "etcd_server_leader_changes_seen_total 1",
            "etcd_server_proposals_committed_total 1",
            "etcd_server_proposals_failed_total 1",
            "etcd_server_proposals_applied_total 12",
            "etcd_server_committed_index 13",
            "etcd_server_term 2",
            "etcd_mvcc_db_total_size_in_bytes 4096",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 0",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1",
            "etcd_disk_wal_fsync_duration_seconds_count 1",
            "cairn_write_stage_duration_seconds_bucket{stage=\"peer_append\",le=\"0.0004\"} 0",
            "cairn_write_stage_duration_seconds_bucket{stage=\"peer_append\",le=\"0.0005\"} 1",
            "cairn_write_stage_duration_seconds_bucket{stage=\"apply\",le=\"0.0001\"} 1",
            "cairn_write_stage_duration_seconds_count{stage=\"apply\"} 1",
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("process_resident_memory_bytes ")),
            "{text}"
        );
    }
}
