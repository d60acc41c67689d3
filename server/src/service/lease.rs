//! etcd's Lease service. Grants and revokes go through the log; renewals and remaining TTLs are the
//! leader's to answer (followers forward them).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::error::node_status;
use super::kv::propose;
use crate::mvcc::MAX_LEASE_TTL;
use crate::network::{ForwardError, PeerAnswer, PeerCall};
use crate::node::{Node, NodeError};
use crate::pb::cairnpb::{raft_request, raft_response};
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};

pub struct LeaseService {
    pub node: Arc<Node>,
}

/// Asks the leader (this member or another) a lease question.
async fn at_leader(
    node: &Node,
    call: PeerCall,
    here: impl Fn(&Node) -> Result<i64, NodeError>,
) -> Result<i64, NodeError> {
    if node.is_leader() {
        match here(node) {
            Err(NodeError::NotLeader) => {}
            other => return other,
        }
    }
    match node
        .call_leader_public(&call, Instant::now() + std::time::Duration::from_secs(5))
        .await?
    {
        PeerAnswer::LeaseTtl(ttl) => Ok(ttl),
        PeerAnswer::Failed(ForwardError::Node(error)) => Err(error),
        _ => Err(NodeError::Internal("leader answered a different call".into())),
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut request = request.into_inner();
        if request.ttl > MAX_LEASE_TTL {
            return Err(node_status(NodeError::Mvcc(
                crate::mvcc::MvccError::LeaseTtlTooLarge,
            )));
        }
        // The ID and the minimum TTL are settled before proposing, so every member applies the same.
        request.ttl = request.ttl.max(self.node.lessor.min_ttl);
        super::kv::check_quota(&self.node, 0).await?;
        if request.id == 0 {
            request.id = (rand::random::<u64>() >> 1).max(1) as i64;
        }
        let (mut response, revision) =
            propose(
                &self.node,
                raft_request::Request::LeaseGrant(request),
                |r| match r {
                    raft_response::Response::LeaseGrant(grant) => Some(grant),
                    _ => None,
                },
            )
            .await?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let request = request.into_inner();
        let (_, revision) = propose(
            &self.node,
            raft_request::Request::LeaseRevoke(request),
            |r| match r {
                raft_response::Response::LeaseRevoke(revoke) => Some(revoke),
                _ => None,
            },
        )
        .await?;
        Ok(Response::new(LeaseRevokeResponse {
            header: Some(self.node.header(revision)),
        }))
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let node = self.node.clone();
        let requests = request.into_inner();
        let responses = requests.then(move |item| {
            let node = node.clone();
            async move {
                let request = item?;
                let ttl = at_leader(&node, PeerCall::LeaseKeepAlive(request.id), |n| {
                    n.lease_renew_here(request.id)
                })
                .await
                .map_err(node_status)?;
                Ok(LeaseKeepAliveResponse {
                    header: Some(node.header(node.revision())),
                    id: request.id,
                    ttl,
                })
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let ttl = at_leader(&self.node, PeerCall::LeaseTimeToLive(request.id), |n| {
            n.lease_remaining_here(request.id)
        })
        .await
        .map_err(node_status)?;
        let (granted_ttl, keys) = self.node.read_machine(|m| match m.app.mvcc.lease(request.id) {
            Some(lease) => (lease.granted_ttl, lease.keys.iter().map(|k| k.to_vec()).collect()),
            None => (0, vec![]),
        });
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: Some(self.node.header(self.node.revision())),
            id: request.id,
            ttl,
            granted_ttl,
            keys: if request.keys { keys } else { vec![] },
        }))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .node
            .read_machine(|m| m.app.mvcc.leases().map(|(id, _)| LeaseStatus { id }).collect());
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(self.node.revision())),
            leases,
        }))
    }
}
