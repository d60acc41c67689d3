//! The peer plane's client side and contract: the typed messages' conversions, protocol versions
//! and admission, the per-peer gRPC client, and the openraft network. Knows nothing of the node.

pub mod client;
pub mod convert;
pub mod protocol;
pub mod raft;

pub use client::{PeerClient, PeerError};
pub use convert::Malformed;
pub use protocol::ClusterInfo;
