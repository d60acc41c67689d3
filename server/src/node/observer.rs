//! What follows the state machine as it applies: the watch feed (every revision) and the auth
//! token table (every entry that issues or voids tokens), and the apply time of each entry.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Tokens;
use crate::metrics::StageObserver;
use crate::mvcc::Mvcc;
use crate::pb::cairnpb::{RaftRequest, RaftResponse};
use crate::store::RevisionObserver;
use crate::watch::Feed;

pub(super) struct Applied {
    pub feed: Arc<Feed>,
    pub tokens: Arc<Tokens>,
    pub apply_time: StageObserver,
}

impl RevisionObserver for Applied {
    fn advanced(&self, mvcc: &Mvcc, before: i64) {
        self.feed.advanced(mvcc, before);
    }

    fn replaced(&self, mvcc: &Mvcc) {
        self.feed.replaced(mvcc);
        // Tokens were issued against the state that is gone; clients authenticate again.
        self.tokens.clear();
    }

    fn entry_applied(&self, request: &RaftRequest, response: &RaftResponse) {
        self.tokens.follow(request, response);
    }

    fn applied_in(&self, took: Duration) {
        (self.apply_time)(took);
    }
}
