//! etcd's Watch: streams of watchers, each seeing every change to its keys in revision order, from
//! any revision since the last compaction. The newest revisions are shared by all watchers through
//! the `feed`; a watcher that falls behind it catches up from the store's history instead of having
//! events buffered for it, so a client that stops reading costs the member nothing but its place.

mod feed;
mod stream;
mod watcher;

use std::sync::Arc;

pub use feed::Feed;
pub use stream::{Ended, ReadCheck, Settings, open};

use crate::mvcc::RevisionEvents;
use crate::pb::etcdserverpb::ResponseHeader;

/// A stretch of revisions, oldest first: all changes of each revision present, through `through`.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub revisions: Vec<Arc<RevisionEvents>>,
    pub through: i64,
}

/// What watch streams need from the member they run on.
pub trait Backend: Send + Sync + 'static {
    fn feed(&self) -> &Feed;
    /// Changes from `from` on, read from the store's history, about `budget` bytes at most; the
    /// error is the compaction revision when `from` is older than it.
    fn history(&self, from: i64, budget: usize) -> Result<Batch, i64>;
    /// The revision of the last compaction (-1 before the first).
    fn compacted(&self) -> i64;
    fn header(&self, revision: i64) -> ResponseHeader;
    fn has_leader(&self) -> bool;
}
