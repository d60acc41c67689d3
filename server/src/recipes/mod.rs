//! etcd's concurrency recipes served by the member itself (etcd's v3lock and v3election services):
//! locks and elections built from keys under a prefix, each owned through a lease, the oldest key
//! winning. The same keys and steps as etcd's client-side recipes, so a lock taken through the Lock
//! service and one taken by `etcdctl lock` exclude each other.

mod election;
mod lock;
mod wait;

pub use election::{campaign, leader, observe, proclaim, resign};
pub use lock::{lock, unlock};

use crate::node::NodeError;

/// Why a recipe failed; the texts are etcd's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("election: not leader")]
    NotLeader,
    #[error("election: no leader")]
    NoLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("lost watcher waiting for delete")]
    LostWatcher,
}

/// The TTL of the lease a lock or campaign gets when the caller names none (etcd's session
/// default); it is not kept alive, so the lock lapses after it.
const SESSION_TTL: i64 = 60;

/// `prefix/lease-in-hex`: the key a lease holds in a lock or election.
fn owner_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// The recipes' key prefix for a lock or election name.
fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}
