//! etcd's Watch service: one stream per call, served by the node's watch streams.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::caller::caller;
use super::error::node_status;
use crate::node::Node;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchRequest, WatchResponse};

/// gRPC metadata with which a client asks to be refused (rather than kept waiting) when the member
/// has no leader.
const REQUIRE_LEADER: &str = "hasleader";

pub struct WatchService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller(&self.node, &request).await?;
        let require_leader = request
            .metadata()
            .get(REQUIRE_LEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        // A broken request stream ends the requests; responses go on until the client leaves.
        let requests = request
            .into_inner()
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()));
        let responses = self
            .node
            .watch(&caller, Box::pin(requests), require_leader)
            .map_err(node_status)?;
        Ok(Response::new(Box::pin(
            responses.map(|item| item.map_err(node_status)),
        )))
    }
}
