//! etcd's Election service (v3electionpb.Election): one call into the election recipe each, one
//! error mapping.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::caller::caller;
use super::error::recipe_status;
use crate::node::Node;
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use crate::recipes;

pub struct ElectionService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let response = recipes::campaign(
            &self.node,
            &caller(&self.node, &request).await?,
            request.into_inner(),
        )
        .await
        .map_err(recipe_status)?;
        Ok(Response::new(response))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let response = recipes::proclaim(
            &self.node,
            &caller(&self.node, &request).await?,
            request.into_inner(),
        )
        .await
        .map_err(recipe_status)?;
        Ok(Response::new(response))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let response = recipes::leader(
            &self.node,
            &caller(&self.node, &request).await?,
            request.into_inner(),
        )
        .await
        .map_err(recipe_status)?;
        Ok(Response::new(response))
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let responses = recipes::observe(
            &self.node,
            &caller(&self.node, &request).await?,
            request.into_inner(),
        )
        .map(|item| item.map_err(recipe_status));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let response = recipes::resign(
            &self.node,
            &caller(&self.node, &request).await?,
            request.into_inner(),
        )
        .await
        .map_err(recipe_status)?;
        Ok(Response::new(response))
    }
}
