//! The openraft network: Raft RPCs to one peer over the peer client, as typed peer messages.
//! Transport failures are reported as `Unreachable` so openraft backs off and retries; a batch of
//! entries larger than a peer message may be is cut short and reported as a partial success.

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

use super::client::{PeerClient, PeerError};
use super::convert::{self, Malformed};
use crate::pb::peerpb;
use crate::{PeerNode, Snapshot, TypeConfig, Vote};

pub struct NetworkFactory {
    pub client: PeerClient,
    pub addresses: PeerAddresses,
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
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Connection {
        Connection {
            client: self.client.clone(),
            target,
            url: node.peer_urls.first().cloned(),
            addresses: self.addresses.clone(),
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

impl Connection {
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
        // Leave room for the vote, log IDs and framing around the entries.
        let budget = self.client.message_limit() - (64 << 10);
        let log_ids: Vec<crate::LogId> = rpc.entries.iter().map(|e| e.log_id).collect();
        let mut message = convert::append_request_to(rpc);
        let taken = entries_within(&message.entries, budget);
        let cut_short = taken < message.entries.len();
        message.entries.truncate(taken);
        let last_sent = taken.checked_sub(1).map(|last| log_ids[last]);
        let client = self.client.clone();
        let reply = self
            .send(|url| async move { client.append_entries(&url, option.hard_ttl(), message).await })
            .await?;
        match convert::append_reply_from(reply).map_err(malformed)? {
            AppendEntriesResponse::Success if cut_short => {
                Ok(AppendEntriesResponse::PartialSuccess(last_sent))
            }
            response => Ok(response),
        }
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

    fn entry(index: u64, value_bytes: usize) -> peerpb::Entry {
        let entry = crate::Entry {
            log_id: crate::LogId {
                leader_id: openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 },
                index,
            },
            payload: EntryPayload::Normal(RaftRequest {
                request: Some(raft_request::Request::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![0; value_bytes],
                    ..Default::default()
                })),
                caller: None,
            }),
        };
        convert::append_request_to(AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            entries: vec![entry],
            leader_commit: None,
        })
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
