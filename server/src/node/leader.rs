//! The one way to the leader. A request only the leader may serve (a write, a read index, a lease's
//! clock, a membership change) is served here when this member leads and forwarded to the leader
//! otherwise; the leader serves a forwarded request through the same checks as its own clients'.

use std::time::{Duration, Instant};

use super::{Node, NodeError, REQUEST_TIMEOUT};
use crate::network::PeerError;
use crate::pb::cairnpb::{Caller, RaftRequest, RaftResponse, raft_request, raft_response};
use crate::pb::peerpb::forward_reply::Reply;
use crate::pb::peerpb::forward_request::Request as Call;
use crate::pb::peerpb::{ForwardReply, ForwardRequest};

/// A request for the leader: the client's own request types (see peerpb.ForwardRequest).
pub type LeaderCall = Call;

/// The leader's answer, and whether it came from another member.
pub struct Answer {
    pub reply: Reply,
    pub forwarded: bool,
}

fn different_call() -> NodeError {
    NodeError::Internal("leader answered a different call".into())
}

/// A write's expected kind of answer, with the revision it was applied at.
pub(super) fn pick<T>(
    response: RaftResponse,
    kind: impl FnOnce(raft_response::Response) -> Option<T>,
) -> Result<(T, i64), NodeError> {
    let revision = response.revision;
    response
        .response
        .and_then(kind)
        .map(|answer| (answer, revision))
        .ok_or_else(|| NodeError::Internal("unexpected state machine answer".into()))
}

impl Answer {
    /// A write's answer; a refusal of the store becomes its error.
    pub fn applied(self) -> Result<RaftResponse, NodeError> {
        match self.reply {
            Reply::Applied(response) => match response.response {
                Some(raft_response::Response::Error(code)) => Err(NodeError::refused(code)),
                _ => Ok(response),
            },
            _ => Err(different_call()),
        }
    }

    pub fn read_index(self) -> Result<u64, NodeError> {
        match self.reply {
            Reply::ReadIndex(index) => Ok(index),
            _ => Err(different_call()),
        }
    }

    pub fn lease_ttl(self) -> Result<i64, NodeError> {
        match self.reply {
            Reply::LeaseTtl(ttl) => Ok(ttl),
            _ => Err(different_call()),
        }
    }

    pub fn member_id(self) -> Result<u64, NodeError> {
        match self.reply {
            Reply::MemberId(id) => Ok(id),
            _ => Err(different_call()),
        }
    }
}

/// Whether serving `call` twice has the effect of serving it once.
fn repeatable(call: &LeaderCall) -> bool {
    matches!(
        call,
        Call::ReadIndex(_) | Call::LeaseTimeToLive(_) | Call::LeaseKeepAlive(_)
    )
}

impl Node {
    /// Serves `call` for `caller` on the leader, this member or another, waiting for one to exist.
    /// A forwarded call whose outcome is unknown (timed out) is never sent again.
    pub(super) async fn on_leader(&self, call: LeaderCall, caller: &Caller) -> Result<Answer, NodeError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let leader = self.raft.leader_id();
            if leader == Some(self.member_id) {
                match self.lead(call.clone(), caller.clone()).await {
                    Err(NodeError::NotLeader) => {}
                    other => {
                        return other.map(|reply| Answer {
                            reply,
                            forwarded: false,
                        });
                    }
                }
            } else if let Some(url) = leader.and_then(|l| self.raft.peer_url_of(l)) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let request = ForwardRequest {
                    request: Some(call.clone()),
                    caller: Some(caller.clone()),
                };
                match self.peers.forward(&url, remaining, request).await {
                    Ok(ForwardReply {
                        reply: Some(Reply::Error(error)),
                    }) => match NodeError::from_wire(&error) {
                        NodeError::NotLeader => {}
                        error => return Err(error),
                    },
                    Ok(ForwardReply { reply: Some(reply) }) => {
                        return Ok(Answer {
                            reply,
                            forwarded: true,
                        });
                    }
                    Ok(ForwardReply { reply: None }) => return Err(different_call()),
                    Err(PeerError::Timeout { .. }) => return Err(NodeError::Timeout),
                    Err(error @ PeerError::NotDelivered { .. }) => {
                        tracing::debug!(%error, "the leader could not be reached; retrying")
                    }
                    // The leader may have committed the call before failing: a write sent again
                    // could be applied twice, so only reads are retried.
                    Err(error) if repeatable(&call) => {
                        tracing::debug!(%error, "forwarding to the leader failed; retrying")
                    }
                    Err(error) => {
                        tracing::debug!(%error, "the leader failed while serving a forwarded call");
                        return Err(NodeError::TimeoutDueToLeaderFail);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(if leader.is_some() {
                    NodeError::Timeout
                } else {
                    NodeError::NoLeader
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A request another member forwarded: served only if this member leads, after the same checks
    /// a client's request passes. `from` is the calling member.
    pub async fn serve_forwarded(&self, from: u64, request: ForwardRequest) -> ForwardReply {
        // The members' own work is proposed where it arises; a forwarded call is always a client's.
        let caller = Caller {
            internal: false,
            ..request.caller.unwrap_or_default()
        };
        let result = match request.request {
            None => Err(NodeError::NotForwardable("empty request".into())),
            Some(Call::PublishAttributes(attributes)) if attributes.id != from => {
                Err(NodeError::NotForwardable(format!(
                    "member {from:x} may only publish its own attributes, not member {:x}'s",
                    attributes.id
                )))
            }
            Some(call) => match self.limits.call(&call) {
                Ok(()) => self.lead(call, caller).await,
                Err(error) => Err(error),
            },
        };
        ForwardReply {
            reply: Some(result.unwrap_or_else(|error| Reply::Error(error.to_wire()))),
        }
    }

    /// Serves `call` on this member, which must lead. Its caller has checked it (`Limits::call`);
    /// an entry it proposes carries `caller`, whose permissions apply checks.
    async fn lead(&self, call: LeaderCall, caller: Caller) -> Result<Reply, NodeError> {
        if !self.raft.is_leader() {
            return Err(NodeError::NotLeader);
        }
        use raft_request::Request as Entry;
        let entry = match call {
            Call::Put(put) => {
                self.check_quota(put.key.len() + put.value.len()).await?;
                Entry::Put(put)
            }
            Call::DeleteRange(delete) => Entry::DeleteRange(delete),
            Call::Txn(txn) => {
                if crate::state::txn_writes(&txn) {
                    self.check_quota(prost::Message::encoded_len(&txn)).await?;
                }
                Entry::Txn(txn)
            }
            Call::Compaction(compaction) => Entry::Compaction(compaction),
            Call::LeaseGrant(mut grant) => {
                // The ID and the minimum TTL are settled before proposing, so every member applies
                // the same.
                grant.ttl = grant.ttl.max(self.lessor.min_ttl);
                self.check_quota(0).await?;
                if grant.id == 0 {
                    grant.id = (rand::random::<u64>() >> 1).max(1) as i64;
                }
                Entry::LeaseGrant(grant)
            }
            Call::LeaseRevoke(revoke) => Entry::LeaseRevoke(revoke),
            Call::Alarm(alarm) => Entry::Alarm(alarm),
            Call::PublishAttributes(attributes) => Entry::MemberAttributes(attributes),
            Call::AuthEnable(request) => Entry::AuthEnable(request),
            Call::AuthDisable(request) => Entry::AuthDisable(request),
            Call::Authenticate(request) => Entry::Authenticate(request),
            Call::UserAdd(request) => Entry::UserAdd(request),
            Call::UserDelete(request) => Entry::UserDelete(request),
            Call::UserChangePassword(request) => Entry::UserChangePassword(request),
            Call::UserGrantRole(request) => Entry::UserGrantRole(request),
            Call::UserRevokeRole(request) => Entry::UserRevokeRole(request),
            Call::RoleAdd(request) => Entry::RoleAdd(request),
            Call::RoleDelete(request) => Entry::RoleDelete(request),
            Call::RoleGrantPermission(request) => Entry::RoleGrantPermission(request),
            Call::RoleRevokePermission(request) => Entry::RoleRevokePermission(request),
            Call::ReadIndex(_) => return self.raft.read_index().await.map(Reply::ReadIndex),
            Call::LeaseKeepAlive(request) => return self.lease_renew_here(request.id).map(Reply::LeaseTtl),
            Call::LeaseTimeToLive(request) => {
                return self.lease_remaining_here(request.id).map(Reply::LeaseTtl);
            }
            Call::MemberAdd(request) => {
                self.authorize_admin(&caller)?;
                return self.member_add_here(request).await.map(Reply::MemberId);
            }
            Call::MemberRemove(request) => {
                self.authorize_admin(&caller)?;
                return self.member_remove_here(request.id).await.map(Reply::MemberId);
            }
            Call::MemberPromote(request) => {
                self.authorize_admin(&caller)?;
                return self.member_promote_here(request.id).await.map(Reply::MemberId);
            }
            Call::MemberUpdate(request) => {
                self.authorize_admin(&caller)?;
                return self.member_update_here(request).await.map(Reply::MemberId);
            }
        };
        self.raft
            .propose(RaftRequest {
                request: Some(entry),
                caller: Some(caller),
            })
            .await
            .map(Reply::Applied)
    }

    /// Refuses a write that would take the store past its quota, and raises the NOSPACE alarm so
    /// the whole cluster turns read/delete-only until space is freed and the alarm disarmed (as etcd
    /// does). Runs on the leader, whose store decides.
    async fn check_quota(&self, cost: usize) -> Result<(), NodeError> {
        use crate::pb::etcdserverpb::{AlarmRequest, AlarmType, alarm_request::AlarmAction};
        let used = self.raft.read(|m| m.app.mvcc.footprint());
        if used + cost as u64 <= self.config.quota_bytes {
            return Ok(());
        }
        let alarm = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        tracing::warn!(
            used,
            quota = self.config.quota_bytes,
            "database space exceeded; raising the NOSPACE alarm"
        );
        let request = RaftRequest {
            request: Some(raft_request::Request::Alarm(alarm)),
            caller: Some(Caller::internal()),
        };
        if let Err(error) = self.raft.propose(request).await {
            tracing::warn!(%error, "raising the NOSPACE alarm failed");
        }
        Err(NodeError::Mvcc(crate::mvcc::MvccError::NoSpace))
    }
}
