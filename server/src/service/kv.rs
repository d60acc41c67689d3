//! etcd's KV service: one call into the node, one error mapping, the response header.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller::caller;
use super::error::node_status;
use crate::node::Node;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

pub struct KvService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let (mut response, revision) = self
            .node
            .range(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let (mut response, revision) = self
            .node
            .put(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let (mut response, revision) = self
            .node
            .delete_range(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let (mut response, revision) = self
            .node
            .txn(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let revision = self
            .node
            .compact(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        Ok(Response::new(CompactionResponse {
            header: Some(self.node.header(revision)),
        }))
    }
}
