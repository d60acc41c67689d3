//! Waiting for the keys ahead of ours to go: the queue every lock and election stands in.

use std::sync::Arc;

use futures::StreamExt;

use super::RecipeError;
use crate::mvcc::prefix_end;
use crate::node::Node;
use crate::pb::cairnpb::Caller;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest, WatchResponse, watch_request::RequestUnion,
};
use crate::pb::mvccpb::event::EventType;

/// The key under `prefix` created first (`newest`: last) among those created at or before
/// `max_create_revision` (0: any), with the revision of the read.
pub async fn edge_key(
    node: &Node,
    caller: &Caller,
    prefix: &[u8],
    newest: bool,
    max_create_revision: i64,
) -> Result<(RangeResponse, i64), RecipeError> {
    let request = RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_target: SortTarget::Create as i32,
        sort_order: if newest {
            SortOrder::Descend
        } else {
            SortOrder::Ascend
        } as i32,
        max_create_revision,
        ..Default::default()
    };
    Ok(node.range(caller, request).await?)
}

/// Waits until every key under `prefix` created at or before `max_create_revision` is deleted;
/// answers with the revision of the read that found none left.
pub async fn wait_deletes(
    node: &Arc<Node>,
    caller: &Caller,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<i64, RecipeError> {
    loop {
        let (found, revision) = edge_key(node, caller, prefix, true, max_create_revision).await?;
        let Some(last) = found.kvs.first() else {
            return Ok(revision);
        };
        wait_delete(node, caller, &last.key, revision).await?;
    }
}

/// Waits for `key` to be deleted at or after `from`.
async fn wait_delete(node: &Arc<Node>, caller: &Caller, key: &[u8], from: i64) -> Result<(), RecipeError> {
    let mut responses = Box::pin(watch_key(node, caller, key, from, false)?);
    while let Some(response) = responses.next().await {
        let response = response?;
        if response.compact_revision != 0 {
            return Err(RecipeError::Compacted);
        }
        if response
            .events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            return Ok(());
        }
    }
    Err(RecipeError::LostWatcher)
}

/// A watch on the member, as a stream of responses: `key` alone, or every key under it.
pub fn watch_key(
    node: &Arc<Node>,
    caller: &Caller,
    key: &[u8],
    from: i64,
    prefix: bool,
) -> Result<impl futures::Stream<Item = Result<WatchResponse, RecipeError>> + Send + use<>, RecipeError> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: if prefix { prefix_end(key) } else { Vec::new() },
            start_revision: from,
            ..Default::default()
        })),
    };
    // The request side stays open: closing it would not end the watch, but keeping it is clearer.
    let requests = futures::stream::iter([create]).chain(futures::stream::pending());
    let responses = node.watch(caller, Box::pin(requests), false)?;
    Ok(responses
        .map(|item| item.map_err(RecipeError::Node))
        // The first answer says the watcher was created.
        .filter(|item| futures::future::ready(!matches!(item, Ok(r) if r.created))))
}
