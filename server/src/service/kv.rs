//! etcd's KV service: validate, one call into the node, one error mapping, the response header.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::{
    EMPTY_KEY, INVALID_SORT_OPTION, LEASE_PROVIDED, REQUEST_TOO_LARGE, VALUE_PROVIDED, invalid, mvcc_status,
    node_status, txn_status,
};
use crate::mvcc::check_txn;
use crate::node::{Node, NodeError};
use crate::pb::cairnpb::{RaftRequest, raft_request, raft_response};
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, range_request,
};

pub struct KvService {
    pub node: Arc<Node>,
}

/// Refuses requests over `--max-request-bytes` (etcd's ErrRequestTooLarge).
pub(super) fn check_size(node: &Node, request: &impl prost::Message) -> Result<(), Status> {
    if request.encoded_len() > node.config.max_request_bytes {
        return Err(invalid(REQUEST_TOO_LARGE));
    }
    Ok(())
}

/// Refuses a write that would take the store past its quota, and raises the NOSPACE alarm so the
/// whole cluster turns read/delete-only until space is freed and the alarm disarmed (as etcd does).
pub(super) async fn check_quota(node: &Node, cost: usize) -> Result<(), Status> {
    use crate::pb::etcdserverpb::{AlarmRequest, AlarmType, alarm_request::AlarmAction};
    let used = node.read_machine(|m| m.app.mvcc.footprint());
    if used + cost as u64 <= node.config.quota_bytes {
        return Ok(());
    }
    let alarm = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: node.member_id,
        alarm: AlarmType::Nospace as i32,
    };
    tracing::warn!(
        used,
        quota = node.config.quota_bytes,
        "database space exceeded; raising the NOSPACE alarm"
    );
    if let Err(error) = node
        .propose(RaftRequest {
            request: Some(raft_request::Request::Alarm(alarm)),
        })
        .await
    {
        tracing::warn!(%error, "raising the NOSPACE alarm failed");
    }
    Err(mvcc_status(crate::mvcc::MvccError::NoSpace))
}

fn check_range(request: &RangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(invalid(EMPTY_KEY));
    }
    if range_request::SortOrder::try_from(request.sort_order).is_err()
        || range_request::SortTarget::try_from(request.sort_target).is_err()
    {
        return Err(invalid(INVALID_SORT_OPTION));
    }
    Ok(())
}

fn check_put(request: &PutRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(invalid(EMPTY_KEY));
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(invalid(VALUE_PROVIDED));
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(invalid(LEASE_PROVIDED));
    }
    Ok(())
}

/// Proposes and unwraps the expected kind of answer.
pub(super) async fn propose<T>(
    node: &Node,
    request: raft_request::Request,
    pick: impl FnOnce(raft_response::Response) -> Option<T>,
) -> Result<(T, i64), Status> {
    if node.is_learner() {
        return Err(node_status(NodeError::NotSupportedForLearner));
    }
    let response = node
        .propose(RaftRequest {
            request: Some(request),
        })
        .await
        .map_err(node_status)?;
    let revision = response.revision;
    response
        .response
        .and_then(pick)
        .map(|answer| (answer, revision))
        .ok_or_else(|| node_status(NodeError::Internal("unexpected state machine answer".into())))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        check_size(&self.node, &request)?;
        check_range(&request)?;
        if !request.serializable {
            // Learners serve serializable reads only (etcd's isRPCSupportedForLearner).
            if self.node.is_learner() {
                return Err(node_status(NodeError::NotSupportedForLearner));
            }
            self.node.linearizable_barrier().await.map_err(node_status)?;
        }
        let mut response = self
            .node
            .read_machine(|m| m.app.mvcc.range(&request))
            .map_err(mvcc_status)?;
        let revision = self.node.revision();
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        check_size(&self.node, &request)?;
        check_put(&request)?;
        check_quota(&self.node, request.key.len() + request.value.len()).await?;
        let (mut response, revision) =
            propose(&self.node, raft_request::Request::Put(request), |r| match r {
                raft_response::Response::Put(put) => Some(put),
                _ => None,
            })
            .await?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        check_size(&self.node, &request)?;
        if request.key.is_empty() {
            return Err(invalid(EMPTY_KEY));
        }
        let (mut response, revision) = propose(
            &self.node,
            raft_request::Request::DeleteRange(request),
            |r| match r {
                raft_response::Response::DeleteRange(delete) => Some(delete),
                _ => None,
            },
        )
        .await?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let request = request.into_inner();
        check_size(&self.node, &request)?;
        check_txn(&request, self.node.config.max_txn_ops).map_err(txn_status)?;
        if crate::state::txn_writes(&request) {
            check_quota(&self.node, prost::Message::encoded_len(&request)).await?;
        }
        let (mut response, revision) =
            propose(&self.node, raft_request::Request::Txn(request), |r| match r {
                raft_response::Response::Txn(txn) => Some(txn),
                _ => None,
            })
            .await?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let request = request.into_inner();
        let (_, revision) = propose(
            &self.node,
            raft_request::Request::Compaction(request),
            |r| match r {
                raft_response::Response::Compaction(compaction) => Some(compaction),
                _ => None,
            },
        )
        .await?;
        Ok(Response::new(CompactionResponse {
            header: Some(self.node.header(revision)),
        }))
    }
}
