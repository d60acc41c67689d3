//! Membership changes (etcd's MemberAdd/Remove/Promote/Update), run on the leader with etcd's strict
//! reconfiguration checks, and the member list as clients see it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::ChangeMembers;

use super::leader::LeaderCall;
use super::{Node, NodeError};
use crate::PeerNode;
use crate::bootstrap::identity;
use crate::pb::cairnpb::Caller;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest,
};

/// A membership change, as the leader runs it.
#[derive(Debug, Clone)]
enum MemberChange {
    Add {
        id: u64,
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: u64,
    },
    Promote {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
}

/// Peer URLs as a membership change may use them (etcd's ErrMemberBadURLs otherwise).
fn checked_urls(peer_urls: &[String]) -> Result<Vec<String>, NodeError> {
    let mut checked = Vec::new();
    for url in peer_urls {
        checked.push(crate::config::check_peer_url(url).map_err(|_| NodeError::MemberBadUrls)?);
    }
    Ok(checked)
}

/// etcd's `--max-learners` default.
const MAX_LEARNERS: usize = 1;
/// A learner may be promoted once it has this share of the leader's log (etcd's readyPercent).
const LEARNER_READY_PERCENT: f64 = 0.9;

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

impl Node {
    /// The member list: Raft's latest membership, with the names and client URLs members published.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let attributes = self.raft.read(|m| m.app.members.clone());
        membership
            .nodes()
            .map(|(id, node)| {
                let published = attributes.get(id).cloned().unwrap_or_default();
                Member {
                    id: *id,
                    name: published.name,
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: published.client_urls,
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// Members the leader has heard from lately (itself included): etcd's strict reconfiguration
    /// check counts connected members, so a dead member does not count towards quorum.
    fn active(&self, metrics: &openraft::RaftMetrics<crate::TypeConfig>) -> BTreeSet<u64> {
        use openraft::Instant as _;
        let recent = self.config.election_timeout * 3;
        let mut active: BTreeSet<u64> = metrics
            .heartbeat
            .iter()
            .flatten()
            .filter(|(_, acked)| acked.as_ref().is_some_and(|at| at.elapsed() < recent))
            .map(|(id, _)| *id)
            .collect();
        active.insert(self.member_id);
        active
    }

    /// Adds a member (a learner if `learner`); answers with its new ID.
    pub async fn member_add(
        &self,
        caller: &Caller,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<u64, NodeError> {
        let peer_urls = checked_urls(&peer_urls)?;
        if peer_urls.is_empty() {
            return Err(NodeError::MemberBadUrls);
        }
        let request = MemberAddRequest {
            peer_ur_ls: peer_urls,
            is_learner: learner,
        };
        self.member_change(LeaderCall::MemberAdd(request), caller).await
    }

    pub async fn member_remove(&self, caller: &Caller, id: u64) -> Result<(), NodeError> {
        self.member_change(LeaderCall::MemberRemove(MemberRemoveRequest { id }), caller)
            .await
            .map(drop)
    }

    pub async fn member_promote(&self, caller: &Caller, id: u64) -> Result<(), NodeError> {
        self.member_change(LeaderCall::MemberPromote(MemberPromoteRequest { id }), caller)
            .await
            .map(drop)
    }

    pub async fn member_update(
        &self,
        caller: &Caller,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<(), NodeError> {
        let peer_urls = checked_urls(&peer_urls)?;
        let request = MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls,
        };
        self.member_change(LeaderCall::MemberUpdate(request), caller)
            .await
            .map(drop)
    }

    /// A membership change, which only root may make once auth is on (checked by the leader).
    async fn member_change(&self, call: LeaderCall, caller: &Caller) -> Result<u64, NodeError> {
        let answer = self.on_leader(call, caller).await?;
        let forwarded = answer.forwarded;
        let id = answer.member_id()?;
        if forwarded {
            // Like etcd, answer with a member list that already holds the change: the leader has
            // committed it, this member may not have received it yet.
            self.linearizable_barrier().await?;
        }
        Ok(id)
    }

    /// Adds a member on the leader: checks its URLs and computes its ID the etcd way.
    pub(super) async fn member_add_here(&self, request: MemberAddRequest) -> Result<u64, NodeError> {
        let checked = checked_urls(&request.peer_ur_ls)?;
        if checked.is_empty() {
            return Err(NodeError::MemberBadUrls);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = identity::member_id(&checked, &self.config.token, Some(now));
        self.member_change_here(MemberChange::Add {
            id,
            peer_urls: checked,
            learner: request.is_learner,
        })
        .await?;
        Ok(id)
    }

    pub(super) async fn member_remove_here(&self, id: u64) -> Result<u64, NodeError> {
        self.member_change_here(MemberChange::Remove { id })
            .await
            .map(|()| id)
    }

    pub(super) async fn member_promote_here(&self, id: u64) -> Result<u64, NodeError> {
        self.member_change_here(MemberChange::Promote { id })
            .await
            .map(|()| id)
    }

    pub(super) async fn member_update_here(&self, request: MemberUpdateRequest) -> Result<u64, NodeError> {
        let peer_urls = checked_urls(&request.peer_ur_ls)?;
        let id = request.id;
        self.member_change_here(MemberChange::Update { id, peer_urls })
            .await
            .map(|()| id)
    }

    /// Runs a membership change on this member, which must lead.
    async fn member_change_here(&self, change: MemberChange) -> Result<(), NodeError> {
        if !self.raft.is_leader() {
            return Err(NodeError::NotLeader);
        }
        let metrics = self.raft.metrics();
        let raft = self.raft.raft();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, PeerNode> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let learners: BTreeSet<u64> = nodes.keys().filter(|id| !voters.contains(id)).copied().collect();
        let started = self.active(&metrics);
        let raft_error = |e: String| NodeError::Internal(e);
        match change {
            MemberChange::Add {
                id,
                peer_urls,
                learner,
            } => {
                if nodes.contains_key(&id) {
                    return Err(NodeError::MemberExists);
                }
                if nodes
                    .values()
                    .flat_map(|n| &n.peer_urls)
                    .any(|u| peer_urls.contains(u))
                {
                    return Err(NodeError::PeerUrlExists);
                }
                if learner && learners.len() >= MAX_LEARNERS {
                    return Err(NodeError::TooManyLearners);
                }
                if !learner {
                    let started_voters = voters.iter().filter(|v| started.contains(v)).count();
                    let new_size = voters.len() + 1;
                    // etcd allows 1 started of 2 (growing a single member cluster).
                    if started_voters < quorum(new_size) && !(started_voters == 1 && new_size == 2) {
                        return Err(NodeError::NotEnoughStarted);
                    }
                }
                raft.add_learner(id, PeerNode { peer_urls }, false)
                    .await
                    .map_err(|e| raft_error(e.to_string()))?;
                if !learner {
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                        .await
                        .map_err(|e| raft_error(e.to_string()))?;
                }
            }
            MemberChange::Remove { id } => {
                if !nodes.contains_key(&id) {
                    return Err(NodeError::MemberNotFound);
                }
                if voters.contains(&id) {
                    let remaining: Vec<u64> = voters.iter().filter(|v| **v != id).copied().collect();
                    let started_remaining = remaining.iter().filter(|v| started.contains(v)).count();
                    if remaining.is_empty() || started_remaining < quorum(remaining.len()) {
                        return Err(NodeError::NotEnoughStarted);
                    }
                    raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| raft_error(e.to_string()))?;
                } else {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| raft_error(e.to_string()))?;
                }
            }
            MemberChange::Promote { id } => {
                if voters.contains(&id) {
                    return Err(NodeError::MemberNotLearner);
                }
                if !learners.contains(&id) {
                    return Err(NodeError::MemberNotFound);
                }
                let leader_last = metrics.last_log_index.unwrap_or(0);
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map_or(0, |log_id| log_id.index);
                if (matched as f64) < (leader_last as f64) * LEARNER_READY_PERCENT {
                    return Err(NodeError::LearnerNotReady);
                }
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                    .await
                    .map_err(|e| raft_error(e.to_string()))?;
            }
            MemberChange::Update { id, peer_urls } => {
                if !nodes.contains_key(&id) {
                    return Err(NodeError::MemberNotFound);
                }
                if nodes
                    .iter()
                    .any(|(other, n)| *other != id && n.peer_urls.iter().any(|u| peer_urls.contains(u)))
                {
                    return Err(NodeError::PeerUrlExists);
                }
                raft.change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(id, PeerNode { peer_urls })])),
                    true,
                )
                .await
                .map_err(|e| raft_error(e.to_string()))?;
            }
        }
        Ok(())
    }
}
