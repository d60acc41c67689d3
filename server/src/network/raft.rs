//! The openraft network: Raft RPCs to one peer over the peer client, as typed peer messages.
//! Appends travel on one long-lived stream per peer where the peer speaks it. Transport failures
//! are reported as `Unreachable` so openraft backs off and retries; a batch of entries larger
//! than a peer message may carry is cut short and reported as a partial success.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::RaftNetworkV2;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};

use futures::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::network::stream_append_sequential;
use openraft::raft::StreamAppendResult;

use super::client::{AppendStream, PeerClient, PeerError};
use super::convert::{self, Malformed};
use crate::metrics::StageObserver;
use crate::pb::peerpb;
use crate::{PeerNode, Snapshot, TypeConfig, Vote};

pub struct NetworkFactory {
    pub client: PeerClient,
    pub addresses: PeerAddresses,
    /// Where AppendEntries round trips are timed.
    pub observe_append: StageObserver,
}

/// The peer URL each member is dialed at, kept current by whoever applies membership. openraft
/// makes a connection to a peer once per leadership and keeps it across membership changes, so
/// a member whose URL changes (MemberUpdate, peers moving to TLS) would otherwise be dialed at
/// its old URL until the next election.
#[derive(Debug, Clone, Default)]
pub struct PeerAddresses(Arc<RwLock<BTreeMap<u64, String>>>);

impl PeerAddresses {
    /// Replaces every member's URL with the membership's.
    pub fn replace(&self, urls: impl IntoIterator<Item = (u64, String)>) {
        *self.0.write().expect("peer addresses lock poisoned") = urls.into_iter().collect();
    }

    fn get(&self, member: u64) -> Option<String> {
        self.0
            .read()
            .expect("peer addresses lock poisoned")
            .get(&member)
            .cloned()
    }
}

pub struct Connection {
    client: PeerClient,
    target: u64,
    /// The URL the connection was made for; the current one in `addresses` wins.
    url: Option<String>,
    addresses: PeerAddresses,
    observe_append: StageObserver,
    /// The append stream to the peer, once opened (peers of protocol version 2 and later).
    stream: Option<AppendStream>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Connection {
        Connection {
            client: self.client.clone(),
            target,
            url: node.peer_urls.first().cloned(),
            addresses: self.addresses.clone(),
            observe_append: self.observe_append.clone(),
            stream: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("member {0:x} has no peer URL")]
struct NoUrl(u64);

fn rpc_error(error: PeerError) -> RPCError<TypeConfig> {
    match error {
        PeerError::Garbled { .. } => RPCError::Network(NetworkError::new(&error)),
        PeerError::Refused { .. } => {
            // Another cluster (or a member that removed us): say so loudly, it never heals alone.
            tracing::warn!(%error, "request sent was ignored by remote peer");
            RPCError::Unreachable(Unreachable::new(&error))
        }
        _ => RPCError::Unreachable(Unreachable::new(&error)),
    }
}

fn malformed(error: Malformed) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&error))
}

/// How many of `entries` fit in one message of at most `budget` bytes (always at least one, which
/// the leader's request size limit keeps under the message limit).
pub fn entries_within(entries: &[peerpb::Entry], budget: usize) -> usize {
    let mut used = 0;
    for (taken, entry) in entries.iter().enumerate() {
        // Field tag and length prefix of each entry inside the request.
        used += prost::Message::encoded_len(entry) + 8;
        if used > budget && taken > 0 {
            return taken;
        }
    }
    entries.len()
}

/// What was sent in one AppendEntries, cut to the message budget: what the follower's answer
/// means depends on it.
struct SentAppend {
    prev: Option<crate::LogId>,
    /// The last entry sent, or `prev` when none is.
    last_sent: Option<crate::LogId>,
    carries_entries: bool,
    cut_short: bool,
}

impl SentAppend {
    /// The message for `rpc`, cut to fit `message_limit`, and what it holds.
    fn cut(
        rpc: AppendEntriesRequest<TypeConfig>,
        message_limit: usize,
    ) -> (peerpb::AppendEntriesRequest, SentAppend) {
        // Leave room for the vote, log IDs and framing around the entries.
        let budget = message_limit - (64 << 10);
        let prev = rpc.prev_log_id;
        let log_ids: Vec<crate::LogId> = rpc.entries.iter().map(|e| e.log_id).collect();
        let mut message = convert::append_request_to(rpc);
        let taken = entries_within(&message.entries, budget);
        let cut_short = taken < message.entries.len();
        message.entries.truncate(taken);
        let sent = SentAppend {
            prev,
            last_sent: taken.checked_sub(1).map(|last| log_ids[last]).or(prev),
            carries_entries: taken > 0,
            cut_short,
        };
        (message, sent)
    }

    /// The follower's answer, as openraft takes it; entry-carrying round trips are timed.
    fn answered(
        &self,
        reply: peerpb::AppendEntriesReply,
        sent_at: std::time::Instant,
        observe: &(dyn Fn(Duration) + Send + Sync),
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        if self.carries_entries {
            observe(sent_at.elapsed());
        }
        match convert::append_reply_from(reply).map_err(malformed)? {
            AppendEntriesResponse::Success if self.cut_short => {
                Ok(AppendEntriesResponse::PartialSuccess(self.last_sent))
            }
            // Nothing conflicts with the start of the log: such an answer is garbled.
            AppendEntriesResponse::Conflict if self.prev.is_none() => Err(malformed(Malformed(
                "a conflict reported for entries appended from the start of the log".into(),
            ))),
            response => Ok(response),
        }
    }
}

impl Connection {
    /// Sends one append on the open stream; the stream is dropped after any failure.
    async fn append_on_stream(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<(StreamAppendResult<TypeConfig>, bool), RPCError<TypeConfig>> {
        let (message, sent) = SentAppend::cut(rpc, self.client.message_limit());
        let Some(stream) = self.stream.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&NoUrl(self.target))));
        };
        let sent_at = std::time::Instant::now();
        let answer = match stream.exchange(message, timeout).await {
            Ok(reply) => sent.answered(reply, sent_at, &*self.observe_append),
            Err(error) => Err(rpc_error(error)),
        };
        match answer {
            Ok(response) => {
                let result = response.into_stream_result(sent.prev, sent.last_sent);
                Ok((result, sent.cut_short))
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }

    fn url(&self) -> Result<String, RPCError<TypeConfig>> {
        self.addresses
            .get(self.target)
            .or_else(|| self.url.clone())
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&NoUrl(self.target))))
    }

    async fn send<R, Fut>(&self, call: impl FnOnce(String) -> Fut) -> Result<R, RPCError<TypeConfig>>
    where
        Fut: Future<Output = Result<R, PeerError>>,
    {
        let url = self.url()?;
        call(url).await.map_err(rpc_error)
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let (message, sent) = SentAppend::cut(rpc, self.client.message_limit());
        let client = self.client.clone();
        let sent_at = std::time::Instant::now();
        let reply = self
            .send(|url| async move { client.append_entries(&url, option.hard_ttl(), message).await })
            .await?;
        sent.answered(reply, sent_at, &*self.observe_append)
    }

    /// Appends go on one long-lived stream to peers that speak it, one at a time as openraft's
    /// sequential default sends them, and one call each to peers that do not.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let url = self.url()?;
            if self.stream.as_ref().is_some_and(|stream| stream.url() != url) {
                self.stream = None;
            }
            if self.stream.is_none() {
                match self.client.append_stream(&url, option.hard_ttl()).await {
                    Ok(Some(stream)) => self.stream = Some(stream),
                    Ok(None) => return stream_append_sequential(self, input, option).await,
                    Err(error) => return Err(rpc_error(error)),
                }
            }
            let replies = futures::stream::unfold(Some((self, input)), move |state| {
                let timeout = option.hard_ttl();
                async move {
                    let (connection, mut input) = state?;
                    let rpc = input.next().await?;
                    match connection.append_on_stream(rpc, timeout).await {
                        // A batch cut short ends the session, as openraft's sequential sender
                        // does: the rest is sent again from what the follower acknowledged.
                        Ok((result, cut_short)) => {
                            let go_on = result.is_ok() && !cut_short;
                            Some((Ok(result), go_on.then_some((connection, input))))
                        }
                        Err(error) => Some((Err(error), None)),
                    }
                }
            });
            Ok(Box::pin(replies) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let message = convert::vote_request_to(&rpc);
        let client = self.client.clone();
        let reply = self
            .send(|url| async move { client.vote(&url, option.hard_ttl(), message).await })
            .await?;
        convert::vote_reply_from(reply).map_err(malformed)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let message = convert::vote_request_to(&rpc);
        let client = self.client.clone();
        let reply = self
            .send(|url| async move { client.pre_vote(&url, option.hard_ttl(), message).await })
            .await?;
        convert::vote_reply_from(reply).map_err(malformed)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let url = match self.url() {
            Ok(url) => url,
            Err(_) => return Err(StreamingError::Unreachable(Unreachable::new(&NoUrl(self.target)))),
        };
        let timeout = option.hard_ttl().max(Duration::from_secs(60));
        let sent = self.client.install_snapshot(
            &url,
            timeout,
            convert::vote_to(&vote),
            convert::snapshot_meta_to(&snapshot.meta),
            snapshot.snapshot,
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            answer = sent => match answer {
                Ok(reply) => convert::snapshot_reply_from(reply)
                    .map_err(|e| StreamingError::Network(NetworkError::new(&e))),
                Err(error @ PeerError::Garbled { .. }) => Err(StreamingError::Network(NetworkError::new(&error))),
                Err(error) => Err(StreamingError::Unreachable(Unreachable::new(&error))),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let message = convert::transfer_request_to(&request);
        let client = self.client.clone();
        let reply = self
            .send(|url| async move { client.transfer_leader(&url, option.hard_ttl(), message).await })
            .await?;
        convert::transfer_reply_from(reply).map_err(malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::cairnpb::{RaftRequest, raft_request};
    use crate::pb::etcdserverpb::PutRequest;
    use openraft::EntryPayload;

    fn log_id(index: u64) -> crate::LogId {
        crate::LogId {
            leader_id: openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 },
            index,
        }
    }

    fn raft_entry(index: u64, value_bytes: usize) -> crate::Entry {
        crate::Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(RaftRequest {
                request: Some(raft_request::Request::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![0; value_bytes],
                    ..Default::default()
                })),
                caller: None,
            }),
        }
    }

    fn append(
        prev: Option<u64>,
        entries: impl IntoIterator<Item = u64>,
        value_bytes: usize,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: prev.map(log_id),
            entries: entries.into_iter().map(|i| raft_entry(i, value_bytes)).collect(),
            leader_commit: None,
        }
    }

    fn answer(
        sent: &SentAppend,
        said: AppendEntriesResponse<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, String> {
        sent.answered(
            convert::append_reply_to(&said),
            std::time::Instant::now(),
            &|_| {},
        )
        .map_err(|e| e.to_string())
    }

    /// A batch over the message budget goes out cut short and its success is taken as partial,
    /// up to the last entry sent; a batch that fits is answered as the follower said.
    #[test]
    fn what_a_follower_answers_means_what_was_sent() {
        let limit = (64 << 10) + (100 << 10);
        let (message, sent) = SentAppend::cut(append(Some(4), 5..=14, 40 << 10), limit);
        assert_eq!(message.entries.len(), 2);
        assert!(sent.cut_short && sent.carries_entries);
        assert_eq!(
            answer(&sent, AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(6))))
        );
        assert_eq!(
            answer(&sent, AppendEntriesResponse::Conflict),
            Ok(AppendEntriesResponse::Conflict)
        );

        let (message, sent) = SentAppend::cut(append(Some(4), 5..=6, 10), limit);
        assert_eq!(message.entries.len(), 2);
        assert!(!sent.cut_short);
        assert_eq!(
            answer(&sent, AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::Success)
        );
        assert_eq!(
            answer(&sent, AppendEntriesResponse::Success)
                .unwrap()
                .into_stream_result(sent.prev, sent.last_sent),
            Ok(Some(log_id(6)))
        );

        // A heartbeat's success acknowledges the entry before it.
        let (message, sent) = SentAppend::cut(append(Some(9), std::iter::empty(), 10), limit);
        assert!(message.entries.is_empty() && !sent.carries_entries);
        assert_eq!(sent.last_sent, Some(log_id(9)));

        // Nothing conflicts with an empty log: a peer saying so is not believed.
        let (_, sent) = SentAppend::cut(append(None, 1..=1, 10), limit);
        let refused = answer(&sent, AppendEntriesResponse::Conflict).unwrap_err();
        assert!(refused.contains("start of the log"), "{refused}");
    }

    fn entry(index: u64, value_bytes: usize) -> peerpb::Entry {
        convert::append_request_to(append(None, [index], value_bytes))
            .entries
            .remove(0)
    }

    #[test]
    fn batches_are_cut_to_the_message_budget_but_always_carry_one_entry() {
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1000)).collect();
        assert_eq!(entries_within(&entries, usize::MAX), 10);
        assert_eq!(entries_within(&entries, 3500), 3);
        assert_eq!(entries_within(&entries, 10), 1);
        assert_eq!(entries_within(&[], 10), 0);
    }
}
