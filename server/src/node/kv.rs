//! Key-value requests (etcd's KV service): reads served from this member's store, after a read
//! index unless serializable; writes checked, then committed through the leader.

use super::leader::{LeaderCall, pick};
use super::{Node, NodeError};
use crate::auth::Access;
use crate::metrics::WriteStage;
use crate::pb::cairnpb::{Caller, RaftResponse, raft_response::Response};
use crate::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse,
};

impl Node {
    /// Commits a client write through the leader, after the checks every write passes; the
    /// caller's permissions are checked when it is applied.
    pub(super) async fn write(&self, call: LeaderCall, caller: &Caller) -> Result<RaftResponse, NodeError> {
        self.limits.call(&call)?;
        if self.raft.is_learner() {
            return Err(NodeError::NotSupportedForLearner);
        }
        self.metrics.proposal_pending(1);
        let arrived = std::time::Instant::now();
        let answer = self.on_leader(call, caller).await;
        self.metrics.observe_stage(WriteStage::Write, arrived.elapsed());
        self.metrics.proposal_pending(-1);
        self.metrics.proposal_done(answer.is_ok());
        answer?.applied()
    }

    /// A range read; answers with the store's revision at the time of the read.
    pub async fn range(
        &self,
        caller: &Caller,
        request: RangeRequest,
    ) -> Result<(RangeResponse, i64), NodeError> {
        self.limits.range(&request)?;
        if !request.serializable {
            // Learners serve serializable reads only (etcd's isRPCSupportedForLearner).
            if self.raft.is_learner() {
                return Err(NodeError::NotSupportedForLearner);
            }
            self.linearizable_barrier().await?;
        }
        // The header's revision is the one the data was read at: taken under the same look at
        // the store, never after it (apply may have moved on in between). The permission check
        // sees the auth store of that moment too.
        let (response, revision) = self.raft.read(|m| {
            m.app
                .auth
                .check(caller, &request.key, &request.range_end, Access::Read)
                .map_err(NodeError::Auth)
                .and_then(|()| m.app.mvcc.range(&request).map_err(NodeError::Mvcc))
                .map(|response| (response, m.app.mvcc.revision()))
        })?;
        Ok((response, revision))
    }

    pub async fn put(&self, caller: &Caller, request: PutRequest) -> Result<(PutResponse, i64), NodeError> {
        let response = self.write(LeaderCall::Put(request), caller).await?;
        pick(response, |r| match r {
            Response::Put(put) => Some(put),
            _ => None,
        })
    }

    pub async fn delete_range(
        &self,
        caller: &Caller,
        request: DeleteRangeRequest,
    ) -> Result<(DeleteRangeResponse, i64), NodeError> {
        let response = self.write(LeaderCall::DeleteRange(request), caller).await?;
        pick(response, |r| match r {
            Response::DeleteRange(delete) => Some(delete),
            _ => None,
        })
    }

    pub async fn txn(&self, caller: &Caller, request: TxnRequest) -> Result<(TxnResponse, i64), NodeError> {
        let response = self.write(LeaderCall::Txn(request), caller).await?;
        pick(response, |r| match r {
            Response::Txn(txn) => Some(txn),
            _ => None,
        })
    }

    /// Compacts history; answers with the revision the compaction was applied at.
    pub async fn compact(&self, caller: &Caller, request: CompactionRequest) -> Result<i64, NodeError> {
        let response = self.write(LeaderCall::Compaction(request), caller).await?;
        pick(response, |r| match r {
            Response::Compaction(compaction) => Some(compaction),
            _ => None,
        })
        .map(|(_, revision)| revision)
    }
}
