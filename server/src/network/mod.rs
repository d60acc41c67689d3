//! The peer plane's client side: messages, the per-peer gRPC client, and the openraft network.

pub mod client;
pub mod messages;
pub mod raft;

pub use client::{PeerClient, PeerError};
pub use messages::{ClusterInfo, ForwardError, MemberChange, PeerAnswer, PeerCall};
