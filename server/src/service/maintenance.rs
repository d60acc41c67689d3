//! etcd's Maintenance service: status, alarms, hashes, snapshots and leader transfer.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::caller::caller;
use super::error::node_status;
use crate::node::{ETCD_API_VERSION, Node};
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};

pub struct MaintenanceService {
    pub node: Arc<Node>,
}

impl MaintenanceService {
    /// Everything here but alarms is root's once auth is on (etcd's authMaintenanceServer).
    async fn authorize_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = caller(&self.node, request).await?;
        self.node.authorize_admin(&caller).map_err(node_status)
    }
}

/// Snapshot stream chunk size (etcd's).
const CHUNK: usize = 32 * 1024;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let alarms = self
            .node
            .alarm(&caller, request.into_inner())
            .await
            .map_err(node_status)?;
        Ok(Response::new(AlarmResponse {
            header: Some(self.node.header(self.node.revision())),
            alarms,
        }))
    }

    // Open to every caller, as in etcd: health checkers and `etcdctl endpoint status` call it
    // without credentials, and it tells nothing MemberList (also open) does not.
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let (mut status, revision) = self.node.status();
        status.header = Some(self.node.header(revision));
        Ok(Response::new(status))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.authorize_admin(&request).await?;
        // The key space lives in ordered maps that compaction shrinks in place: there is no file
        // fragmentation to undo, so defragmenting succeeds at once and never blocks requests.
        // etcd answers it without a header, and clients check for that.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.authorize_admin(&request).await?;
        let (hash, revision, _) = self.node.hash_kv(0).map_err(node_status)?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.authorize_admin(&request).await?;
        let revision = request.into_inner().revision;
        let (hash, hash_revision, compact_revision) = self.node.hash_kv(revision).map_err(node_status)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(self.node.revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.authorize_admin(&request).await?;
        let snapshot = self.node.snapshot_stream(CHUNK).await.map_err(node_status)?;
        let header = self.node.header(snapshot.revision);
        let responses = tokio_stream::wrappers::ReceiverStream::new(snapshot.chunks).scan(
            snapshot.size,
            move |remaining, chunk| {
                let response = chunk.map_err(node_status).map(|blob| {
                    *remaining -= blob.len() as u64;
                    SnapshotResponse {
                        header: Some(header),
                        remaining_bytes: *remaining,
                        blob,
                        version: ETCD_API_VERSION.into(),
                    }
                });
                futures::future::ready(Some(response))
            },
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.authorize_admin(&request).await?;
        self.node
            .move_leader(request.into_inner().target_id)
            .await
            .map_err(node_status)?;
        // etcd answers a transfer without a header, and clients check for that.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.authorize_admin(&request).await?;
        Err(Status::unimplemented(
            "etcdserver: cluster version downgrade is not supported by cairn",
        ))
    }
}
