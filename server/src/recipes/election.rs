//! Elections: each campaigner's lease holds a key under `name/` carrying its value; the key created
//! first leads. Observers follow the leader key's puts and move on to the next leader when it goes.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::lock::{Abandon, absent, op, session_lease};
use super::wait::{edge_key, wait_deletes, watch_key};
use super::{RecipeError, owner_key, prefix_of};
use crate::node::Node;
use crate::pb::cairnpb::Caller;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest, request_op, response_op,
};
use crate::pb::mvccpb::event::EventType;
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

/// "`leader` still holds its key": the key's create revision is the one it campaigned with.
fn still_leads(leader: &LeaderKey) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: leader.key.clone(),
        target_union: Some(TargetUnion::CreateRevision(leader.rev)),
        ..Default::default()
    }
}

/// Campaigns for leadership of `name` with `value`, waiting until every earlier campaigner is gone.
pub async fn campaign(
    node: &Arc<Node>,
    caller: &Caller,
    request: CampaignRequest,
) -> Result<CampaignResponse, RecipeError> {
    let lease = session_lease(node, caller, request.lease).await?;
    let prefix = prefix_of(&request.name);
    let key = owner_key(&prefix, lease);
    let txn = TxnRequest {
        compare: vec![absent(&key)],
        success: vec![op(request_op::Request::RequestPut(PutRequest {
            key: key.clone(),
            value: request.value.clone(),
            lease,
            ..Default::default()
        }))],
        failure: vec![op(request_op::Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        }))],
    };
    let (answer, revision) = node.txn(caller, txn).await?;
    let mut leader = LeaderKey {
        name: request.name.clone(),
        key: key.clone(),
        rev: revision,
        lease,
    };
    let abandon = Abandon::new(node, caller, &key);
    if !answer.succeeded {
        // The lease campaigns already: keep its place, with the new value.
        let existing = match answer.responses.first().and_then(|r| r.response.as_ref()) {
            Some(response_op::Response::ResponseRange(range)) => range.kvs.first().cloned(),
            _ => None,
        };
        if let Some(existing) = existing {
            leader.rev = existing.create_revision;
            if existing.value != request.value {
                proclaim_value(node, caller, &leader, request.value.clone()).await?;
            }
        }
    }
    wait_deletes(node, caller, &prefix, leader.rev - 1).await?;
    abandon.keep();
    Ok(CampaignResponse {
        header: Some(node.header(revision)),
        leader: Some(leader),
    })
}

async fn proclaim_value(
    node: &Node,
    caller: &Caller,
    leader: &LeaderKey,
    value: Vec<u8>,
) -> Result<i64, RecipeError> {
    let txn = TxnRequest {
        compare: vec![still_leads(leader)],
        success: vec![op(request_op::Request::RequestPut(PutRequest {
            key: leader.key.clone(),
            value,
            lease: leader.lease,
            ..Default::default()
        }))],
        failure: vec![],
    };
    let (answer, revision) = node.txn(caller, txn).await?;
    if !answer.succeeded {
        return Err(RecipeError::NotLeader);
    }
    Ok(revision)
}

/// Sets a new value for the leader, which must still hold its key.
pub async fn proclaim(
    node: &Node,
    caller: &Caller,
    request: ProclaimRequest,
) -> Result<ProclaimResponse, RecipeError> {
    let leader = request.leader.ok_or(RecipeError::MissingLeaderKey)?;
    let revision = proclaim_value(node, caller, &leader, request.value).await?;
    Ok(ProclaimResponse {
        header: Some(node.header(revision)),
    })
}

/// Gives up leadership: deletes the leader's key if it still holds it.
pub async fn resign(
    node: &Node,
    caller: &Caller,
    request: ResignRequest,
) -> Result<ResignResponse, RecipeError> {
    let leader = request.leader.ok_or(RecipeError::MissingLeaderKey)?;
    let txn = TxnRequest {
        compare: vec![still_leads(&leader)],
        success: vec![op(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        }))],
        failure: vec![],
    };
    let (_, revision) = node.txn(caller, txn).await?;
    Ok(ResignResponse {
        header: Some(node.header(revision)),
    })
}

/// The current leader's key and value.
pub async fn leader(
    node: &Node,
    caller: &Caller,
    request: LeaderRequest,
) -> Result<LeaderResponse, RecipeError> {
    let (found, revision) = edge_key(node, caller, &prefix_of(&request.name), false, 0).await?;
    let kv = found.kvs.into_iter().next().ok_or(RecipeError::NoLeader)?;
    Ok(LeaderResponse {
        header: Some(node.header(revision)),
        kv: Some(kv),
    })
}

/// Follows the election: the leader now (once there is one), each new value it proclaims, and each
/// leader after it. Ends when the receiver is dropped or a watch fails.
pub fn observe(
    node: &Arc<Node>,
    caller: &Caller,
    request: LeaderRequest,
) -> ReceiverStream<Result<LeaderResponse, RecipeError>> {
    let (out, responses) = mpsc::channel(4);
    let (node, caller) = (node.clone(), caller.clone());
    tokio::spawn(async move {
        let follow = follow(&node, &caller, &request.name, &out);
        tokio::select! {
            _ = out.closed() => {}
            ended = follow => if let Err(error) = ended {
                let _ = out.send(Err(error)).await;
            }
        }
    });
    ReceiverStream::new(responses)
}

async fn follow(
    node: &Arc<Node>,
    caller: &Caller,
    name: &[u8],
    out: &mpsc::Sender<Result<LeaderResponse, RecipeError>>,
) -> Result<(), RecipeError> {
    let prefix = prefix_of(name);
    loop {
        let (found, revision) = edge_key(node, caller, &prefix, false, 0).await?;
        let (mut kv, mut at) = match found.kvs.into_iter().next() {
            Some(kv) => (kv, revision),
            None => {
                // No leader yet: the first key put under the prefix leads.
                let mut puts = Box::pin(watch_key(node, caller, &prefix, revision, true)?);
                loop {
                    let response = puts.next().await.ok_or(RecipeError::LostWatcher)??;
                    let put = response
                        .events
                        .into_iter()
                        .find(|e| e.r#type == EventType::Put as i32)
                        .and_then(|e| e.kv);
                    if let Some(kv) = put {
                        let at = kv.mod_revision;
                        break (kv, at);
                    }
                }
            }
        };
        loop {
            let response = LeaderResponse {
                header: Some(node.header(at)),
                kv: Some(kv.clone()),
            };
            if out.send(Ok(response)).await.is_err() {
                return Ok(());
            }
            // Then every change of the leader's key, until it is deleted.
            let mut changes = Box::pin(watch_key(node, caller, &kv.key, at + 1, false)?);
            let next = loop {
                let response = changes.next().await.ok_or(RecipeError::LostWatcher)??;
                if response.compact_revision != 0 {
                    return Err(RecipeError::Compacted);
                }
                let mut events = response.events.into_iter();
                if let Some(event) = events.next() {
                    break event;
                }
            };
            if next.r#type == EventType::Delete as i32 {
                break;
            }
            let Some(updated) = next.kv else { break };
            at = updated.mod_revision;
            kv = updated;
        }
    }
}
