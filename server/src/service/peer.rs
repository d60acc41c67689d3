//! The peer plane's server side (port 2380, for cluster members only, never for clients): refuses
//! calls from another cluster, then hands each call to Raft or the node.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::network::{ForwardError, PeerAnswer, PeerCall};
use crate::node::{Node, NodeError};
use crate::pb::cairnpb::peer_server::Peer;
use crate::pb::cairnpb::{PeerReply, PeerRequest};

pub struct PeerService {
    pub node: Arc<Node>,
}

fn refused(error: NodeError) -> PeerAnswer {
    match error {
        NodeError::NotLeader => PeerAnswer::Failed(ForwardError::NotLeader),
        other => PeerAnswer::Failed(ForwardError::Node(other)),
    }
}

impl PeerService {
    async fn dispatch(&self, call: PeerCall) -> PeerAnswer {
        let raft = &self.node.raft;
        let stopped = |e: openraft::error::RaftError<crate::TypeConfig>| {
            PeerAnswer::Failed(ForwardError::Node(NodeError::Internal(e.to_string())))
        };
        match call {
            PeerCall::AppendEntries(rpc) => raft
                .append_entries(rpc)
                .await
                .map_or_else(stopped, PeerAnswer::AppendEntries),
            PeerCall::Vote(rpc) => raft.vote(rpc).await.map_or_else(stopped, PeerAnswer::Vote),
            PeerCall::PreVote(rpc) => raft.pre_vote(rpc).await.map_or_else(stopped, PeerAnswer::Vote),
            PeerCall::Snapshot { vote, meta, data } => {
                let snapshot = crate::Snapshot { meta, snapshot: data };
                match raft.install_full_snapshot(vote, snapshot).await {
                    Ok(response) => PeerAnswer::Snapshot(response),
                    Err(error) => {
                        PeerAnswer::Failed(ForwardError::Node(NodeError::Internal(error.to_string())))
                    }
                }
            }
            PeerCall::TransferLeader(request) => match raft.handle_transfer_leader(request).await {
                Ok(response) => PeerAnswer::TransferLeader(response),
                Err(error) => PeerAnswer::Failed(ForwardError::Node(NodeError::Internal(error.to_string()))),
            },
            PeerCall::Propose(request) => self
                .node
                .propose_here(request)
                .await
                .map_or_else(refused, PeerAnswer::Proposed),
            PeerCall::ReadIndex => self
                .node
                .read_index_here()
                .await
                .map_or_else(refused, PeerAnswer::ReadIndex),
            PeerCall::LeaseKeepAlive(id) => self
                .node
                .lease_renew_here(id)
                .map_or_else(refused, PeerAnswer::LeaseTtl),
            PeerCall::LeaseTimeToLive(id) => self
                .node
                .lease_remaining_here(id)
                .map_or_else(refused, PeerAnswer::LeaseTtl),
            PeerCall::ClusterInfo => PeerAnswer::ClusterInfo(self.node.cluster_info()),
            PeerCall::MemberChange(change) => self
                .node
                .member_change_here(change)
                .await
                .map_or_else(refused, |()| PeerAnswer::MemberChanged),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn call(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let request = request.into_inner();
        let call: PeerCall = postcard::from_bytes(&request.body)
            .map_err(|e| Status::invalid_argument(format!("undecodable peer call: {e}")))?;
        // Only a joining member, which does not know the cluster yet, may ask who is in it.
        let may_be_anonymous = matches!(call, PeerCall::ClusterInfo) && request.cluster_id == 0;
        if request.cluster_id != self.node.cluster_id && !may_be_anonymous {
            tracing::warn!(
                from = %format!("{:x}", request.from),
                remote_cluster = %format!("{:x}", request.cluster_id),
                local_cluster = %format!("{:x}", self.node.cluster_id),
                "refused a peer request: cluster ID mismatch"
            );
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: this member belongs to cluster {:x}, the request came from cluster {:x}",
                self.node.cluster_id, request.cluster_id
            )));
        }
        let answer = self.dispatch(call).await;
        let body = postcard::to_stdvec(&answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(PeerReply { body }))
    }
}
