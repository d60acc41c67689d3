//! The openraft network: Raft RPCs to one peer over the peer client, transport failures reported as
//! `Unreachable` so openraft backs off and retries.

use std::future::Future;
use std::time::Duration;

use openraft::RaftNetworkV2;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::raft::{TransferLeaderRequest, TransferLeaderResponse};

use super::client::{PeerClient, PeerError};
use super::messages::{PeerAnswer, PeerCall};
use crate::{PeerNode, Snapshot, TypeConfig, Vote};

pub struct NetworkFactory {
    pub client: PeerClient,
}

pub struct Connection {
    client: PeerClient,
    target: u64,
    url: Option<String>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Connection {
        Connection {
            client: self.client.clone(),
            target,
            url: node.peer_urls.first().cloned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unexpected(String);

fn unreachable(error: impl std::error::Error + 'static) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&error))
}

impl Connection {
    async fn call(&self, call: PeerCall, timeout: Duration) -> Result<PeerAnswer, RPCError<TypeConfig>> {
        let Some(url) = &self.url else {
            return Err(unreachable(Unexpected(format!(
                "member {:x} has no peer URL",
                self.target
            ))));
        };
        match self.client.call(url, &call, timeout).await {
            Ok(PeerAnswer::Failed(reason)) => Err(unreachable(Unexpected(format!("{reason:?}")))),
            Ok(answer) => Ok(answer),
            Err(error @ PeerError::Garbled { .. }) => Err(RPCError::Network(NetworkError::new(&error))),
            Err(error @ PeerError::Refused { .. }) => {
                // Another cluster (or a member that removed us): say so loudly, it never heals alone.
                tracing::warn!(%error, "request sent was ignored by remote peer");
                Err(unreachable(error))
            }
            Err(error) => Err(unreachable(error)),
        }
    }
}

fn wrong_answer() -> RPCError<TypeConfig> {
    unreachable(Unexpected("peer answered a different call".into()))
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerCall::AppendEntries(rpc), option.hard_ttl()).await? {
            PeerAnswer::AppendEntries(response) => Ok(response),
            _ => Err(wrong_answer()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerCall::Vote(rpc), option.hard_ttl()).await? {
            PeerAnswer::Vote(response) => Ok(response),
            _ => Err(wrong_answer()),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerCall::PreVote(rpc), option.hard_ttl()).await? {
            PeerAnswer::Vote(response) => Ok(response),
            _ => Err(wrong_answer()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let call = PeerCall::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let sent = self.call(call, option.hard_ttl().max(Duration::from_secs(60)));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            answer = sent => match answer {
                Ok(PeerAnswer::Snapshot(response)) => Ok(response),
                Ok(_) => Err(StreamingError::Unreachable(Unreachable::new(&Unexpected("peer answered a different call".into())))),
                Err(RPCError::Network(e)) => Err(StreamingError::Network(e)),
                Err(e) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(PeerCall::TransferLeader(req), option.hard_ttl())
            .await?
        {
            PeerAnswer::TransferLeader(response) => Ok(response),
            _ => Err(wrong_answer()),
        }
    }
}
