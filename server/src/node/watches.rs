//! Watch on this member: every member serves watchers from its own applied state (followers too),
//! through the feed the state machine fills and the store's history behind it.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;

use super::{Node, NodeError};
use crate::auth::Access;
use crate::pb::cairnpb::Caller;
use crate::pb::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::watch::{self, Backend, Batch, Ended, Feed};

/// A watch stream's answers, with the member's reasons for ending one as node errors.
pub type WatchResponses = futures::stream::Map<
    ReceiverStream<Result<WatchResponse, Ended>>,
    fn(Result<WatchResponse, Ended>) -> Result<WatchResponse, NodeError>,
>;

fn ended_by_member(item: Result<WatchResponse, Ended>) -> Result<WatchResponse, NodeError> {
    item.map_err(|Ended::NoLeader| NodeError::NoLeader)
}

impl Backend for Node {
    fn feed(&self) -> &Feed {
        &self.feed
    }

    fn history(&self, from: i64, budget: usize) -> Result<Batch, i64> {
        self.raft.read(|m| {
            let mvcc = &m.app.mvcc;
            mvcc.history(from, budget)
                .map(|read| Batch {
                    revisions: read.revisions.into_iter().map(Arc::new).collect(),
                    through: read.through,
                })
                // The history refuses only reads from before the last compaction.
                .map_err(|_| mvcc.compacted_revision())
        })
    }

    fn compacted(&self) -> i64 {
        self.raft.read(|m| m.app.mvcc.compacted_revision())
    }

    fn header(&self, revision: i64) -> ResponseHeader {
        Node::header(self, revision)
    }

    fn has_leader(&self) -> bool {
        self.raft.leader_id().is_some()
    }
}

impl Node {
    /// Opens a watch stream. With `require_leader` (the client's `hasleader`), a member without a
    /// leader refuses it, and ends it when it stays without one.
    /// Serves a watch stream for `caller`, who may watch only keys they may read.
    pub fn watch<R>(
        self: &Arc<Self>,
        caller: &Caller,
        requests: R,
        require_leader: bool,
    ) -> Result<WatchResponses, NodeError>
    where
        R: Stream<Item = WatchRequest> + Send + Unpin + 'static,
    {
        // etcd serves no streams on learners.
        if self.raft.is_learner() {
            return Err(NodeError::NotSupportedForLearner);
        }
        if require_leader && !self.has_leader() {
            return Err(NodeError::NoLeader);
        }
        let settings = watch::Settings {
            fragment_limit: self.config.max_request_bytes + 512 * 1024,
            progress_interval: self.config.watch_progress_interval,
            require_leader,
            election_timeout: self.config.election_timeout,
        };
        let backend: Arc<dyn Backend> = self.clone();
        let (node, caller) = (self.clone(), caller.clone());
        let may_read: watch::ReadCheck = Arc::new(move |key, range_end| {
            node.raft
                .read(|m| m.app.auth.check(&caller, key, range_end, Access::Read))
                .is_ok()
        });
        Ok(watch::open(backend, requests, settings, may_read).map(ended_by_member))
    }
}
