//! The gateway's streams: request bodies read as a sequence of JSON objects as they arrive, answers
//! written as one `{"result": ...}` line per message (or `{"error": ...}` when the stream fails).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::Response;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tonic::Status;

use super::{decode, error, http_status, streamed, with_credentials};
use crate::node::Node;
use crate::pb::cairnpb::Caller;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse, SnapshotRequest, WatchRequest};
use crate::pb::v3electionpb::LeaderRequest;
use crate::pb::v3electionpb::election_server::Election;
use crate::service::caller::caller;
use crate::service::election::ElectionService;
use crate::service::error::node_status;
use crate::service::maintenance::MaintenanceService;

/// The JSON objects of a request body, decoded as each is complete; a malformed one ends it.
fn objects<T: DeserializeOwned + Send + 'static>(
    body: Body,
) -> impl Stream<Item = T> + Send + Unpin + 'static {
    let chunks = body.into_data_stream();
    Box::pin(futures::stream::unfold(
        (chunks, Vec::<u8>::new(), false),
        |(mut chunks, mut buffer, mut ended)| async move {
            loop {
                let mut parsed = serde_json::Deserializer::from_slice(&buffer).into_iter::<T>();
                match parsed.next() {
                    Some(Ok(object)) => {
                        let used = parsed.byte_offset();
                        buffer.drain(..used);
                        return Some((object, (chunks, buffer, ended)));
                    }
                    Some(Err(e)) if !e.is_eof() => {
                        tracing::debug!(error = %e, "malformed JSON in a gateway stream");
                        return None;
                    }
                    _ if ended => return None,
                    _ => {}
                }
                match chunks.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    _ => ended = true,
                }
            }
        },
    ))
}

/// One line of a streamed answer.
fn line<T: Serialize>(item: Result<T, Status>) -> Result<Bytes, std::convert::Infallible> {
    let value = match item {
        Ok(message) => json!({ "result": message }),
        Err(status) => {
            let http = http_status(status.code());
            json!({ "error": {
                "grpc_code": status.code() as i32,
                "http_code": http.as_u16(),
                "message": status.message(),
                "http_status": http.canonical_reason().unwrap_or_default(),
            }})
        }
    };
    let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
    bytes.push(b'\n');
    Ok(Bytes::from(bytes))
}

fn lines<T, S>(messages: S) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    streamed(Body::from_stream(messages.map(line)))
}

/// Who a stream's HTTP request comes from; the error as the gateway answers it.
async fn stream_caller(node: &Node, parts: &Parts) -> Result<Caller, Response> {
    caller(node, &with_credentials((), parts))
        .await
        .map_err(|status| error(&status))
}

/// `/v3/watch`: watch requests in the body, as many as the client sends; events as they happen.
pub async fn watch(State(node): State<Arc<Node>>, parts: Parts, body: Body) -> Response {
    let caller = match stream_caller(&node, &parts).await {
        Ok(caller) => caller,
        Err(refused) => return refused,
    };
    let requests = objects::<WatchRequest>(body);
    match node.watch(&caller, requests, false) {
        Ok(responses) => lines(responses.map(|item| item.map_err(node_status))),
        Err(e) => error(&node_status(e)),
    }
}

/// `/v3/lease/keepalive`: each `{"ID": ...}` in the body renews that lease.
pub async fn lease_keep_alive(State(node): State<Arc<Node>>, parts: Parts, body: Body) -> Response {
    let caller = match stream_caller(&node, &parts).await {
        Ok(caller) => caller,
        Err(refused) => return refused,
    };
    let requests = objects::<LeaseKeepAliveRequest>(body);
    let responses = requests.then(move |request| {
        let (node, caller) = (node.clone(), caller.clone());
        async move {
            let ttl = node
                .lease_keep_alive(&caller, request.id)
                .await
                .map_err(node_status)?;
            Ok(LeaseKeepAliveResponse {
                header: Some(node.header(node.revision())),
                id: request.id,
                ttl,
            })
        }
    });
    lines(responses)
}

/// `/v3/election/observe`: the election's leaders as they change.
pub async fn observe(State(node): State<Arc<Node>>, parts: Parts, body: Bytes) -> Response {
    let request: LeaderRequest = match decode(&body) {
        Ok(request) => request,
        Err(status) => return error(&status),
    };
    match (ElectionService { node })
        .observe(with_credentials(request, &parts))
        .await
    {
        Ok(responses) => lines(responses.into_inner()),
        Err(status) => error(&status),
    }
}

/// `/v3/maintenance/snapshot`: the snapshot in chunks, as over gRPC.
pub async fn snapshot(State(node): State<Arc<Node>>, parts: Parts) -> Response {
    match (MaintenanceService { node })
        .snapshot(with_credentials(SnapshotRequest {}, &parts))
        .await
    {
        Ok(chunks) => lines(chunks.into_inner()),
        Err(status) => error(&status),
    }
}
