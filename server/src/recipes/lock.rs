//! Locks: a lease's key under `name/`; the holder is the key created first, and each waiter waits
//! for the key created just before its own to go.

use std::sync::Arc;

use super::wait::wait_deletes;
use super::{RecipeError, SESSION_TTL, owner_key, prefix_of};
use crate::mvcc::prefix_end;
use crate::node::Node;
use crate::pb::cairnpb::Caller;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    request_op, response_op,
};
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

/// The lease a lock or campaign is held with: the caller's, or a fresh one of `SESSION_TTL`.
pub(super) async fn session_lease(node: &Node, caller: &Caller, lease: i64) -> Result<i64, RecipeError> {
    if lease != 0 {
        return Ok(lease);
    }
    let (granted, _) = node
        .lease_grant(
            caller,
            LeaseGrantRequest {
                ttl: SESSION_TTL,
                id: 0,
            },
        )
        .await?;
    Ok(granted.id)
}

/// "`key` does not exist": its create revision is 0.
pub(super) fn absent(key: &[u8]) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(0)),
        ..Default::default()
    }
}

pub(super) fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// Deletes the key when dropped unarmed: a caller that goes away while waiting leaves no key in the
/// queue (etcd unlocks on a canceled context).
pub(super) struct Abandon {
    node: Arc<Node>,
    caller: Caller,
    key: Vec<u8>,
    armed: bool,
}

impl Abandon {
    pub(super) fn new(node: &Arc<Node>, caller: &Caller, key: &[u8]) -> Abandon {
        Abandon {
            node: node.clone(),
            caller: caller.clone(),
            key: key.to_vec(),
            armed: true,
        }
    }

    pub(super) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            let (node, caller) = (self.node.clone(), self.caller.clone());
            let key = std::mem::take(&mut self.key);
            tokio::spawn(async move {
                let request = DeleteRangeRequest {
                    key,
                    ..Default::default()
                };
                if let Err(error) = node.delete_range(&caller, request).await {
                    tracing::warn!(%error, "could not remove an abandoned lock or campaign key");
                }
            });
        }
    }
}

/// Acquires the lock `name` for the request's lease, waiting for earlier holders to let go.
pub async fn lock(
    node: &Arc<Node>,
    caller: &Caller,
    request: LockRequest,
) -> Result<LockResponse, RecipeError> {
    let lease = session_lease(node, caller, request.lease).await?;
    let prefix = prefix_of(&request.name);
    let key = owner_key(&prefix, lease);
    let first_created = RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(&prefix),
        limit: 1,
        sort_target: SortTarget::Create as i32,
        sort_order: SortOrder::Ascend as i32,
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![absent(&key)],
        success: vec![
            op(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                lease,
                ..Default::default()
            })),
            op(request_op::Request::RequestRange(first_created.clone())),
        ],
        // The lease already queues for this lock: keep its place.
        failure: vec![
            op(request_op::Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })),
            op(request_op::Request::RequestRange(first_created)),
        ],
    };
    let (answer, revision) = node.txn(caller, txn).await?;
    let range = |i: usize| match answer.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => Some(range.clone()),
        _ => None,
    };
    let mine = if answer.succeeded {
        revision
    } else {
        range(0)
            .and_then(|r| r.kvs.first().map(|kv| kv.create_revision))
            .unwrap_or(revision)
    };
    let owner = range(1).and_then(|r| r.kvs.first().map(|kv| kv.create_revision));
    if owner.is_none_or(|created| created == mine) {
        return Ok(LockResponse {
            header: Some(node.header(revision)),
            key,
        });
    }
    let abandon = Abandon::new(node, caller, &key);
    let revision = wait_deletes(node, caller, &prefix, mine - 1).await?;
    abandon.keep();
    Ok(LockResponse {
        header: Some(node.header(revision)),
        key,
    })
}

/// Releases a lock: deletes its key.
pub async fn unlock(
    node: &Node,
    caller: &Caller,
    request: UnlockRequest,
) -> Result<UnlockResponse, RecipeError> {
    let (_, revision) = node
        .delete_range(
            caller,
            DeleteRangeRequest {
                key: request.key,
                ..Default::default()
            },
        )
        .await?;
    Ok(UnlockResponse {
        header: Some(node.header(revision)),
    })
}
