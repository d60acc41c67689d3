//! What members say to each other on the peer plane: Raft RPCs, and requests a member forwards to
//! the leader on behalf of its clients (writes, read index, lease renewals).

use serde::{Deserialize, Serialize};

use crate::pb::cairnpb::RaftRequest;
use crate::{SnapshotMeta, TypeConfig, Vote};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::raft::{TransferLeaderRequest, TransferLeaderResponse};

#[derive(Serialize, Deserialize)]
pub enum PeerCall {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A client write, forwarded to the leader.
    Propose(RaftRequest),
    /// The leader's confirmed commit index for a linearizable read on a follower.
    ReadIndex,
    /// Renew a lease on the leader; answers the renewed TTL (0 if the lease is gone).
    LeaseKeepAlive(i64),
    /// Remaining TTL of a lease, as the leader's clock sees it (-1 if unknown).
    LeaseTimeToLive(i64),
    /// Who is in the cluster: asked by a member joining with `--initial-cluster-state existing`.
    ClusterInfo,
    /// A membership change, run by the leader.
    MemberChange(MemberChange),
}

/// Membership changes a follower hands to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberChange {
    Add {
        id: u64,
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: u64,
    },
    Promote {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
}

#[derive(Serialize, Deserialize)]
pub enum PeerAnswer {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Proposed(crate::pb::cairnpb::RaftResponse),
    ReadIndex(u64),
    LeaseTtl(i64),
    ClusterInfo(ClusterInfo),
    MemberChanged,
    /// The callee could not serve the call; the text says why.
    Failed(ForwardError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    /// Every member with its peer URLs.
    pub members: Vec<(u64, Vec<String>)>,
    pub removed: Vec<u64>,
    /// Members that have started (published their name): each has a data dir of its own.
    #[serde(default)]
    pub started: Vec<u64>,
}

/// Why a forwarded request failed on the callee, kept coarse so the caller can map it to etcd's errors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ForwardError {
    /// The callee is not (or no longer) the leader.
    NotLeader,
    /// The callee refused the request with this error.
    Node(crate::node::NodeError),
}
