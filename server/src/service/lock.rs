//! etcd's Lock service (v3lockpb.Lock): one call into the lock recipe, one error mapping.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller::caller;
use super::error::recipe_status;
use crate::node::Node;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::recipes;

pub struct LockService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let response = recipes::lock(
            &self.node,
            &caller(&self.node, &request).await?,
            request.into_inner(),
        )
        .await
        .map_err(recipe_status)?;
        Ok(Response::new(response))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let response = recipes::unlock(
            &self.node,
            &caller(&self.node, &request).await?,
            request.into_inner(),
        )
        .await
        .map_err(recipe_status)?;
        Ok(Response::new(response))
    }
}
