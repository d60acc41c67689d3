//! Cairn: an etcd-v3-compatible, durable Raft key-value server.

pub mod auth;
pub mod backup;
pub mod config;
pub mod duration;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod pb;
pub mod planted;
pub mod recipes;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;
pub mod watch;

use serde::{Deserialize, Serialize};

/// How the Raft layer reaches a member: its advertised peer URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub peer_urls: Vec<String>,
}

openraft::declare_raft_types!(
    /// Cairn's Raft types: log entries carry `RaftRequest`s, member IDs are etcd-style u64s.
    pub TypeConfig:
        D = pb::cairnpb::RaftRequest,
        R = pb::cairnpb::RaftResponse,
        NodeId = u64,
        Node = PeerNode,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;

pub mod bootstrap {
    //! How a member finds its cluster: identity derivation, the initial member list (static or DNS
    //! SRV), and the data-directory metadata that pins a member to one cluster for life.
    pub mod data_dir;
    pub mod identity;
    pub mod srv;
}
