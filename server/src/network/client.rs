//! The peer client: one lazily connected gRPC channel per peer URL, every call stamped with this
//! member's cluster ID and ID, encoded with postcard inside the `cairnpb.Peer/Call` envelope.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::messages::{PeerAnswer, PeerCall};
use crate::pb::cairnpb::PeerRequest;
use crate::pb::cairnpb::peer_client::PeerClient as GrpcPeerClient;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("peer {url} refused the call: {reason}")]
    Refused { url: String, reason: String },
    #[error("peer {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("peer {url} sent an answer that cannot be decoded: {reason}")]
    Garbled { url: String, reason: String },
}

/// Message size limit on the peer plane: snapshots travel in one message.
pub const MAX_PEER_MESSAGE: usize = 1 << 31;

#[derive(Clone)]
pub struct PeerClient {
    member_id: u64,
    cluster_id: Arc<AtomicU64>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerClient {
    pub fn new(member_id: u64, cluster_id: u64) -> Self {
        PeerClient {
            member_id,
            cluster_id: Arc::new(AtomicU64::new(cluster_id)),
            channels: Arc::default(),
        }
    }

    pub fn set_cluster_id(&self, cluster_id: u64) {
        self.cluster_id.store(cluster_id, Ordering::SeqCst);
    }

    fn channel(&self, url: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock().expect("peer channel map poisoned");
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| PeerError::Unreachable {
                url: url.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        let channel = endpoint.connect_lazy();
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Sends one call to the peer at `url` and waits at most `timeout` for the answer.
    pub async fn call(&self, url: &str, call: &PeerCall, timeout: Duration) -> Result<PeerAnswer, PeerError> {
        let body = postcard::to_stdvec(call).map_err(|e| PeerError::Garbled {
            url: url.into(),
            reason: e.to_string(),
        })?;
        let mut client = GrpcPeerClient::new(self.channel(url)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let request = PeerRequest {
            cluster_id: self.cluster_id.load(Ordering::SeqCst),
            from: self.member_id,
            body,
        };
        let reply = match tokio::time::timeout(timeout, client.call(request)).await {
            Err(_) => {
                return Err(PeerError::Timeout {
                    url: url.into(),
                    after: timeout,
                });
            }
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(PeerError::Refused {
                    url: url.into(),
                    reason: status.message().to_owned(),
                });
            }
            Ok(Err(status)) => {
                return Err(PeerError::Unreachable {
                    url: url.into(),
                    reason: status.message().to_owned(),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        postcard::from_bytes(&reply.body).map_err(|e| PeerError::Garbled {
            url: url.into(),
            reason: e.to_string(),
        })
    }
}
