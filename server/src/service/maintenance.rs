//! etcd's Maintenance service: status, alarms, hashes, snapshots and leader transfer.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

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

/// Snapshot stream chunk size (etcd's).
const CHUNK: usize = 32 * 1024;
/// Marks a Cairn snapshot file, followed by the length of the state it holds.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"CAIRNSN1";

/// Lays out a snapshot as etcdctl expects: padded to a multiple of 512 bytes, then the SHA-256 of
/// everything before it.
pub fn snapshot_bytes(state: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(state.len() + 560);
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&(state.len() as u64).to_le_bytes());
    bytes.extend_from_slice(state);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    bytes
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let alarms = self.node.alarm(request.into_inner()).await.map_err(node_status)?;
        Ok(Response::new(AlarmResponse {
            header: Some(self.node.header(self.node.revision())),
            alarms,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let (mut status, revision) = self.node.status();
        status.header = Some(self.node.header(revision));
        Ok(Response::new(status))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        // The key space lives in ordered maps that compaction shrinks in place: there is no file
        // fragmentation to undo, so defragmenting succeeds at once and never blocks requests.
        // etcd answers it without a header, and clients check for that.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, revision, _) = self.node.hash_kv(0).map_err(node_status)?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
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

    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let (state, revision) = self.node.snapshot_state().map_err(node_status)?;
        let bytes = snapshot_bytes(&state);
        let header = self.node.header(revision);
        let total = bytes.len();
        let chunks: Vec<Result<SnapshotResponse, Status>> = bytes
            .chunks(CHUNK)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - *sent) as u64,
                    blob: chunk.to_vec(),
                    version: ETCD_API_VERSION.into(),
                }))
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.node
            .move_leader(request.into_inner().target_id)
            .await
            .map_err(node_status)?;
        // etcd answers a transfer without a header, and clients check for that.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(&self, _: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: cluster version downgrade is not supported by cairn",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_layout_passes_etcdctl_checks() {
        for size in [0, 1, 495, 496, 10_000] {
            let bytes = snapshot_bytes(&vec![7u8; size]);
            assert_eq!(bytes.len() % 512, 32, "size {size}");
            let (body, sum) = bytes.split_at(bytes.len() - 32);
            assert_eq!(Sha256::digest(body).as_slice(), sum);
        }
    }
}
