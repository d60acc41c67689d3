//! Cairn: an etcd-v3-compatible, durable Raft key-value server.

pub mod mvcc;
pub mod pb;
