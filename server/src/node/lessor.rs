//! Leases (etcd's Lease service) and the lessor, which decides when they run out. Only the leader's
//! clock decides; it proposes the revoke through the log so every member deletes the lease's keys at
//! the same revision. A new leader gives every lease a full TTL again (as etcd does without
//! checkpointing).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::leader::{LeaderCall, pick};
use super::{Node, NodeError};
use crate::auth::Access;
use crate::pb::cairnpb::{Caller, RaftRequest, raft_request, raft_response::Response};
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};

pub struct Lessor {
    state: Mutex<LessorState>,
    /// Shortest TTL granted: 1.5 election timeouts, so a lease outlives a leader change.
    pub min_ttl: i64,
}

#[derive(Default)]
struct LessorState {
    /// The term these deadlines were set in; another term means another leader's clock.
    term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
    revoking: BTreeSet<i64>,
}

impl Lessor {
    pub fn new(election_timeout: Duration) -> Lessor {
        let min_ttl = (election_timeout.as_secs_f64() * 1.5).ceil().max(1.0) as i64;
        Lessor {
            state: Mutex::default(),
            min_ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LessorState> {
        self.state.lock().expect("lessor lock poisoned")
    }
}

impl Node {
    /// Grants a lease; the leader settles its ID and minimum TTL before proposing it.
    pub async fn lease_grant(
        &self,
        caller: &Caller,
        request: LeaseGrantRequest,
    ) -> Result<(LeaseGrantResponse, i64), NodeError> {
        let response = self.write(LeaderCall::LeaseGrant(request), caller).await?;
        pick(response, |r| match r {
            Response::LeaseGrant(grant) => Some(grant),
            _ => None,
        })
    }

    /// Revokes a lease and deletes its keys; answers with the revision of the revoke.
    pub async fn lease_revoke(&self, caller: &Caller, request: LeaseRevokeRequest) -> Result<i64, NodeError> {
        let response = self.write(LeaderCall::LeaseRevoke(request), caller).await?;
        pick(response, |r| match r {
            Response::LeaseRevoke(revoke) => Some(revoke),
            _ => None,
        })
        .map(|(_, revision)| revision)
    }

    /// Renews a lease by the leader's clock: the renewed TTL, or 0 if the lease does not exist.
    pub async fn lease_keep_alive(&self, caller: &Caller, id: i64) -> Result<i64, NodeError> {
        let call = LeaderCall::LeaseKeepAlive(LeaseKeepAliveRequest { id });
        self.on_leader(call, caller).await?.lease_ttl()
    }

    /// A lease's remaining TTL (by the leader's clock), granted TTL and, if asked, its keys. With
    /// auth on, the caller must be able to read every key of the lease (as in etcd).
    pub async fn lease_time_to_live(
        &self,
        caller: &Caller,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, NodeError> {
        let id = request.id;
        let with_keys = request.keys;
        let ttl = self
            .on_leader(LeaderCall::LeaseTimeToLive(request), caller)
            .await?
            .lease_ttl()?;
        let (granted_ttl, keys) = self.raft.read(|m| {
            let Some(lease) = m.app.mvcc.lease(id) else {
                return Ok((0, vec![]));
            };
            m.app
                .auth
                .check_keys(caller, lease.keys.iter().map(|k| &k[..]), Access::Read)?;
            Ok::<_, crate::auth::AuthError>((
                lease.granted_ttl,
                lease.keys.iter().map(|k| k.to_vec()).collect(),
            ))
        })?;
        Ok(LeaseTimeToLiveResponse {
            header: None,
            id,
            ttl,
            granted_ttl,
            keys: if with_keys { keys } else { vec![] },
        })
    }

    /// Every lease this member's store holds.
    pub fn leases(&self) -> Vec<LeaseStatus> {
        self.raft
            .read(|m| m.app.mvcc.leases().map(|(id, _)| LeaseStatus { id }).collect())
    }

    /// Renews a lease on the leader; the renewed TTL, or 0 if the lease does not exist.
    pub(super) fn lease_renew_here(&self, id: i64) -> Result<i64, NodeError> {
        if !self.raft.is_leader() {
            return Err(NodeError::NotLeader);
        }
        let Some(ttl) = self.raft.read(|m| m.app.mvcc.lease(id).map(|l| l.granted_ttl)) else {
            return Ok(0);
        };
        let mut state = self.lessor.lock();
        if state.revoking.contains(&id) {
            return Ok(0);
        }
        state
            .deadlines
            .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
        Ok(ttl)
    }

    /// Seconds left on a lease by the leader's clock; -1 if the lease does not exist.
    pub(super) fn lease_remaining_here(&self, id: i64) -> Result<i64, NodeError> {
        if !self.raft.is_leader() {
            return Err(NodeError::NotLeader);
        }
        let Some(ttl) = self.raft.read(|m| m.app.mvcc.lease(id).map(|l| l.granted_ttl)) else {
            return Ok(-1);
        };
        let state = self.lessor.lock();
        Ok(match state.deadlines.get(&id) {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => ttl,
        })
    }

    /// One pass of the leader's expiry check: returns the leases that ran out.
    fn expired_leases(&self) -> Vec<i64> {
        let metrics = self.raft.metrics();
        let mut state = self.lessor.lock();
        if metrics.state != openraft::ServerState::Leader {
            *state = LessorState::default();
            return vec![];
        }
        let now = Instant::now();
        let leases: Vec<(i64, i64)> = self
            .raft
            .read(|m| m.app.mvcc.leases().map(|(id, l)| (id, l.granted_ttl)).collect());
        if state.term != Some(metrics.current_term) {
            state.term = Some(metrics.current_term);
            state.deadlines.clear();
            state.revoking.clear();
        }
        let live: BTreeSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        state.deadlines.retain(|id, _| live.contains(id));
        state.revoking.retain(|id| live.contains(id));
        for (id, ttl) in leases {
            state
                .deadlines
                .entry(id)
                .or_insert_with(|| now + Duration::from_secs(ttl as u64));
        }
        let expired: Vec<i64> = state
            .deadlines
            .iter()
            .filter(|(id, deadline)| **deadline <= now && !state.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        state.revoking.extend(expired.iter().copied());
        expired
    }
}

/// Checks for expired leases every 250 ms and revokes them through the log.
pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        for id in node.expired_leases() {
            let request = RaftRequest {
                request: Some(raft_request::Request::LeaseRevoke(LeaseRevokeRequest { id })),
                caller: Some(Caller::internal()),
            };
            match node.raft.propose(request).await {
                Ok(_) => tracing::debug!(lease = %format!("{id:x}"), "lease expired and revoked"),
                Err(error) => {
                    tracing::warn!(lease = %format!("{id:x}"), %error, "revoking an expired lease failed; will retry");
                    node.lessor.lock().revoking.remove(&id);
                }
            }
        }
    }
}
