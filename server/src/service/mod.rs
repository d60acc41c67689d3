//! gRPC services: thin adapters from the etcd v3 API (client plane) and the peer plane to the node.

pub mod auth;
pub mod caller;
pub mod cluster;
pub mod election;
pub mod error;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod watch;
