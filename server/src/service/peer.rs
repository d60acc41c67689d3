//! The peer plane's server side (port 2380, for cluster members only, never for clients): admits a
//! call by its metadata before its message is read, then hands Raft RPCs to Raft and forwarded
//! requests to the node. Messages over the size limit are refused by gRPC before decoding.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request as HttpRequest, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use futures::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::WriteStage;
use crate::network::convert::{self, Malformed};
use crate::network::protocol::{self, Caller, MAX_VERSION, MIN_VERSION};
use crate::node::Node;
use crate::pb::peerpb;
use crate::pb::peerpb::peer_server::{Peer, PeerServer};

pub struct PeerService {
    pub node: Arc<Node>,
}

/// The peer port's router: admission in front of the peer service, with the message size limit.
pub fn router(node: Arc<Node>) -> Router {
    let limit = protocol::message_limit(node.config.max_request_bytes);
    let service = PeerServer::new(PeerService { node: node.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    Routes::new(service)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(node, admit))
}

/// Refuses a call from another cluster or in an unknown protocol version before reading its body.
async fn admit(State(node): State<Arc<Node>>, mut request: HttpRequest, next: Next) -> HttpResponse {
    let removed = |member: u64| node.is_removed(member);
    match protocol::admit(request.uri().path(), request.headers(), node.cluster_id, removed) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            tracing::warn!(path = request.uri().path(), %refusal, "refused a peer request");
            let status = match refusal {
                // Tells the caller it is gone for good, as etcd answers a removed member.
                protocol::Refusal::Removed { .. } => Status::not_found(refusal.to_string()),
                _ => Status::failed_precondition(refusal.to_string()),
            };
            status.into_http::<axum::body::Body>().into_response()
        }
    }
}

fn malformed(error: Malformed) -> Status {
    Status::invalid_argument(error.to_string())
}

fn stopped(error: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {error}"))
}

/// One AppendEntries from the leader, handed to Raft; entry-carrying ones are timed.
async fn append(
    node: &Node,
    message: peerpb::AppendEntriesRequest,
) -> Result<peerpb::AppendEntriesReply, Status> {
    let received = std::time::Instant::now();
    let rpc = convert::append_request_from(message).map_err(malformed)?;
    let carries_entries = !rpc.entries.is_empty();
    let response = node.raft().append_entries(rpc).await.map_err(stopped)?;
    if carries_entries {
        node.metrics()
            .observe_stage(WriteStage::PeerAppendHandled, received.elapsed());
    }
    Ok(convert::append_reply_to(&response))
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .copied()
        .ok_or_else(|| Status::failed_precondition("peer call was not admitted"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(
        &self,
        request: Request<peerpb::HelloRequest>,
    ) -> Result<Response<peerpb::HelloReply>, Status> {
        let caller = caller(&request)?;
        let hello = request.into_inner();
        let Some(version) = protocol::agree(hello.min_version, hello.max_version) else {
            return Err(Status::failed_precondition(format!(
                "no common peer protocol version: the caller speaks {} to {}, this member {MIN_VERSION} to \
                 {MAX_VERSION}",
                hello.min_version, hello.max_version
            )));
        };
        // Who this member is stays between members: a caller from outside the cluster (one
        // joining it included) learns only the protocol version.
        let member = caller.cluster_id == self.node.cluster_id;
        Ok(Response::new(peerpb::HelloReply {
            version,
            cluster_id: if member { self.node.cluster_id } else { 0 },
            member_id: if member { self.node.member_id } else { 0 },
        }))
    }

    async fn cluster_info(
        &self,
        request: Request<peerpb::ClusterInfoRequest>,
    ) -> Result<Response<peerpb::ClusterInfoReply>, Status> {
        let caller = caller(&request)?;
        let asked = request.into_inner();
        let info = self.node.cluster_info();
        let joining = |urls: &Vec<String>| {
            let (mut listed, mut given) = (urls.clone(), asked.peer_urls.clone());
            listed.sort();
            given.sort();
            !given.is_empty() && listed == given
        };
        if caller.cluster_id != self.node.cluster_id && !info.members.iter().any(|(_, urls)| joining(urls)) {
            return Err(Status::permission_denied(format!(
                "{}, and no member has the peer URLs {:?}; add the new member first (member add) with \
                 the peer URLs it advertises",
                protocol::NOT_A_MEMBER,
                asked.peer_urls
            )));
        }
        Ok(Response::new(info.into()))
    }

    async fn append_entries(
        &self,
        request: Request<peerpb::AppendEntriesRequest>,
    ) -> Result<Response<peerpb::AppendEntriesReply>, Status> {
        append(&self.node, request.into_inner()).await.map(Response::new)
    }

    type AppendStreamStream = Pin<Box<dyn Stream<Item = Result<peerpb::AppendEntriesReply, Status>> + Send>>;

    /// Each request is checked and handled as a single AppendEntries call would be, one at a
    /// time, its reply sent before the next is read; the first refusal ends the stream.
    async fn append_stream(
        &self,
        request: Request<Streaming<peerpb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let caller = caller(&request)?;
        let requests = request.into_inner();
        let node = self.node.clone();
        let stopping: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(async move { node.raft_stopped().await });
        let start = (self.node.clone(), requests, stopping);
        let replies = futures::stream::unfold(Some(start), move |state| async move {
            let (node, mut requests, mut stopping) = state?;
            let message = tokio::select! {
                received = requests.message() => match received {
                    Ok(Some(message)) => message,
                    Ok(None) => return None,
                    Err(status) => return Some((Err(status), None)),
                },
                () = &mut stopping => return Some((Err(stopped("this member is stopping")), None)),
            };
            // A leader removed while its stream was open is refused as its next call would be.
            if node.is_removed(caller.member_id) {
                let refusal = protocol::Refusal::Removed {
                    member: caller.member_id,
                };
                return Some((Err(Status::not_found(refusal.to_string())), None));
            }
            match append(&node, message).await {
                Ok(reply) => Some((Ok(reply), Some((node, requests, stopping)))),
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(
        &self,
        request: Request<peerpb::VoteRequest>,
    ) -> Result<Response<peerpb::VoteReply>, Status> {
        let rpc = convert::vote_request_from(request.into_inner()).map_err(malformed)?;
        let response = self.node.raft().vote(rpc).await.map_err(stopped)?;
        Ok(Response::new(convert::vote_reply_to(&response)))
    }

    async fn pre_vote(
        &self,
        request: Request<peerpb::VoteRequest>,
    ) -> Result<Response<peerpb::VoteReply>, Status> {
        let rpc = convert::vote_request_from(request.into_inner()).map_err(malformed)?;
        let response = self.node.raft().pre_vote(rpc).await.map_err(stopped)?;
        Ok(Response::new(convert::vote_reply_to(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<peerpb::SnapshotChunk>>,
    ) -> Result<Response<peerpb::SnapshotReply>, Status> {
        let mut chunks: Pin<Box<Streaming<peerpb::SnapshotChunk>>> = Box::pin(request.into_inner());
        let first = chunks
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("snapshot stream is empty"))??;
        let vote = convert::vote_from(first.vote, "snapshot vote").map_err(malformed)?;
        let meta = convert::snapshot_meta_from(first.meta).map_err(malformed)?;
        let mut data = first.data.to_vec();
        let mut done = first.done;
        while !done {
            let chunk = chunks
                .next()
                .await
                .ok_or_else(|| Status::invalid_argument("snapshot stream ended before its last chunk"))??;
            if chunk.vote.is_some() || chunk.meta.is_some() {
                return Err(Status::invalid_argument(
                    "snapshot metadata repeated after the first chunk",
                ));
            }
            data.extend_from_slice(&chunk.data);
            done = chunk.done;
        }
        let snapshot = crate::Snapshot { meta, snapshot: data };
        let response = self
            .node
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(stopped)?;
        Ok(Response::new(convert::snapshot_reply_to(&response)))
    }

    async fn transfer_leader(
        &self,
        request: Request<peerpb::TransferLeaderRequest>,
    ) -> Result<Response<peerpb::TransferLeaderReply>, Status> {
        let rpc = convert::transfer_request_from(request.into_inner()).map_err(malformed)?;
        let response = self
            .node
            .raft()
            .handle_transfer_leader(rpc)
            .await
            .map_err(stopped)?;
        Ok(Response::new(convert::transfer_reply_to(&response)))
    }

    async fn forward(
        &self,
        request: Request<peerpb::ForwardRequest>,
    ) -> Result<Response<peerpb::ForwardReply>, Status> {
        let from = caller(&request)?.member_id;
        let reply = self.node.serve_forwarded(from, request.into_inner()).await;
        Ok(Response::new(reply))
    }
}
