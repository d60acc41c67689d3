//! The peer client: one lazily connected gRPC channel per peer URL, a protocol version agreed with
//! each peer by a Hello before anything else is sent, and every call stamped with this member's
//! cluster ID, member ID and that version.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::protocol::{
    APPEND_STREAM_VERSION, CLUSTER_ID_HEADER, MAX_VERSION, MEMBER_ID_HEADER, MIN_VERSION,
    SNAPSHOT_CHUNK_BYTES, VERSION_HEADER,
};
use super::{ClusterInfo, Malformed};
use crate::pb::peerpb;
use crate::pb::peerpb::peer_client::PeerClient as GrpcPeerClient;
use crate::tls::{ClientTls, PeerConnector};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The call never left this member: the peer could not be connected to (or would not agree on
    /// a protocol), so sending it again cannot repeat it.
    #[error("peer {url} could not be reached; the call was not sent: {reason}")]
    NotDelivered { url: String, reason: String },
    #[error("peer {url} refused the call: {reason}")]
    Refused { url: String, reason: String },
    #[error("peer {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("peer {url} sent an answer that cannot be used: {reason}")]
    Garbled { url: String, reason: String },
    /// The peer knows this member was removed from the cluster.
    #[error("peer {url} says this member was removed from the cluster: {reason}")]
    Removed { url: String, reason: String },
}

impl PeerError {
    /// A failure before the call itself was sent (while agreeing on the protocol).
    fn undelivered(self) -> PeerError {
        match self {
            PeerError::Unreachable { url, reason } => PeerError::NotDelivered { url, reason },
            PeerError::Timeout { url, after } => PeerError::NotDelivered {
                url,
                reason: format!("no answer to hello within {after:?}"),
            },
            other => other,
        }
    }

    fn garbled(url: &str, error: Malformed) -> PeerError {
        PeerError::Garbled {
            url: url.into(),
            reason: error.to_string(),
        }
    }
}

/// One peer URL: its channel and the protocol version agreed with it, once agreed.
#[derive(Clone)]
struct Link {
    channel: Channel,
    version: Arc<Mutex<Option<u32>>>,
}

#[derive(Clone)]
pub struct PeerClient {
    member_id: u64,
    cluster_id: u64,
    message_limit: usize,
    links: Arc<Mutex<HashMap<String, Link>>>,
    /// How to reach https:// peers; None when this member has no peer certificate.
    tls: Option<Arc<ClientTls>>,
    /// Set once a peer has said this member was removed (as etcd members learn it).
    removed: Arc<AtomicBool>,
}

impl PeerClient {
    /// A client for a member of cluster `cluster_id` (0 for a member that has not joined one yet).
    pub fn new(member_id: u64, cluster_id: u64, message_limit: usize, tls: Option<Arc<ClientTls>>) -> Self {
        PeerClient {
            member_id,
            cluster_id,
            message_limit,
            links: Arc::default(),
            tls,
            removed: Arc::default(),
        }
    }

    fn note_removal(&self, error: &PeerError) {
        if let PeerError::Removed { .. } = error {
            self.removed.store(true, Ordering::SeqCst);
        }
    }

    /// Whether a peer has said this member was removed from the cluster.
    pub fn told_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// The largest message this client sends or accepts.
    pub fn message_limit(&self) -> usize {
        self.message_limit
    }

    fn link(&self, url: &str) -> Result<Link, PeerError> {
        let mut links = self.links.lock().expect("peer link map poisoned");
        if let Some(link) = links.get(url) {
            return Ok(link.clone());
        }
        let unreachable = |reason: String| PeerError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        // The connector makes the TLS connection itself (with certificates read again when their
        // files change), so the channel is given the plain form of the URL.
        let (connector, address) = match url.strip_prefix("https://") {
            Some(address) => match &self.tls {
                Some(tls) => (PeerConnector::tls(tls.clone()), address),
                None => {
                    return Err(unreachable(
                        "its URL is https:// but this member has no peer certificate (--peer-cert-file)"
                            .into(),
                    ));
                }
            },
            None => (PeerConnector::plain(), url.strip_prefix("http://").unwrap_or(url)),
        };
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(10));
        let link = Link {
            channel: endpoint.connect_with_connector_lazy(connector),
            version: Arc::default(),
        };
        links.insert(url.to_owned(), link.clone());
        Ok(link)
    }

    fn grpc(&self, link: &Link) -> GrpcPeerClient<Channel> {
        GrpcPeerClient::new(link.channel.clone())
            .max_decoding_message_size(self.message_limit)
            .max_encoding_message_size(self.message_limit)
    }

    fn stamp<T>(&self, message: T, version: Option<u32>) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(CLUSTER_ID_HEADER, self.cluster_id.into());
        metadata.insert(MEMBER_ID_HEADER, self.member_id.into());
        if let Some(version) = version {
            metadata.insert(VERSION_HEADER, version.into());
        }
        request
    }

    /// The version agreed with the peer at `url`, saying Hello first if none is agreed yet.
    async fn agreed_version(&self, url: &str, link: &Link, timeout: Duration) -> Result<u32, PeerError> {
        if let Some(version) = *link.version.lock().expect("peer version poisoned") {
            return Ok(version);
        }
        let hello = peerpb::HelloRequest {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
        };
        let request = self.stamp(hello, None);
        let mut grpc = self.grpc(link);
        let reply = within(url, timeout, grpc.hello(request))
            .await
            .inspect_err(|error| self.note_removal(error))?;
        if !(MIN_VERSION..=MAX_VERSION).contains(&reply.version) {
            return Err(PeerError::Refused {
                url: url.into(),
                reason: format!(
                    "peer chose protocol version {}, this member speaks {MIN_VERSION} to {MAX_VERSION}",
                    reply.version
                ),
            });
        }
        *link.version.lock().expect("peer version poisoned") = Some(reply.version);
        Ok(reply.version)
    }

    /// Sends one call to the peer at `url`, at most `timeout` in all.
    async fn call<T, R, F, Fut>(
        &self,
        url: &str,
        timeout: Duration,
        message: T,
        send: F,
    ) -> Result<R, PeerError>
    where
        F: FnOnce(GrpcPeerClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let (link, version, left) = self.ready(url, timeout).await?;
        let result = within(
            url,
            left,
            send(self.grpc(&link), self.stamp(message, Some(version))),
        )
        .await;
        if let Err(error) = &result {
            self.failed(&link, error);
        }
        result
    }

    /// The link to `url` with a protocol version agreed, and what is left of `timeout` after.
    async fn ready(&self, url: &str, timeout: Duration) -> Result<(Link, u32, Duration), PeerError> {
        let link = self.link(url)?;
        let started = tokio::time::Instant::now();
        let version = self
            .agreed_version(url, &link, timeout)
            .await
            .map_err(PeerError::undelivered)?;
        Ok((link, version, timeout.saturating_sub(started.elapsed())))
    }

    /// Takes note of a failed call on `link`.
    fn failed(&self, link: &Link, error: &PeerError) {
        self.note_removal(error);
        if let PeerError::Unreachable { .. } | PeerError::NotDelivered { .. } | PeerError::Refused { .. } =
            error
        {
            // The peer may have restarted with another version: agree again on the next call.
            *link.version.lock().expect("peer version poisoned") = None;
        }
    }

    /// Opens an append stream to the peer at `url`, within `timeout`; `None` when the peer speaks
    /// only protocol versions without one (its appends then go one call each).
    pub async fn append_stream(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<Option<AppendStream>, PeerError> {
        let (link, version, left) = self.ready(url, timeout).await?;
        if version < APPEND_STREAM_VERSION {
            return Ok(None);
        }
        let (requests, outgoing) = futures::channel::mpsc::unbounded();
        let mut grpc = self.grpc(&link);
        match within(url, left, grpc.append_stream(self.stamp(outgoing, Some(version)))).await {
            Ok(replies) => Ok(Some(AppendStream {
                url: url.to_owned(),
                client: self.clone(),
                link,
                requests,
                replies,
            })),
            Err(error) => {
                self.failed(&link, &error);
                Err(error)
            }
        }
    }

    /// Who is in the peer's cluster. Before this member belongs to one, answered only when a member
    /// of that cluster has `own_peer_urls` (it was added and this is it, joining).
    pub async fn cluster_info(
        &self,
        url: &str,
        timeout: Duration,
        own_peer_urls: &[String],
    ) -> Result<ClusterInfo, PeerError> {
        let reply = self
            .call(
                url,
                timeout,
                peerpb::ClusterInfoRequest {
                    peer_urls: own_peer_urls.to_vec(),
                },
                |mut c, r| async move { c.cluster_info(r).await },
            )
            .await?;
        Ok(ClusterInfo::from(reply))
    }

    pub async fn append_entries(
        &self,
        url: &str,
        timeout: Duration,
        rpc: peerpb::AppendEntriesRequest,
    ) -> Result<peerpb::AppendEntriesReply, PeerError> {
        self.call(
            url,
            timeout,
            rpc,
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    pub async fn vote(
        &self,
        url: &str,
        timeout: Duration,
        rpc: peerpb::VoteRequest,
    ) -> Result<peerpb::VoteReply, PeerError> {
        self.call(url, timeout, rpc, |mut c, r| async move { c.vote(r).await })
            .await
    }

    pub async fn pre_vote(
        &self,
        url: &str,
        timeout: Duration,
        rpc: peerpb::VoteRequest,
    ) -> Result<peerpb::VoteReply, PeerError> {
        self.call(url, timeout, rpc, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    pub async fn transfer_leader(
        &self,
        url: &str,
        timeout: Duration,
        rpc: peerpb::TransferLeaderRequest,
    ) -> Result<peerpb::TransferLeaderReply, PeerError> {
        self.call(
            url,
            timeout,
            rpc,
            |mut c, r| async move { c.transfer_leader(r).await },
        )
        .await
    }

    pub async fn forward(
        &self,
        url: &str,
        timeout: Duration,
        request: peerpb::ForwardRequest,
    ) -> Result<peerpb::ForwardReply, PeerError> {
        self.call(
            url,
            timeout,
            request,
            |mut c, r| async move { c.forward(r).await },
        )
        .await
    }

    /// Streams a snapshot in chunks of at most `SNAPSHOT_CHUNK_BYTES`.
    pub async fn install_snapshot(
        &self,
        url: &str,
        timeout: Duration,
        vote: peerpb::Vote,
        meta: peerpb::SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<peerpb::SnapshotReply, PeerError> {
        let chunks = snapshot_chunks(vote, meta, data);
        self.call(url, timeout, chunks, |mut c, r| async move {
            let (metadata, extensions, chunks) = r.into_parts();
            let stream = Request::from_parts(metadata, extensions, futures::stream::iter(chunks));
            c.install_snapshot(stream).await
        })
        .await
    }
}

/// A leader's long-lived AppendEntries stream to one peer: requests go one at a time, each
/// answered in order before the next is sent. After any failure it is done with; a new one is
/// opened (a reply that came too late must never be read as the answer to a later request).
pub struct AppendStream {
    url: String,
    client: PeerClient,
    link: Link,
    requests: futures::channel::mpsc::UnboundedSender<peerpb::AppendEntriesRequest>,
    replies: tonic::Streaming<peerpb::AppendEntriesReply>,
}

impl AppendStream {
    /// The peer URL the stream was opened to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `request` and waits at most `timeout` for its reply.
    pub async fn exchange(
        &mut self,
        request: peerpb::AppendEntriesRequest,
        timeout: Duration,
    ) -> Result<peerpb::AppendEntriesReply, PeerError> {
        let result = self.send_and_wait(request, timeout).await;
        if let Err(error) = &result {
            self.client.failed(&self.link, error);
        }
        result
    }

    async fn send_and_wait(
        &mut self,
        request: peerpb::AppendEntriesRequest,
        timeout: Duration,
    ) -> Result<peerpb::AppendEntriesReply, PeerError> {
        let ended = |reason: &str| PeerError::Unreachable {
            url: self.url.clone(),
            reason: reason.into(),
        };
        self.requests
            .unbounded_send(request)
            .map_err(|_| ended("the append stream is closed"))?;
        match tokio::time::timeout(timeout, self.replies.message()).await {
            Err(_) => Err(PeerError::Timeout {
                url: self.url.clone(),
                after: timeout,
            }),
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => Err(ended("the peer ended the append stream")),
            Ok(Err(status)) => Err(status_error(&self.url, status)),
        }
    }
}

/// A snapshot as the chunks that carry it: metadata in the first, `done` in the last. The chunks
/// share `data`'s buffer.
pub fn snapshot_chunks(
    vote: peerpb::Vote,
    meta: peerpb::SnapshotMeta,
    data: Vec<u8>,
) -> Vec<peerpb::SnapshotChunk> {
    let data = bytes::Bytes::from(data);
    let mut chunks: Vec<peerpb::SnapshotChunk> = (0..data.len())
        .step_by(SNAPSHOT_CHUNK_BYTES)
        .map(|start| peerpb::SnapshotChunk {
            data: data.slice(start..(start + SNAPSHOT_CHUNK_BYTES).min(data.len())),
            ..Default::default()
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(peerpb::SnapshotChunk::default());
    }
    chunks[0].vote = Some(vote);
    chunks[0].meta = Some(meta);
    if let Some(last) = chunks.last_mut() {
        last.done = true;
    }
    chunks
}

/// Whether the call failed because no connection could be made: then it was never sent.
fn connection_refused(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = error.source();
    }
    false
}

async fn within<R>(
    url: &str,
    timeout: Duration,
    call: impl Future<Output = Result<Response<R>, Status>>,
) -> Result<R, PeerError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(PeerError::Timeout {
            url: url.into(),
            after: timeout,
        }),
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(status_error(url, status)),
    }
}

/// What a peer's error status means to this member.
fn status_error(url: &str, status: Status) -> PeerError {
    let reason = status.message().to_owned();
    match status.code() {
        _ if connection_refused(&status) => PeerError::NotDelivered {
            url: url.into(),
            reason,
        },
        Code::NotFound => PeerError::Removed {
            url: url.into(),
            reason,
        },
        Code::FailedPrecondition | Code::OutOfRange | Code::ResourceExhausted | Code::PermissionDenied => {
            PeerError::Refused {
                url: url.into(),
                reason,
            }
        }
        Code::InvalidArgument => PeerError::garbled(url, Malformed(reason)),
        _ => PeerError::Unreachable {
            url: url.into(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URL of a port nobody listens on.
    fn closed_port_url() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("http://127.0.0.1:{port}")
    }

    /// A call to a port nobody listens on was never sent, whether it failed saying hello or, with a
    /// version already agreed, on the call itself; forwarding relies on this to retry safely.
    #[tokio::test]
    async fn calls_to_a_closed_port_are_known_undelivered() {
        let url = closed_port_url();
        let client = PeerClient::new(1, 2, 1 << 20, None);
        let call = || client.forward(&url, Duration::from_secs(2), peerpb::ForwardRequest::default());
        assert!(
            matches!(call().await, Err(PeerError::NotDelivered { .. })),
            "{:?}",
            call().await
        );
        let link = client.link(&url).unwrap();
        *link.version.lock().unwrap() = Some(MAX_VERSION);
        let error = call().await.unwrap_err();
        assert!(matches!(error, PeerError::NotDelivered { .. }), "{error:?}");
    }

    /// A peer that agreed on protocol version 1 is never offered an append stream (its appends
    /// go one call each); one of version 2 is, and a closed port is known undelivered.
    #[tokio::test]
    async fn append_streams_are_opened_only_to_peers_that_speak_them() {
        let url = closed_port_url();
        let client = PeerClient::new(1, 2, 1 << 20, None);
        let agree = |version| *client.link(&url).unwrap().version.lock().unwrap() = Some(version);
        agree(1);
        let opened = client.append_stream(&url, Duration::from_secs(2)).await;
        assert!(matches!(opened, Ok(None)), "{:?}", opened.err());
        agree(APPEND_STREAM_VERSION);
        let error = client
            .append_stream(&url, Duration::from_secs(2))
            .await
            .err()
            .expect("nothing listens there");
        assert!(matches!(error, PeerError::NotDelivered { .. }), "{error:?}");
    }

    #[test]
    fn snapshots_travel_in_bounded_chunks_with_metadata_first_and_done_last() {
        let data: Vec<u8> = (0..SNAPSHOT_CHUNK_BYTES * 2 + 10).map(|i| i as u8).collect();
        let chunks = snapshot_chunks(
            peerpb::Vote::default(),
            peerpb::SnapshotMeta::default(),
            data.clone(),
        );
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.data.len() <= SNAPSHOT_CHUNK_BYTES));
        assert!(chunks[0].meta.is_some() && chunks[1].meta.is_none() && chunks[2].meta.is_none());
        assert_eq!(
            chunks.iter().map(|c| c.done).collect::<Vec<_>>(),
            [false, false, true]
        );
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(joined, data);
        let empty = snapshot_chunks(peerpb::Vote::default(), peerpb::SnapshotMeta::default(), vec![]);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].done && empty[0].meta.is_some());
    }
}
