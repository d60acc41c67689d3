//! etcd's Lease service. Grants and revokes go through the log; renewals and remaining TTLs are the
//! leader's to answer (the node forwards them).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::caller::caller;
use super::error::node_status;
use crate::node::Node;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};

pub struct LeaseService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let (mut response, revision) = self
            .node
            .lease_grant(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let revision = self
            .node
            .lease_revoke(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        Ok(Response::new(LeaseRevokeResponse {
            header: Some(self.node.header(revision)),
        }))
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let caller = caller(&self.node, &request).await?;
        let node = self.node.clone();
        let requests = request.into_inner();
        let responses = requests.then(move |item| {
            let (node, caller) = (node.clone(), caller.clone());
            async move {
                let id = item?.id;
                let ttl = node.lease_keep_alive(&caller, id).await.map_err(node_status)?;
                Ok(LeaseKeepAliveResponse {
                    header: Some(node.header(node.revision())),
                    id,
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
        let caller = caller(&self.node, &request).await?;
        let mut response = self
            .node
            .lease_time_to_live(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        response.header = Some(self.node.header(self.node.revision()));
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(self.node.revision())),
            leases: self.node.leases(),
        }))
    }
}
