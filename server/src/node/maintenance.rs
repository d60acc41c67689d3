//! Maintenance (etcd's Maintenance service and the HTTP endpoints): status, alarms, hashes, the
//! store as a snapshot, health and metrics.

use std::sync::atomic::Ordering;

use super::leader::{LeaderCall, pick};
use super::{ETCD_API_VERSION, Node, NodeError};
use crate::pb::cairnpb::{Caller, raft_response::Response};
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, StatusResponse, alarm_request::AlarmAction,
};

impl Node {
    /// Gets, raises or disarms alarms; answers with the alarms in force.
    /// Raising or disarming one is root's once auth is on (checked at apply).
    pub async fn alarm(&self, caller: &Caller, request: AlarmRequest) -> Result<Vec<AlarmMember>, NodeError> {
        if request.action == AlarmAction::Get as i32 {
            return Ok(self.raft.read(|m| m.app.alarm_members()));
        }
        let response = self.write(LeaderCall::Alarm(request), caller).await?;
        pick(response, |r| match r {
            Response::Alarm(alarm) => Some(alarm.alarms),
            _ => None,
        })
        .map(|(alarms, _)| alarms)
    }

    /// This member's status, as etcd's Status reports it (header not set).
    pub fn status(&self) -> (StatusResponse, i64) {
        let metrics = self.raft.metrics();
        let (revision, db_size, alarms) = self.raft.read(|m| {
            (
                m.app.mvcc.revision(),
                m.app.mvcc.footprint() as i64,
                m.app.alarm_members(),
            )
        });
        let errors = alarms
            .iter()
            .map(|a| format!("memberID:{} alarm:{:?} ", a.member_id, a.alarm()))
            .collect();
        let status = StatusResponse {
            header: None,
            version: ETCD_API_VERSION.into(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: db_size,
            is_learner: self.raft.is_learner(),
            storage_version: ETCD_API_VERSION.into(),
            db_size_quota: self.config.quota_bytes as i64,
        };
        (status, revision)
    }

    /// The hash of the key space at `revision` (0: the latest), the revision hashed and the
    /// compacted revision.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), NodeError> {
        let hashed = self.raft.read(|m| {
            m.app
                .mvcc
                .hash_kv(revision)
                .map(|(hash, at)| (hash, at, m.app.mvcc.compacted_revision()))
        })?;
        Ok(hashed)
    }

    /// Hands leadership to `target` (etcd's MoveLeader); must run on the leader.
    pub async fn move_leader(&self, target: u64) -> Result<(), NodeError> {
        if !self.raft.is_leader() {
            return Err(NodeError::NotLeader);
        }
        let metrics = self.raft.metrics();
        if target == self.member_id {
            return Ok(());
        }
        if !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == target)
        {
            return Err(NodeError::BadLeaderTransferee);
        }
        self.raft
            .transfer_leadership(target, super::REQUEST_TIMEOUT, |m| {
                m.current_leader == Some(target)
            })
            .await
    }

    /// Before a leader stops, it hands leadership to the voter with the most of its log and waits,
    /// at most `within`, until that voter leads — so writes go on without waiting for an election
    /// (etcd's leadership transfer on stop). Answers the new leader, or None when this member does
    /// not lead or has no other voter. From then on this member takes no proposals, and the ones
    /// in flight are answered before the hand-over starts.
    pub async fn hand_over_leadership(&self, within: std::time::Duration) -> Result<Option<u64>, NodeError> {
        let metrics = self.raft.metrics();
        if metrics.state != openraft::ServerState::Leader {
            return Ok(None);
        }
        let matched = |id: &u64| {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |log_id| log_id.index)
        };
        let Some(target) = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.member_id)
            .max_by_key(matched)
        else {
            return Ok(None);
        };
        if !self.raft.close_proposals(within).await {
            tracing::warn!("proposals still unanswered when handing leadership over");
        }
        let me = self.member_id;
        self.raft
            .transfer_leadership(target, within, move |m| m.current_leader.is_some_and(|l| l != me))
            .await?;
        Ok(self.raft.leader_id())
    }

    /// Healthy means: no alarm, a leader, and a linearizable read that succeeds. The error is the
    /// reason, in etcd's words.
    pub async fn health(&self) -> Result<(), String> {
        self.health_ignoring(&[]).await
    }

    /// Readiness to serve clients: `health`, except that a NOSPACE alarm does not count. Such a
    /// member still serves reads, deletes and compactions (which are how an operator frees space),
    /// so taking every member out of its Service for it would only cut clients off.
    pub async fn readiness(&self) -> Result<(), String> {
        self.health_ignoring(&[AlarmType::Nospace]).await
    }

    async fn health_ignoring(&self, ignored: &[AlarmType]) -> Result<(), String> {
        let alarms = self.raft.read(|m| m.app.alarm_members());
        if let Some(alarm) = alarms.iter().find(|a| !ignored.contains(&a.alarm())) {
            return Err(format!("ALARM {}", alarm.alarm().as_str_name()));
        }
        if self.raft.leader_id().is_none() {
            return Err("RAFT NO LEADER".into());
        }
        self.linearizable_barrier()
            .await
            .map_err(|e| format!("QUORUM READ FAILED: {e}"))
    }

    /// The member's metrics in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let raft = self.raft.metrics();
        let snapshot = crate::metrics::Snapshot {
            has_leader: raft.current_leader.is_some(),
            is_leader: raft.state == openraft::ServerState::Leader,
            db_size_bytes: self.raft.read(|m| m.app.mvcc.footprint()),
            applied_index: raft.last_applied.map_or(0, |l| l.index),
            committed_index: raft.local_committed.map_or(0, |l| l.index),
            term: raft.current_term,
            watch_streams: self.feed.counts().streams.load(Ordering::Relaxed),
            watchers: self.feed.counts().watchers.load(Ordering::Relaxed),
            watch_history_reads: self.feed.counts().history_reads.load(Ordering::Relaxed),
        };
        self.metrics.render(&snapshot)
    }
}
